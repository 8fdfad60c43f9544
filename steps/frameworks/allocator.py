"""glibc ``malloc`` settings for a training process.

A CPU training step allocates and frees the same activation and gradient buffers (hundreds of KB to a
few MB) every batch. glibc starts with a 128 KiB mmap threshold and trims the heap top as soon as 128 KiB
are free, so until its dynamic thresholds have grown, each such buffer is fresh pages from the kernel:
the first epoch of a new process takes ~140,000 extra page faults (≈ 0.3 s of a 2 s flagship
client-epoch) that later epochs do not. Every argofl train step is a new process's first epoch, so it
paid that every time. :func:`tune_for_training` fixes the thresholds at their warm values up front, as
the ``MALLOC_MMAP_THRESHOLD_`` / ``MALLOC_TRIM_THRESHOLD_`` environment variables would (PyTorch's CPU
performance guides recommend the same); freed memory below the trim threshold stays in the process for
the next batch instead of going back to the kernel. Numerics are unchanged.
"""

from __future__ import annotations

import ctypes
import os

from argofl.steps.switches import is_off

__all__ = ["DISABLE_VARIABLE", "MMAP_THRESHOLD", "TRIM_THRESHOLD", "tune_for_training"]

DISABLE_VARIABLE = "ARGOFL_MALLOC_TUNING"
"""Set to ``0`` (or ``false``/``off``/``no``) to keep glibc's defaults."""

MMAP_THRESHOLD = 32 << 20
"""Allocations below this come from the heap (32 MiB: glibc's largest dynamic threshold on 64-bit)."""

TRIM_THRESHOLD = 128 << 20
"""Free memory at the top of the heap kept for reuse before it is given back to the kernel."""

_M_TRIM_THRESHOLD = -1  # <malloc.h>
_M_MMAP_THRESHOLD = -3
_USER_VARIABLES = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "MALLOC_TOP_PAD_")


def tune_for_training() -> bool:
    """Set glibc's mmap and trim thresholds for training; whether they were set.

    Nothing is changed off glibc, when the user set glibc's own ``MALLOC_*_`` variables (theirs win), or
    when :data:`DISABLE_VARIABLE` says so.
    """
    if is_off(DISABLE_VARIABLE):
        return False
    if any(name in os.environ for name in _USER_VARIABLES):
        return False
    if not _glibc():
        return False
    libc = ctypes.CDLL(None, use_errno=True)  # the loaded C library: find_library would run ldconfig
    ok = libc.mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD) == 1
    return libc.mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD) == 1 and ok


def _glibc() -> bool:
    try:
        return os.confstr("CS_GNU_LIBC_VERSION") is not None
    except (ValueError, OSError, AttributeError):  # not a glibc system
        return False
