"""argofl steps: what runs inside a workflow container (FL math, checkpoints, stores, training)."""
