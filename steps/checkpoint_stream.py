"""Checkpoints read as streams: verified in one pass over the blob holding one chunk at a time, then
read back tensor by tensor in chunks (:class:`StreamedArrays`), so a reader's memory does not grow
with the model.

:func:`open_streamed` checks exactly what :func:`~steps.checkpoint.load_checkpoint` checks, in the
same order and with the same messages (manifest, ``like``, sizes before reading, sha256, header,
specs against the manifest, finite floats). The blob is read from the store's own file when it has
one (a ``file://`` store: objects are replaced atomically, never rewritten, so the open file keeps
the verified bytes), otherwise downloaded into a scratch directory first.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from argofl.steps.checkpoint import (
    FLOAT_DTYPES,
    MAX_HEADER_BYTES,
    CheckpointCorrupt,
    CheckpointManifest,
    CheckpointNotFound,
    TensorSpec,
    checked_manifest,
    checkpoint_subject,
    parse_header,
    spec_difference,
)
from argofl.steps.store import ObjectNotFound, Store

__all__ = ["READ_BYTES", "StreamedArrays", "open_streamed"]

READ_BYTES = 4 << 20  # bytes per read while verifying

Entries = dict[str, tuple[TensorSpec, int, int]]


class StreamedArrays(Mapping[str, np.ndarray]):
    """The tensors of a verified blob, read from its open file on demand.

    ``[name]`` reads one whole tensor; :meth:`chunks` reads it piece by piece into one reused buffer
    (a :class:`~steps.strategies.ChunkedArrays`). With ``keep``, tensors read whole are kept for the
    next access. :meth:`close` releases the file (and deletes it when it was a scratch download)."""

    def __init__(
        self, fd: int, data_start: int, entries: Entries, *, scratch: Path | None = None, keep: bool = False
    ) -> None:
        self._fd = fd
        self._kept: dict[str, np.ndarray] | None = {} if keep else None
        self._data_start = data_start
        self._entries = entries
        self._scratch = scratch
        self._buffer = np.empty(0, dtype=np.uint8)

    def layout(self) -> dict[str, tuple[np.dtype[Any], tuple[int, ...]]]:
        """Each tensor's dtype and shape."""
        return {name: (np.dtype(spec.dtype), spec.shape) for name, (spec, _, _) in self._entries.items()}

    def chunks(self, name: str, elements: int) -> Iterator[tuple[int, np.ndarray]]:
        """``(start, values)``: the tensor's flattened values, ``elements`` at most per chunk; each chunk
        lives in a buffer the next one overwrites."""
        spec, begin, end = self._entries[name]
        dtype = np.dtype(spec.dtype).newbyteorder("<")
        step = max(1, elements) * dtype.itemsize
        if self._buffer.size < min(step, end - begin):
            self._buffer = np.empty(min(step, end - begin), dtype=np.uint8)
        for offset in range(begin, end, step):
            n = min(step, end - offset)
            _read_into(self._fd, self._buffer[:n], self._data_start + offset)
            yield (offset - begin) // dtype.itemsize, self._buffer[:n].view(dtype)

    def __getitem__(self, name: str) -> np.ndarray:
        if self._kept is not None and name in self._kept:
            return self._kept[name]
        spec, begin, end = self._entries[name]
        raw = np.empty(end - begin, dtype=np.uint8)
        _read_into(self._fd, raw, self._data_start + begin)
        dtype = np.dtype(spec.dtype).newbyteorder("<")
        array = raw.view(dtype).astype(spec.dtype, copy=False).reshape(spec.shape)
        if self._kept is not None:
            self._kept[name] = array
        return array

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)

    def __len__(self) -> int:
        return len(self._entries)

    def close(self) -> None:
        """Close the file; delete it if it was downloaded into scratch."""
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
        if self._scratch is not None:
            self._scratch.unlink(missing_ok=True)
            self._scratch = None


def open_streamed(
    store: Store,
    key: str,
    *,
    like: Mapping[str, TensorSpec] | None = None,
    blob_size: int | None = None,
    scratch: Path,
    require_finite: bool = True,
    keep: bool = False,
) -> tuple[CheckpointManifest, StreamedArrays]:
    """Verify the checkpoint at ``key`` in one streaming pass; its arrays, read on demand (and kept once
    read, with ``keep``). A blob the store has no local file for is downloaded into ``scratch``."""
    blob_key, uri, manifest = checked_manifest(store, key, like, blob_size)
    path = store.local_path(blob_key)
    downloaded = None
    if path is None:
        downloaded = scratch / (hashlib.sha256(key.encode()).hexdigest()[:16] + ".safetensors")
        try:
            path = store.get_file(blob_key, downloaded)
        except ObjectNotFound:
            raise CheckpointNotFound(
                f"checkpoint blob {uri} is missing although its manifest exists"
            ) from None
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        raise CheckpointNotFound(f"checkpoint blob {uri} is missing although its manifest exists") from None
    try:
        data_start, entries = _verify(fd, manifest, uri, require_finite)
    except BaseException:
        os.close(fd)
        if downloaded is not None:
            downloaded.unlink(missing_ok=True)
        raise
    return manifest, StreamedArrays(fd, data_start, entries, scratch=downloaded, keep=keep)


def _verify(fd: int, manifest: CheckpointManifest, uri: str, require_finite: bool) -> tuple[int, Entries]:
    """Hash the whole blob and check its header, specs and finiteness; (data start, entries)."""
    size = os.fstat(fd).st_size
    if size != manifest.size:
        raise CheckpointCorrupt(
            f"size mismatch for {uri}: manifest says {manifest.size} bytes, blob has {size}"
        )
    digest = hashlib.sha256()
    head = os.pread(fd, 8, 0)
    header_length = int.from_bytes(head, "little") if len(head) == 8 else 0
    head += os.pread(fd, min(header_length, MAX_HEADER_BYTES, max(size - 8, 0)), len(head))
    digest.update(head)
    entries: Entries | None = None
    header_problem: CheckpointCorrupt | None = None
    try:
        entries = parse_header(head, uri, size=size)
    except CheckpointCorrupt as exc:
        header_problem = exc
    buffer = np.empty(READ_BYTES, dtype=np.uint8)
    position = len(head)
    non_finite: dict[str, int] = {}
    if entries is not None:
        data_start = 8 + header_length
        for name, (spec, begin, end) in sorted(entries.items(), key=lambda item: item[1][1]):
            check = require_finite and spec.dtype in FLOAT_DTYPES
            dtype = np.dtype(spec.dtype).newbyteorder("<")
            for offset in range(data_start + begin, data_start + end, READ_BYTES):
                chunk = buffer[: min(READ_BYTES, data_start + end - offset)]
                _read_into(fd, chunk, offset)
                digest.update(chunk.data)
                if check:
                    values = chunk.view(dtype)
                    if not np.isfinite(values).all():
                        bad = values.size - int(np.count_nonzero(np.isfinite(values)))
                        non_finite[name] = non_finite.get(name, 0) + bad
        position = data_start + max((end for _, _, end in entries.values()), default=0)
    while position < size:  # a header we could not use: hash the rest all the same
        chunk = buffer[: min(READ_BYTES, size - position)]
        _read_into(fd, chunk, position)
        digest.update(chunk.data)
        position += chunk.size
    if digest.hexdigest() != manifest.sha256:
        raise CheckpointCorrupt(
            f"sha256 mismatch for {uri}: manifest says {manifest.sha256[:16]}…, "
            f"blob is {digest.hexdigest()[:16]}…"
        )
    if header_problem is not None or entries is None:
        raise header_problem or CheckpointCorrupt(f"{uri} has no readable safetensors header")
    problem = spec_difference(
        {name: spec for name, (spec, _, _) in entries.items()},
        manifest.tensors,
        f"blob {uri}",
        reference="its manifest",
        expected_word="manifest says",
    )
    if problem:
        raise CheckpointCorrupt(problem)
    for name in sorted(non_finite):
        raise CheckpointCorrupt(
            f"{checkpoint_subject(manifest, uri)} has {non_finite[name]} non-finite (NaN/Inf) values "
            f"in {name}, expected finite values"
        )
    return 8 + header_length, entries


def _read_into(fd: int, out: np.ndarray, offset: int) -> None:
    """Fill ``out`` (uint8) with the file's bytes from ``offset``; a short file is corrupt."""
    view = out.data.cast("B")
    done = 0
    while done < len(view):
        got = os.preadv(fd, [view[done:]], offset + done)
        if got == 0:
            raise CheckpointCorrupt(f"blob ended after {offset + done} bytes, expected more")
        done += got
