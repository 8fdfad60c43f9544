"""Split a dataset's samples over federated clients (plain numpy, seeded).

``partition(labels, num_clients, scheme)`` returns, per client, a sorted int64 array of sample indices;
every sample is assigned to exactly one client and the same seed gives the same partition.

* ``iid`` — a random permutation cut into near-equal parts;
* ``dirichlet`` — for each class, the class's samples are shared out over the clients with proportions
  drawn from Dirichlet(alpha, …, alpha) (the label-skew scheme of Yurochkin et al. 2019 and Li et al.
  2022, "Federated Learning on Non-IID Data Silos"; not Hsu et al. 2019's per-client class mix
  ``q ~ Dir(α·p)`` of equal-size clients: here the clients' sizes differ too); small alpha gives skewed
  (non-IID) clients. Draws are repeated (a bounded number of times) until every client has at least
  ``min_size`` samples.
"""

from __future__ import annotations

import hashlib

import numpy as np

from argofl.steps.errors import BadInputError

__all__ = ["SCHEMES", "PartitionError", "client_seed", "partition"]

SCHEMES = ("iid", "dirichlet")
MAX_ATTEMPTS = 100


class PartitionError(BadInputError, ValueError):
    """Invalid partitioning arguments, or no valid partition could be drawn."""


def partition(
    labels: np.ndarray,
    num_clients: int,
    scheme: str = "iid",
    *,
    alpha: float = 0.5,
    seed: int = 0,
    min_size: int = 1,
) -> list[np.ndarray]:
    """Assign each index of ``labels`` to one of ``num_clients`` clients; one sorted int64 array each."""
    labels = np.asarray(labels)
    if labels.ndim != 1:
        raise PartitionError(f"labels must be one-dimensional, got shape {labels.shape}")
    n = int(labels.shape[0])
    if isinstance(num_clients, bool) or not isinstance(num_clients, int | np.integer):
        raise PartitionError(f"num_clients must be an integer, got {num_clients!r}")
    if not 1 <= num_clients <= n:
        raise PartitionError(f"num_clients={num_clients} must be between 1 and the {n} samples")
    if min_size < 0 or min_size * num_clients > n:
        raise PartitionError(
            f"min_size={min_size} is impossible: {num_clients} clients x {min_size} > {n} samples"
        )
    rng = np.random.default_rng(seed)
    if scheme == "iid":
        parts = np.array_split(rng.permutation(n), num_clients)
    elif scheme == "dirichlet":
        if not alpha > 0 or not np.isfinite(alpha):
            raise PartitionError(f"alpha={alpha} must be a finite number > 0 for the dirichlet scheme")
        parts = _dirichlet(labels, num_clients, alpha, min_size, rng)
    else:
        raise PartitionError(f"unknown partition scheme {scheme!r}: expected one of {', '.join(SCHEMES)}")
    return [np.sort(p).astype(np.int64) for p in parts]


def _dirichlet(
    labels: np.ndarray, num_clients: int, alpha: float, min_size: int, rng: np.random.Generator
) -> list[np.ndarray]:
    classes = np.unique(labels)
    by_class = [np.flatnonzero(labels == c) for c in classes]
    sizes = np.zeros(num_clients, dtype=np.int64)
    for _ in range(MAX_ATTEMPTS):
        chunks: list[list[np.ndarray]] = [[] for _ in range(num_clients)]
        for idx in by_class:
            shuffled = rng.permutation(idx)
            proportions = rng.dirichlet(np.full(num_clients, alpha))
            cuts = (np.cumsum(proportions)[:-1] * len(shuffled)).astype(np.int64)
            for client, part in enumerate(np.split(shuffled, cuts)):
                chunks[client].append(part)
        parts = [np.concatenate(c) for c in chunks]
        sizes = np.array([len(p) for p in parts])
        if sizes.min() >= min_size:
            return parts
    raise PartitionError(
        f"dirichlet(alpha={alpha}) left a client with fewer than min_size={min_size} samples "
        f"(smallest {sizes.min()}) in {MAX_ATTEMPTS} draws: raise alpha, lower min_size or use fewer clients"
    )


def client_seed(seed: int, round: int, client: str) -> int:
    """A stable 32-bit seed for one client in one round (sha256-based: the same in every process)."""
    digest = hashlib.sha256(f"{seed}/{round}/{client}".encode()).digest()
    return int.from_bytes(digest[:4], "big")
