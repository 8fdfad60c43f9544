"""The wire format between split clients and the server: safetensors bytes of named arrays.

Requests and responses carrying tensors are ``application/octet-stream`` bodies encoded with
:func:`steps.checkpoint.encode_arrays` and decoded with the same strict header checks as checkpoints
(:func:`steps.checkpoint.decode_arrays`): plain numeric dtypes only, nothing is ever unpickled.
Errors are JSON objects ``{"error": "..."}``.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping

import numpy as np

from argofl.steps.checkpoint import CheckpointError, decode_arrays, encode_arrays
from argofl.steps.errors import ArgoflError

__all__ = ["CONTENT_TYPE", "WireError", "decode", "encode", "expect", "token_fingerprint"]

CONTENT_TYPE = "application/octet-stream"


class WireError(ArgoflError, ValueError):
    """A message does not have the expected tensors, dtypes or shapes."""


def encode(arrays: Mapping[str, np.ndarray]) -> bytes:
    """Named arrays → safetensors bytes."""
    return encode_arrays(arrays)


def decode(data: bytes, *, where: str) -> dict[str, np.ndarray]:
    """Safetensors bytes → named arrays; :class:`WireError` when malformed."""
    try:
        return decode_arrays(data, where=where)
    except CheckpointError as exc:
        raise WireError(str(exc)) from None


def expect(
    arrays: Mapping[str, np.ndarray],
    spec: Mapping[str, tuple[str, tuple[int | None, ...]]],
    *,
    where: str,
) -> None:
    """Check names, dtypes and shapes (``None`` = any size) of ``arrays`` against ``spec``."""
    if set(arrays) != set(spec):
        raise WireError(f"{where}: expected tensors {sorted(spec)}, got {sorted(arrays)}")
    for name, (dtype, shape) in spec.items():
        arr = arrays[name]
        if arr.dtype.name != dtype:
            raise WireError(f"{where}: tensor {name} must be {dtype}, got {arr.dtype.name}")
        if len(arr.shape) != len(shape) or any(
            want is not None and got != want for got, want in zip(arr.shape, shape, strict=True)
        ):
            shown = "(" + ", ".join("N" if d is None else str(d) for d in shape) + ")"
            raise WireError(f"{where}: tensor {name} must have shape {shown}, got {tuple(arr.shape)}")


def token_fingerprint(token: str) -> str:
    """A short digest of the run token that the server shows on ``/healthz``: identifies, reveals nothing."""
    return hashlib.sha256(b"argofl-split-token:" + token.encode()).hexdigest()[:16]
