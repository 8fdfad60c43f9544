"""argofl: federated and split learning where every round is an Argo Workflows DAG.

The public Python API is :mod:`argofl.api` (also reachable from here)::

    import argofl

    workflow = argofl.build("configs/fedavg-fmnist-torch.yaml")   # a hera Workflow
    argofl.run_local(workflow, {"rounds": "2"})                     # on this machine
    argofl.submit(workflow, host="https://argo.example:2746")       # on a cluster

``argofl.pipelines`` (builders, compiler, local executor, CLI) and ``argofl.steps`` (what runs in a
workflow container) are the implementation; names outside :mod:`argofl.api` may change.
Importing ``argofl`` is cheap: hera, torch, TensorFlow and mlflow load only when used.
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

__all__ = ["api"]


def __getattr__(name: str) -> Any:
    """``argofl.api`` and its names, imported on first use."""
    api = import_module("argofl.api")
    if name == "api":
        return api
    if name in api.__all__:
        return getattr(api, name)
    raise AttributeError(f"module 'argofl' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*__all__, *import_module("argofl.api").__all__])
