"""Framework-neutral checkpoints: named numpy arrays as safetensors plus a JSON manifest.

A checkpoint at key ``K`` is two objects in a :class:`~steps.store.Store`:

* ``K.safetensors`` — the arrays, encoded deterministically (sorted names, C-contiguous,
  little-endian, no metadata), so equal arrays always give equal bytes and sha256;
* ``K.json`` — a :class:`CheckpointManifest` (format, round, client, examples, metrics, sha256,
  size, tensor specs), written **after** the blob: the manifest is the commit marker, and a
  checkpoint exists iff its manifest does.

Readers trust nothing they receive: the manifest is parsed strictly, the blob's size and sha256
must match it, the safetensors header is parsed and bounded here before ``safetensors`` sees the
bytes, only plain numeric dtypes are accepted, tensor specs must match the manifest (and an
expected ``like`` spec), and float tensors must be finite. Nothing is ever unpickled. Every
failure is a one-line :class:`CheckpointError` naming the object URI, what was expected and
what was found.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from argofl.steps.errors import BadInputError
from argofl.steps.store import ObjectNotFound, Store

__all__ = [
    "FORMAT",
    "SUPPORTED_DTYPES",
    "Checkpoint",
    "CheckpointCorrupt",
    "CheckpointError",
    "CheckpointExists",
    "CheckpointManifest",
    "CheckpointMismatch",
    "CheckpointNotFound",
    "LazyArrays",
    "TensorSpec",
    "checkpoint_exists",
    "checkpoint_keys",
    "decode_arrays",
    "encode_arrays",
    "encode_to_file",
    "load_checkpoint",
    "load_manifest",
    "open_checkpoint",
    "save_checkpoint",
    "specs_of",
]

FORMAT = "argofl.checkpoint/v1"
BLOB_SUFFIX = ".safetensors"
MANIFEST_SUFFIX = ".json"

# safetensors dtype code -> numpy dtype name; everything else (pickled objects, complex,
# unsigned wider than a byte, bfloat16, fp8) is refused on both encode and decode.
_ST_TO_NUMPY = {
    "F16": "float16",
    "F32": "float32",
    "F64": "float64",
    "I8": "int8",
    "I16": "int16",
    "I32": "int32",
    "I64": "int64",
    "U8": "uint8",
    "BOOL": "bool",
}
SUPPORTED_DTYPES: frozenset[str] = frozenset(_ST_TO_NUMPY.values())
FLOAT_DTYPES = frozenset({"float16", "float32", "float64"})
MAX_HEADER_BYTES = 100_000_000  # the limit safetensors itself enforces
_MAX_LISTED = 5  # names shown in a mismatch message before "+N more"
MAX_MANIFEST_BYTES = 4 * 1024 * 1024  # a manifest holds specs and metrics: far less than this


class CheckpointError(BadInputError, ValueError):
    """A checkpoint could not be written or read."""


class CheckpointNotFound(CheckpointError):
    """The manifest or the blob of a checkpoint is absent."""


class CheckpointCorrupt(CheckpointError):
    """A checkpoint exists but fails validation (manifest, size, sha256, header, specs, finiteness)."""


class CheckpointMismatch(CheckpointError):
    """A valid checkpoint whose tensors differ from the expected ones (``like``)."""


class CheckpointExists(CheckpointError):
    """Refusing to overwrite a committed checkpoint."""


@dataclass(frozen=True)
class TensorSpec:
    """The dtype name (e.g. ``"float32"``) and shape of one tensor."""

    dtype: str
    shape: tuple[int, ...]

    def __post_init__(self) -> None:
        object.__setattr__(self, "shape", tuple(int(d) for d in self.shape))

    def describe(self) -> str:
        """``float32 (3, 4)``."""
        return f"{self.dtype} {self.shape}"


@dataclass(frozen=True)
class CheckpointManifest:
    """The commit record of a checkpoint, stored as JSON next to its blob."""

    round: int
    client: str | None
    examples: int
    metrics: dict[str, float]
    sha256: str
    size: int
    tensors: dict[str, TensorSpec]
    format: str = FORMAT
    extra: dict[str, str] = field(default_factory=dict)

    def to_json(self) -> bytes:
        """Canonical one-line JSON (sorted keys, finite numbers only), UTF-8, newline-terminated."""
        doc = {
            "format": self.format,
            "round": self.round,
            "client": self.client,
            "examples": self.examples,
            "metrics": {k: float(v) for k, v in self.metrics.items()},
            "sha256": self.sha256,
            "size": self.size,
            "tensors": {n: {"dtype": s.dtype, "shape": list(s.shape)} for n, s in self.tensors.items()},
            "extra": dict(self.extra),
        }
        try:
            text = json.dumps(doc, sort_keys=True, allow_nan=False, ensure_ascii=False)
        except ValueError as exc:
            raise CheckpointError(f"manifest metrics must be finite numbers, got {self.metrics!r}") from exc
        return (text + "\n").encode("utf-8")

    @classmethod
    def from_json(cls, data: bytes, *, where: str) -> CheckpointManifest:
        """Parse and strictly validate a manifest; :class:`CheckpointCorrupt` names ``where``."""
        return _parse_manifest(data, where)


@dataclass(frozen=True)
class Checkpoint:
    """Loaded, verified arrays and their manifest."""

    arrays: dict[str, np.ndarray]
    manifest: CheckpointManifest


# --------------------------------------------------------------------------- keys and specs


def checkpoint_keys(key: str) -> tuple[str, str]:
    """The (blob, manifest) keys of a checkpoint.

    ``"a/b/global"`` or ``"a/b/global.safetensors"`` → ``("a/b/global.safetensors", "a/b/global.json")``.
    """
    base = key.removesuffix(BLOB_SUFFIX)
    if not base or base.endswith("/"):
        raise CheckpointError(
            f"invalid checkpoint key {key!r}: expected a key such as 'run/round-0001/global'"
        )
    return base + BLOB_SUFFIX, base + MANIFEST_SUFFIX


def specs_of(arrays: Mapping[str, np.ndarray]) -> dict[str, TensorSpec]:
    """The :class:`TensorSpec` of every array, by name."""
    return {name: TensorSpec(np.asarray(a).dtype.name, tuple(np.shape(a))) for name, a in arrays.items()}


def _shape_str(shape: tuple[int, ...]) -> str:
    return str(tuple(shape))


def _names_str(names: list[str]) -> str:
    shown = ", ".join(names[:_MAX_LISTED])
    return shown + (f" (+{len(names) - _MAX_LISTED} more)" if len(names) > _MAX_LISTED else "")


def spec_difference(
    found: Mapping[str, TensorSpec],
    expected: Mapping[str, TensorSpec],
    subject: str,
    *,
    reference: str = "expected",
    expected_word: str = "expected",
) -> str | None:
    """One line saying how ``found`` differs from ``expected`` (None if equal).

    ``"update from client 3 at s3://… has conv1.weight of shape (16, 1, 5, 5), expected (32, 1, 5, 5)"``
    """
    missing = sorted(set(expected) - set(found))
    unexpected = sorted(set(found) - set(expected))
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"missing {_names_str(missing)}")
        if unexpected:
            parts.append(f"unexpected {_names_str(unexpected)}")
        return f"{subject} has different tensor names than {reference}: " + "; ".join(parts)
    differing = [n for n in sorted(expected) if found[n] != expected[n]]
    if not differing:
        return None
    name = differing[0]
    got, want = found[name], expected[name]
    if got.shape != want.shape:
        detail = f"{name} of shape {_shape_str(got.shape)}, {expected_word} {_shape_str(want.shape)}"
    else:
        detail = f"{name} of dtype {got.dtype}, {expected_word} {want.dtype}"
    more = f" ({len(differing) - 1} more tensors differ)" if len(differing) > 1 else ""
    return f"{subject} has {detail}{more}"


# --------------------------------------------------------------------------- encoding


def _normalize(name: Any, array: Any) -> np.ndarray:
    if not isinstance(name, str) or not name:
        raise CheckpointError(f"tensor names must be non-empty strings, got {name!r}")
    if name == "__metadata__":
        raise CheckpointError("tensor name '__metadata__' is reserved by safetensors")
    if not isinstance(array, np.ndarray | np.generic):
        raise CheckpointError(f"tensor {name!r} must be a numpy array, got {type(array).__name__}")
    arr = np.asarray(array)
    if arr.dtype.name not in SUPPORTED_DTYPES or arr.dtype.fields is not None:
        raise CheckpointError(
            f"tensor {name!r} has unsupported dtype {arr.dtype}: expected one of {sorted(SUPPORTED_DTYPES)}"
        )
    if arr.dtype.byteorder == ">":
        arr = arr.astype(arr.dtype.newbyteorder("<"))
    # Not np.ascontiguousarray: it turns 0-d arrays into shape (1,).
    return arr if arr.flags.c_contiguous else arr.copy(order="C")


def encode_arrays(arrays: Mapping[str, np.ndarray]) -> bytes:
    """Encode ``arrays`` as safetensors bytes; equal arrays give identical bytes."""
    from safetensors.numpy import save

    normalized = {name: _normalize(name, arrays[name]) for name in sorted(arrays, key=str)}
    return save(normalized)


def encode_to_file(arrays: Mapping[str, np.ndarray], path: Path) -> Path:
    """Write the bytes :func:`encode_arrays` returns to ``path``, streaming (no copy in memory)."""
    from safetensors.numpy import save_file

    save_file({name: _normalize(name, arrays[name]) for name in sorted(arrays, key=str)}, path)
    return path


def parse_header(
    data: bytes, where: str, *, size: int | None = None
) -> dict[str, tuple[TensorSpec, int, int]]:
    """Validate the safetensors header of ``data``; return ``{name: (spec, begin, end)}``.

    ``size``: the blob's size when ``data`` holds only its first bytes (at least the header).
    """
    size = len(data) if size is None else size
    if size < 8:
        raise CheckpointCorrupt(f"{where} is not safetensors: expected at least 8 bytes, found {size}")
    n = int.from_bytes(data[:8], "little")
    if n > MAX_HEADER_BYTES or n > size - 8:
        raise CheckpointCorrupt(
            f"{where} is not safetensors: header length {n} exceeds "
            f"{'the 100 MB limit' if n > MAX_HEADER_BYTES else f'the {size - 8} bytes after it'}"
        )
    try:
        header = json.loads(data[8 : 8 + n].decode("utf-8"), object_pairs_hook=_no_duplicates)
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise CheckpointCorrupt(f"{where} has a malformed safetensors header: {_one_line(exc)}") from None
    if not isinstance(header, dict):
        raise CheckpointCorrupt(
            f"{where} has a malformed safetensors header: expected a JSON object, "
            f"found {type(header).__name__}"
        )
    meta = header.pop("__metadata__", {})
    if not isinstance(meta, dict) or not all(isinstance(v, str) for v in meta.values()):
        raise CheckpointCorrupt(f"{where} has malformed safetensors __metadata__: expected a str → str map")
    body = size - 8 - n
    entries: dict[str, tuple[TensorSpec, int, int]] = {}
    for name, entry in header.items():
        if not name:
            raise CheckpointCorrupt(f"{where} has a tensor with an empty name")
        if not isinstance(entry, dict) or set(entry) != {"dtype", "shape", "data_offsets"}:
            raise CheckpointCorrupt(
                f"{where}: header entry for {name} must have exactly dtype, shape, data_offsets; "
                f"found {entry!r:.200}"
            )
        code, shape, offsets = entry["dtype"], entry["shape"], entry["data_offsets"]
        if code not in _ST_TO_NUMPY:
            raise CheckpointCorrupt(
                f"{where}: tensor {name} has unsupported dtype {code!r}; "
                f"expected one of {sorted(_ST_TO_NUMPY)}"
            )
        if not isinstance(shape, list) or not all(_is_int(d) and d >= 0 for d in shape):
            raise CheckpointCorrupt(f"{where}: tensor {name} has invalid shape {shape!r:.200}")
        if (
            not isinstance(offsets, list)
            or len(offsets) != 2
            or not all(_is_int(o) for o in offsets)
            or not 0 <= offsets[0] <= offsets[1] <= body
        ):
            raise CheckpointCorrupt(
                f"{where}: tensor {name} has data_offsets {offsets!r:.200}, expected [begin, end] within "
                f"the {body} data bytes"
            )
        spec = TensorSpec(_ST_TO_NUMPY[code], tuple(shape))
        nbytes = math.prod(spec.shape) * np.dtype(spec.dtype).itemsize
        if offsets[1] - offsets[0] != nbytes:
            raise CheckpointCorrupt(
                f"{where}: tensor {name} ({spec.describe()}) needs {nbytes} bytes, "
                f"data_offsets {offsets} span {offsets[1] - offsets[0]}"
            )
        entries[name] = (spec, offsets[0], offsets[1])
    # Tensors must tile the data section exactly: no gaps, overlaps or trailing bytes.
    position = 0
    for name, (_, begin, end) in sorted(entries.items(), key=lambda item: (item[1][1], item[1][2])):
        if begin != position:
            raise CheckpointCorrupt(
                f"{where}: tensor {name} starts at byte {begin}, expected {position} (gap or overlap)"
            )
        position = end
    if position != body:
        raise CheckpointCorrupt(f"{where}: tensors cover {position} data bytes, the blob has {body}")
    return entries


def decode_arrays(data: bytes, *, where: str) -> dict[str, np.ndarray]:
    """Decode safetensors bytes after validating the header; :class:`CheckpointCorrupt` on any problem."""
    from safetensors.numpy import load

    entries = parse_header(data, where)
    try:
        loaded = load(data)
    except Exception as exc:  # SafetensorError and friends: anything our checks missed
        raise CheckpointCorrupt(f"{where} could not be decoded as safetensors: {_one_line(exc)}") from None
    arrays: dict[str, np.ndarray] = {}
    for name in sorted(entries):
        arr = loaded.get(name)
        spec = entries[name][0]
        if arr is None or TensorSpec(arr.dtype.name, arr.shape) != spec:
            raise CheckpointCorrupt(f"{where}: safetensors decoded {name} differently from its header")
        arrays[name] = arr if arr.flags.writeable else arr.copy()
    if set(loaded) != set(entries):
        raise CheckpointCorrupt(f"{where}: safetensors decoded tensors not listed in the header")
    return arrays


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise ValueError(f"duplicate key {key!r}")
        out[key] = value
    return out


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split())[:300]


# --------------------------------------------------------------------------- manifest


_MANIFEST_KEYS = frozenset({"format", "round", "client", "examples", "metrics", "sha256", "size", "tensors"})


def _parse_manifest(data: bytes, where: str) -> CheckpointManifest:
    def bad(what: str) -> CheckpointCorrupt:
        return CheckpointCorrupt(f"invalid checkpoint manifest {where}: {what}")

    def reject_constant(name: str) -> Any:
        raise ValueError(f"non-finite number {name}")

    try:
        doc = json.loads(
            data.decode("utf-8"), object_pairs_hook=_no_duplicates, parse_constant=reject_constant
        )
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise bad(f"expected JSON, found invalid JSON ({_one_line(exc)})") from None
    if not isinstance(doc, dict):
        raise bad(f"expected a JSON object, found {type(doc).__name__}")
    if doc.get("format") != FORMAT:  # first: a newer format may have other fields
        raise bad(f"format is {doc.get('format')!r:.100}, expected {FORMAT!r}")
    keys = set(doc)
    if not keys >= _MANIFEST_KEYS or not keys <= _MANIFEST_KEYS | {"extra"}:
        missing, unknown = sorted(_MANIFEST_KEYS - keys), sorted(keys - _MANIFEST_KEYS - {"extra"})
        found = ", ".join([f"missing {missing}"] * bool(missing) + [f"unknown {unknown}"] * bool(unknown))
        raise bad(f"expected fields {sorted(_MANIFEST_KEYS)} (and optional 'extra'), found {found}")
    for name in ("round", "examples", "size"):
        if not _is_int(doc[name]) or doc[name] < 0:
            raise bad(f"{name} is {doc[name]!r:.100}, expected a non-negative integer")
    client = doc["client"]
    if client is not None and (not isinstance(client, str) or not client):
        raise bad(f"client is {client!r:.100}, expected a non-empty string or null")
    sha = doc["sha256"]
    if not isinstance(sha, str) or len(sha) != 64 or any(c not in "0123456789abcdef" for c in sha):
        raise bad(f"sha256 is {sha!r:.100}, expected 64 lowercase hex digits")
    metrics = doc["metrics"]
    if not isinstance(metrics, dict):
        raise bad(f"metrics is {metrics!r:.100}, expected an object of finite numbers")
    for name, value in metrics.items():
        if not isinstance(value, int | float) or isinstance(value, bool) or not math.isfinite(value):
            raise bad(f"metric {name} is {value!r:.100}, expected a finite number")
    extra = doc.get("extra", {})
    if not isinstance(extra, dict) or not all(isinstance(v, str) for v in extra.values()):
        raise bad(f"extra is {extra!r:.100}, expected an object of strings")
    tensors_doc = doc["tensors"]
    if not isinstance(tensors_doc, dict):
        raise bad(f"tensors is {tensors_doc!r:.100}, expected an object of {{dtype, shape}}")
    tensors: dict[str, TensorSpec] = {}
    for name, spec in tensors_doc.items():
        if (
            not name
            or not isinstance(spec, dict)
            or set(spec) != {"dtype", "shape"}
            or spec["dtype"] not in SUPPORTED_DTYPES
            or not isinstance(spec["shape"], list)
            or not all(_is_int(d) and d >= 0 for d in spec["shape"])
        ):
            raise bad(
                f"tensor {name!r} is {spec!r:.200}, expected {{dtype: one of {sorted(SUPPORTED_DTYPES)}, "
                "shape: [non-negative ints]}"
            )
        tensors[name] = TensorSpec(spec["dtype"], tuple(spec["shape"]))
    return CheckpointManifest(
        round=doc["round"],
        client=client,
        examples=doc["examples"],
        metrics={k: float(v) for k, v in metrics.items()},
        sha256=sha,
        size=doc["size"],
        tensors=tensors,
        format=FORMAT,
        extra=dict(extra),
    )


# --------------------------------------------------------------------------- store I/O


def checkpoint_subject(manifest: CheckpointManifest, uri: str) -> str:
    if manifest.client is not None:
        return f"update from client {manifest.client} at {uri}"
    return f"checkpoint {uri}"


def save_checkpoint(
    store: Store,
    key: str,
    arrays: Mapping[str, np.ndarray],
    *,
    round: int,
    client: str | None = None,
    examples: int = 0,
    metrics: Mapping[str, float] | None = None,
    extra: Mapping[str, str] | None = None,
    overwrite: bool = False,
) -> str:
    """Write ``arrays`` and then their manifest at ``key``; return the ``.safetensors`` URI.

    Raises :class:`CheckpointExists` when a manifest is already committed there and not
    ``overwrite``. With ``overwrite`` the old manifest is removed first, so readers never pair
    an old manifest with a new blob. (Exists-then-write is not atomic across writers; each
    checkpoint key has one writer in a workflow.)
    """
    blob_key, manifest_key = checkpoint_keys(key)
    for what, count in (("round", round), ("examples", examples)):
        if not isinstance(count, int | np.integer) or isinstance(count, bool) or count < 0:
            raise CheckpointError(f"{what} must be a non-negative integer, got {count!r}")
    if client is not None and (not isinstance(client, str) or not client):
        raise CheckpointError(f"client must be a non-empty string or None, got {client!r}")
    clean_metrics: dict[str, float] = {}
    for name, value in (metrics or {}).items():
        number = float(value) if isinstance(value, int | float | np.number) else math.nan
        if not isinstance(name, str) or isinstance(value, bool) or not math.isfinite(number):
            raise CheckpointError(f"metric {name!r} must be a finite number, got {value!r}")
        clean_metrics[name] = number
    clean_extra = dict(extra or {})
    for extra_key, extra_value in clean_extra.items():
        if not isinstance(extra_key, str) or not isinstance(extra_value, str):
            raise CheckpointError(f"extra entries must map str to str, got {extra_key!r}: {extra_value!r}")

    # encoded into a file, not memory (the blob never sits in memory beside the arrays): the store's
    # own new file, so a file store keeps it without a copy
    with store.new_file(blob_key) as blob:
        encode_to_file(arrays, blob)
        sha256, size = _file_digest(blob)
        manifest = CheckpointManifest(
            round=int(round),
            client=client,
            examples=int(examples),
            metrics=clean_metrics,
            sha256=sha256,
            size=size,
            tensors=dict(sorted(specs_of(arrays).items())),
            extra=clean_extra,
        )
        document = manifest.to_json()
        if store.exists(manifest_key):
            if not overwrite:
                raise CheckpointExists(
                    f"checkpoint {store.key_uri(manifest_key)} already exists; pass overwrite=True to "
                    "replace it"
                )
            store.delete(manifest_key)
    store.put_bytes(manifest_key, document)
    return store.key_uri(blob_key)


def _file_digest(path: Path) -> tuple[str, int]:
    """(sha256 hex digest, size) of the file at ``path``, read in 4 MiB chunks."""
    digest = hashlib.sha256()
    size = 0
    with path.open("rb", buffering=0) as f:
        buffer = bytearray(4 << 20)
        view = memoryview(buffer)
        while got := f.readinto(buffer):
            digest.update(view[:got])
            size += got
    return digest.hexdigest(), size


def checkpoint_exists(store: Store, key: str) -> bool:
    """Whether the checkpoint at ``key`` is committed (its manifest exists)."""
    return store.exists(checkpoint_keys(key)[1])


def load_manifest(store: Store, key: str) -> CheckpointManifest:
    """Read and validate the manifest of the checkpoint at ``key`` (at most ``MAX_MANIFEST_BYTES``)."""
    _, manifest_key = checkpoint_keys(key)
    uri = store.key_uri(manifest_key)
    try:
        size = store.size(manifest_key)
        if size > MAX_MANIFEST_BYTES:
            raise CheckpointCorrupt(
                f"invalid checkpoint manifest {uri}: {size} bytes, expected at most {MAX_MANIFEST_BYTES}; "
                "not read"
            )
        data = store.get_bytes(manifest_key)
    except ObjectNotFound:
        raise CheckpointNotFound(f"no checkpoint at {uri}: the manifest is missing") from None
    return CheckpointManifest.from_json(data, where=uri)


def _check_blob_size(store: Store, blob_key: str, manifest: CheckpointManifest, expected: int | None) -> None:
    """Refuse, before reading it, a blob whose size differs from what its tensors imply."""
    uri = store.key_uri(blob_key)
    if expected is not None and manifest.size != expected:
        raise CheckpointMismatch(
            f"{checkpoint_subject(manifest, uri)}: manifest says {manifest.size} bytes, its tensors "
            f"encode to {expected}; not read"
        )
    try:
        stored = store.size(blob_key)
    except ObjectNotFound:
        raise CheckpointNotFound(f"checkpoint blob {uri} is missing although its manifest exists") from None
    if stored != manifest.size:
        raise CheckpointCorrupt(
            f"size mismatch for {uri}: manifest says {manifest.size} bytes, blob has {stored}; not read"
        )


def checked_manifest(
    store: Store, key: str, like: Mapping[str, TensorSpec] | None, blob_size: int | None
) -> tuple[str, str, CheckpointManifest]:
    """(blob key, blob URI, manifest) of the checkpoint at ``key``, checked against ``like`` and, before
    anything is read, the blob's stored size (see :func:`load_checkpoint`)."""
    blob_key, _ = checkpoint_keys(key)
    manifest = load_manifest(store, key)
    uri = store.key_uri(blob_key)
    if like is not None:
        expected = {name: TensorSpec(spec.dtype, spec.shape) for name, spec in like.items()}
        problem = spec_difference(manifest.tensors, expected, checkpoint_subject(manifest, uri))
        if problem:
            raise CheckpointMismatch(problem)
    _check_blob_size(store, blob_key, manifest, blob_size)
    return blob_key, uri, manifest


def load_checkpoint(
    store: Store,
    key: str,
    *,
    like: Mapping[str, TensorSpec] | None = None,
    require_finite: bool = True,
    blob_size: int | None = None,
) -> Checkpoint:
    """Load and verify the checkpoint at ``key``.

    Checks, in order: manifest present and valid; tensors equal to ``like`` (when given,
    :class:`CheckpointMismatch`, before the blob is fetched); blob present, of the manifest's size
    and sha256; safetensors header well-formed with supported dtypes; tensors equal to the
    manifest's; float tensors finite (when ``require_finite``).

    The blob is read only when the store says it has exactly the manifest's size, and, with
    ``blob_size`` (the size ``like``'s tensors encode to, e.g. the global checkpoint's), only when
    the manifest says that size too: a forged manifest cannot make a reader fetch a huge object.
    """
    blob_key, uri, manifest = checked_manifest(store, key, like, blob_size)
    try:
        blob = store.get_bytes(blob_key)
    except ObjectNotFound:
        raise CheckpointNotFound(f"checkpoint blob {uri} is missing although its manifest exists") from None
    if len(blob) != manifest.size:
        raise CheckpointCorrupt(
            f"size mismatch for {uri}: manifest says {manifest.size} bytes, blob has {len(blob)}"
        )
    digest = hashlib.sha256(blob).hexdigest()
    if digest != manifest.sha256:
        raise CheckpointCorrupt(
            f"sha256 mismatch for {uri}: manifest says {manifest.sha256[:16]}…, blob is {digest[:16]}…"
        )
    arrays = decode_arrays(blob, where=uri)
    problem = spec_difference(
        specs_of(arrays),
        manifest.tensors,
        f"blob {uri}",
        reference="its manifest",
        expected_word="manifest says",
    )
    if problem:
        raise CheckpointCorrupt(problem)
    if require_finite:
        for name, arr in arrays.items():
            if arr.dtype.name in FLOAT_DTYPES:
                bad = arr.size - int(np.count_nonzero(np.isfinite(arr)))
                if bad:
                    raise CheckpointCorrupt(
                        f"{checkpoint_subject(manifest, uri)} has {bad} non-finite (NaN/Inf) values in "
                        f"{name}, expected finite values"
                    )
    return Checkpoint(arrays=arrays, manifest=manifest)


class LazyArrays(Mapping[str, np.ndarray]):
    """The tensors of a verified local safetensors file, each read from disk on access (``safe_open``):
    holding one costs nothing, reading one costs that tensor only."""

    def __init__(self, path: Path, specs: Mapping[str, TensorSpec]) -> None:
        self.path = path
        self.specs = dict(specs)

    def __getitem__(self, name: str) -> np.ndarray:
        if name not in self.specs:
            raise KeyError(name)
        from safetensors import safe_open

        with safe_open(str(self.path), framework="numpy") as f:
            array: np.ndarray = f.get_tensor(name)
        return array

    def __iter__(self) -> Iterator[str]:
        return iter(self.specs)

    def __len__(self) -> int:
        return len(self.specs)


def open_checkpoint(
    store: Store,
    key: str,
    directory: Path,
    *,
    like: Mapping[str, TensorSpec] | None = None,
    blob_size: int | None = None,
) -> tuple[CheckpointManifest, LazyArrays]:
    """Download the checkpoint at ``key`` into ``directory`` and verify it like :func:`load_checkpoint`
    (manifest, ``like``, size before download, sha256, header, specs, finite floats), holding one
    tensor in memory at a time; its arrays are then read lazily, one tensor per access."""
    blob_key, uri, manifest = checked_manifest(store, key, like, blob_size)
    path = directory / (hashlib.sha256(key.encode()).hexdigest()[:16] + BLOB_SUFFIX)
    try:
        store.get_file(blob_key, path)
    except ObjectNotFound:
        raise CheckpointNotFound(f"checkpoint blob {uri} is missing although its manifest exists") from None
    size = path.stat().st_size
    if size != manifest.size:
        raise CheckpointCorrupt(
            f"size mismatch for {uri}: manifest says {manifest.size} bytes, blob has {size}"
        )
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
        f.seek(0)
        head = f.read(8)
        head += f.read(min(int.from_bytes(head[:8], "little"), MAX_HEADER_BYTES)) if len(head) == 8 else b""
    if digest.hexdigest() != manifest.sha256:
        raise CheckpointCorrupt(
            f"sha256 mismatch for {uri}: manifest says {manifest.sha256[:16]}…, "
            f"blob is {digest.hexdigest()[:16]}…"
        )
    specs = {name: spec for name, (spec, _, _) in parse_header(head, uri, size=size).items()}
    problem = spec_difference(
        specs, manifest.tensors, f"blob {uri}", reference="its manifest", expected_word="manifest says"
    )
    if problem:
        raise CheckpointCorrupt(problem)
    arrays = LazyArrays(path, specs)
    for name, spec in sorted(specs.items()):
        try:
            arr = arrays[name]
        except Exception as exc:  # SafetensorError and friends: anything our checks missed
            raise CheckpointCorrupt(f"{uri} could not be decoded as safetensors: {_one_line(exc)}") from None
        if TensorSpec(arr.dtype.name, arr.shape) != spec:
            raise CheckpointCorrupt(f"{uri}: safetensors decoded {name} differently from its header")
        if arr.dtype.name in FLOAT_DTYPES:
            bad = arr.size - int(np.count_nonzero(np.isfinite(arr)))
            if bad:
                raise CheckpointCorrupt(
                    f"{checkpoint_subject(manifest, uri)} has {bad} non-finite (NaN/Inf) values in {name}, "
                    "expected finite values"
                )
        del arr
    return manifest, arrays
