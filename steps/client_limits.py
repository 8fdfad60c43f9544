"""How many training examples each client can have: what an update may claim at most.

With partitioned data (every built-in dataset) the limit is exact: the size of the client's
partition, recomputed here from the frozen settings exactly as ``train`` draws it. Clients that own
their data (``data.source`` per-client or loader) hold what the aggregator must never read: only the
``max_client_examples`` setting caps them (no cap when it is 0). It caps partitioned clients too.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from functools import cache

from argofl.steps.client_data import DataOptions
from argofl.steps.data import clear_cache, load_dataset
from argofl.steps.partition import partition
from argofl.steps.settings import Settings

__all__ = ["example_limit"]


def example_limit(s: Settings, data: DataOptions) -> Callable[[str], tuple[int, str]]:
    """A function ``client → (most examples it can claim, why)``; loads the labels on first use."""
    if data.source != "partition":
        cap = s.max_client_examples or sys.maxsize
        return lambda client: (cap, f"max_client_examples={s.max_client_examples}")

    @cache
    def sizes() -> list[int]:
        data = load_dataset(s.dataset, "train", s.data_dir or None, limit=s.data_limit or None)
        parts = partition(data.y, s.clients, s.partition, alpha=s.alpha, seed=s.seed)
        del data
        clear_cache()  # only the sizes are needed: the images are not kept beside the model
        return [len(p) for p in parts]

    def limit(client: str) -> tuple[int, str]:
        size = sizes()[int(client)]
        if s.max_client_examples and s.max_client_examples < size:
            return s.max_client_examples, f"max_client_examples={s.max_client_examples}"
        return size, f"the size of its {s.partition} partition"

    return limit
