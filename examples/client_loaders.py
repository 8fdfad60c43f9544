"""Bring your own data: loaders for ``data: {source: loader, loader: examples.client_loaders:<fn>}``.

A loader is any callable ``loader(client, split)`` where ``client`` is the client's index as a string
(``"0"``, ``"1"``, …) and ``split`` is ``"train"`` or ``"test"``. It returns ``(x, y)``: ``x`` uint8 images
(N, H, W, C) of the model's input shape (28x28x1 for fashion-mnist and mnist, 32x32x3 for cifar10), ``y``
int64 labels (N,) in ``[0, classes)``; or ``None`` when the client has no such split (every client needs
a train split; a test split is optional and feeds federated evaluation). argofl checks what it returns
and fails only that client, with one line naming it, if the loader raises or returns something else.

The loader runs inside the client's train pod, so it reads what that pod can reach: its node's disk,
its volume, its own bucket. The module must be importable there: on a cluster, in the step image
(``examples/Dockerfile`` adds this directory); locally, ``argofl run`` and ``run_local`` find it in the
directory they start in (``examples`` here is a namespace package under the repository root), or on
``PYTHONPATH``.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

SITE_DIR_ENV = "ARGOFL_SITE_DIR"


def synthetic_sites(client: str, split: str) -> tuple[np.ndarray, np.ndarray]:
    """Seeded random 28x28 images for every client: 40 + 20·client train and 30 test examples.

    Each site sees mostly its own three classes (a non-IID federation). For tests and demos.
    """
    index = int(client)
    rng = np.random.default_rng([index, 0 if split == "train" else 1])
    n = 40 + 20 * index if split == "train" else 30
    y = ((index * 3 + rng.integers(0, 3, size=n)) % 10).astype(np.int64)
    x = rng.integers(0, 64, size=(n, 28, 28, 1), dtype=np.uint8)
    x[np.arange(n), y * 2, :, 0] = 255  # a bright row whose position tells the class
    return x, y


def npz_sites(client: str, split: str) -> tuple[np.ndarray, np.ndarray] | None:
    """``$ARGOFL_SITE_DIR/<client>/<split>.npz`` with arrays ``x`` and ``y`` (read without pickle).

    On a cluster, mount each client's volume at the same path (``placement`` in the config).
    """
    path = Path(os.environ.get(SITE_DIR_ENV, "/data")) / client / f"{split}.npz"
    if not path.is_file():
        return None
    with np.load(path, allow_pickle=False) as archive:
        return np.asarray(archive["x"]), np.asarray(archive["y"]).astype(np.int64)
