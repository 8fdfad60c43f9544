"""Checkpoints: byte-exact round trips on FileStore and S3 (moto), and every way a reader refuses one."""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from argofl.steps.checkpoint import (
    FORMAT,
    SUPPORTED_DTYPES,
    CheckpointCorrupt,
    CheckpointError,
    CheckpointExists,
    CheckpointManifest,
    CheckpointMismatch,
    CheckpointNotFound,
    TensorSpec,
    checkpoint_exists,
    checkpoint_keys,
    decode_arrays,
    encode_arrays,
    load_checkpoint,
    load_manifest,
    save_checkpoint,
    specs_of,
)
from argofl.steps.store import FileStore, Store
from tests.stores import backend_store  # noqa: F401  (fixture: store)

KEY = "exp/run-1/round-0003/updates/3"
BLOB, MANIFEST = KEY + ".safetensors", KEY + ".json"


@pytest.fixture
def file_store(tmp_path: Path) -> Store:
    return FileStore(tmp_path / "store")


def model_arrays(seed: int = 0) -> dict[str, np.ndarray]:
    """A small model touching every supported dtype, a scalar and an empty tensor."""
    rng = np.random.default_rng(seed)
    return {
        "conv1.weight": rng.standard_normal((32, 1, 5, 5)).astype(np.float32),
        "conv1.bias": rng.standard_normal(32).astype(np.float32),
        "fc.weight": rng.standard_normal((10, 20)),
        "fc.bias": rng.standard_normal(10).astype(np.float16),
        "bn.num_batches_tracked": np.array(7, dtype=np.int64),
        "codes.i8": rng.integers(-128, 127, 9, dtype=np.int8),
        "codes.i16": rng.integers(-1000, 1000, (3, 3), dtype=np.int16),
        "codes.i32": rng.integers(-(10**6), 10**6, 4, dtype=np.int32),
        "codes.u8": rng.integers(0, 255, 5, dtype=np.uint8),
        "mask": rng.random(6) > 0.5,
        "empty": np.zeros((0, 3), dtype=np.float32),
    }


def save_update(store: Store, arrays: dict[str, np.ndarray] | None = None, **kwargs: Any) -> str:
    options: dict[str, Any] = {
        "round": 3,
        "client": "3",
        "examples": 600,
        "metrics": {"loss": 0.25, "accuracy": 0.9},
    }
    options.update(kwargs)
    return save_checkpoint(store, KEY, model_arrays() if arrays is None else arrays, **options)


def replace_blob(store: Store, blob: bytes, *, fix_manifest: bool = True) -> None:
    """Swap the blob; with ``fix_manifest`` also rewrite the manifest's sha256/size to match it."""
    store.put_bytes(BLOB, blob)
    if fix_manifest:
        doc = json.loads(store.get_bytes(MANIFEST))
        doc["sha256"], doc["size"] = hashlib.sha256(blob).hexdigest(), len(blob)
        store.put_bytes(MANIFEST, json.dumps(doc).encode())


def raw_safetensors(header: Any, data: bytes = b"", *, length: int | None = None) -> bytes:
    """Hand-made safetensors bytes: 8-byte little-endian header length, JSON header, data."""
    text = header if isinstance(header, bytes) else json.dumps(header).encode()
    return (len(text) if length is None else length).to_bytes(8, "little") + text + data


def assert_same_arrays(got: dict[str, np.ndarray], want: dict[str, np.ndarray]) -> None:
    assert sorted(got) == sorted(want)
    for name, arr in want.items():
        assert got[name].dtype == arr.dtype, name
        assert got[name].shape == arr.shape, name
        np.testing.assert_array_equal(got[name], arr)


# --------------------------------------------------------------------------- round trips


def test_round_trip_is_byte_exact(store: Store) -> None:
    arrays = model_arrays()
    uri = save_update(store, arrays, extra={"framework": "torch"})
    assert uri == store.key_uri(BLOB)
    assert store.list() == sorted([BLOB, MANIFEST])
    ckpt = load_checkpoint(store, KEY)
    assert_same_arrays(ckpt.arrays, arrays)
    blob = store.get_bytes(BLOB)
    assert encode_arrays(ckpt.arrays) == blob
    manifest = ckpt.manifest
    assert (manifest.round, manifest.client, manifest.examples) == (3, "3", 600)
    assert manifest.metrics == {"loss": 0.25, "accuracy": 0.9}
    assert manifest.extra == {"framework": "torch"}
    assert manifest.format == FORMAT
    assert (manifest.sha256, manifest.size) == (hashlib.sha256(blob).hexdigest(), len(blob))
    assert manifest.tensors == specs_of(arrays)
    assert manifest.to_json() == store.get_bytes(MANIFEST)
    assert load_manifest(store, KEY) == manifest
    # Loaded arrays are ordinary writable arrays (aggregation updates them in place).
    ckpt.arrays["conv1.bias"] += 1


def test_global_checkpoint_without_client(store: Store) -> None:
    save_checkpoint(store, "exp/run/round-0000/global", {"w": np.ones(3, np.float32)}, round=0)
    manifest = load_manifest(store, "exp/run/round-0000/global.safetensors")
    assert (manifest.client, manifest.examples, manifest.metrics, manifest.extra) == (None, 0, {}, {})


def test_encoding_is_deterministic() -> None:
    arrays = model_arrays()
    reordered = dict(reversed(list(arrays.items())))
    fortran = {k: np.asfortranarray(v) if v.ndim else v for k, v in arrays.items()}
    big_endian = {k: v.astype(v.dtype.newbyteorder(">")) for k, v in arrays.items()}
    strided = {k: np.repeat(v, 2, axis=0)[::2] if v.ndim else v for k, v in arrays.items()}
    assert not strided["conv1.weight"].flags.c_contiguous
    blob = encode_arrays(arrays)
    for variant in (reordered, fortran, big_endian, strided):
        assert encode_arrays(variant) == blob
    assert_same_arrays(decode_arrays(blob, where="mem"), arrays)
    assert encode_arrays(model_arrays(seed=1)) != blob


def test_same_arrays_give_same_blob_and_sha(file_store: Store) -> None:
    save_checkpoint(file_store, "a/x", model_arrays(), round=1, client="a")
    save_checkpoint(file_store, "b/x", dict(reversed(list(model_arrays().items()))), round=2, client="b")
    assert file_store.get_bytes("a/x.safetensors") == file_store.get_bytes("b/x.safetensors")
    assert load_manifest(file_store, "a/x").sha256 == load_manifest(file_store, "b/x").sha256


def test_manifest_json_round_trip() -> None:
    manifest = CheckpointManifest(
        round=2,
        client=None,
        examples=10,
        metrics={"loss": 1.5},
        sha256="0" * 64,
        size=8,
        tensors={"w": TensorSpec("float32", (2, 3))},
        extra={"k": "v"},
    )
    data = manifest.to_json()
    assert CheckpointManifest.from_json(data, where="mem") == manifest
    assert data == CheckpointManifest.from_json(data, where="mem").to_json()


def test_checkpoint_keys() -> None:
    assert checkpoint_keys("a/b/global") == ("a/b/global.safetensors", "a/b/global.json")
    assert checkpoint_keys("a/b/global.safetensors") == ("a/b/global.safetensors", "a/b/global.json")
    for bad in ("", ".safetensors", "a/"):
        with pytest.raises(CheckpointError, match=re.escape(repr(bad))):
            checkpoint_keys(bad)


def test_specs_of() -> None:
    specs = specs_of({"w": np.zeros((2, 3), np.float32), "n": np.array(1, np.int64)})
    assert specs == {"w": TensorSpec("float32", (2, 3)), "n": TensorSpec("int64", ())}
    assert TensorSpec("float32", [2, 3]) == TensorSpec("float32", (2, 3))  # type: ignore[arg-type]


# --------------------------------------------------------------------------- existence


def test_exists_follows_the_manifest(store: Store) -> None:
    assert not checkpoint_exists(store, KEY)
    store.put_bytes(BLOB, encode_arrays(model_arrays()))  # a blob alone is not a checkpoint
    assert not checkpoint_exists(store, KEY)
    with pytest.raises(CheckpointNotFound, match=re.escape(store.key_uri(MANIFEST))):
        load_checkpoint(store, KEY)
    save_update(store)
    assert checkpoint_exists(store, KEY)
    assert checkpoint_exists(store, BLOB)


def test_missing_blob_is_not_found(store: Store) -> None:
    save_update(store)
    store.delete(BLOB)
    with pytest.raises(CheckpointNotFound, match=re.escape(store.key_uri(BLOB))):
        load_checkpoint(store, KEY)


def test_existing_checkpoint_is_not_overwritten(store: Store) -> None:
    save_update(store)
    before = (store.get_bytes(BLOB), store.get_bytes(MANIFEST))
    with pytest.raises(CheckpointExists, match=re.escape(store.key_uri(MANIFEST))):
        save_update(store, model_arrays(seed=5), round=4)
    assert (store.get_bytes(BLOB), store.get_bytes(MANIFEST)) == before
    save_update(store, model_arrays(seed=5), round=4, overwrite=True)
    ckpt = load_checkpoint(store, KEY)
    assert ckpt.manifest.round == 4
    assert_same_arrays(ckpt.arrays, model_arrays(seed=5))


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"round": -1}, "round"),
        ({"round": True}, "round"),
        ({"examples": -5}, "examples"),
        ({"examples": 1.5}, "examples"),
        ({"client": ""}, "client"),
        ({"metrics": {"loss": float("nan")}}, "loss"),
        ({"metrics": {"loss": float("inf")}}, "loss"),
        ({"metrics": {"loss": "low"}}, "loss"),
        ({"extra": {"k": 1}}, "extra"),
    ],
)
def test_save_refuses_bad_fields(file_store: Store, kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(CheckpointError, match=message):
        save_update(file_store, **kwargs)
    assert file_store.list() == []


@pytest.mark.parametrize(
    ("arrays", "message"),
    [
        ({"w": np.zeros(3, np.uint16)}, "unsupported dtype uint16"),
        ({"w": np.zeros(3, np.complex64)}, "unsupported dtype complex64"),
        ({"w": np.array([object()])}, "unsupported dtype object"),
        ({"w": np.array(["text"])}, "unsupported dtype"),
        ({"w": [1.0, 2.0]}, "numpy array"),
        ({"": np.zeros(1)}, "non-empty"),
        ({"__metadata__": np.zeros(1)}, "reserved"),
    ],
)
def test_encode_refuses_unsupported_values(file_store: Store, arrays: dict[str, Any], message: str) -> None:
    with pytest.raises(CheckpointError, match=message):
        encode_arrays(arrays)
    with pytest.raises(CheckpointError, match=message):
        save_checkpoint(file_store, "k", arrays, round=0)
    assert file_store.list() == []


# --------------------------------------------------------------------------- corrupt blobs


def test_truncated_blob_is_corrupt(store: Store) -> None:
    save_update(store)
    blob = store.get_bytes(BLOB)
    replace_blob(store, blob[: len(blob) // 2], fix_manifest=False)
    with pytest.raises(CheckpointCorrupt, match=re.escape(f"size mismatch for {store.key_uri(BLOB)}")):
        load_checkpoint(store, KEY)


def test_flipped_byte_is_sha_mismatch(store: Store) -> None:
    save_update(store)
    blob = bytearray(store.get_bytes(BLOB))
    blob[-3] ^= 0x01
    replace_blob(store, bytes(blob), fix_manifest=False)
    want = load_manifest(store, KEY).sha256
    found = hashlib.sha256(blob).hexdigest()
    expected = f"sha256 mismatch for {store.key_uri(BLOB)}: manifest says {want[:16]}…, blob is {found[:16]}…"
    with pytest.raises(CheckpointCorrupt) as info:
        load_checkpoint(store, KEY)
    assert str(info.value) == expected


def test_tampered_blob_with_fixed_sha_but_other_spec(store: Store) -> None:
    """A blob swapped (and its sha256 fixed up) with a different tensor shape still fails."""
    save_update(store)
    tampered = model_arrays()
    tampered["conv1.weight"] = np.zeros((16, 1, 5, 5), np.float32)
    replace_blob(store, encode_arrays(tampered))
    with pytest.raises(CheckpointCorrupt) as info:
        load_checkpoint(store, KEY)
    message = str(info.value)
    assert store.key_uri(BLOB) in message
    assert "conv1.weight of shape (16, 1, 5, 5), manifest says (32, 1, 5, 5)" in message


def test_tampered_blob_with_other_dtype_or_names(file_store: Store) -> None:
    save_update(file_store)
    tampered = model_arrays()
    tampered["fc.weight"] = tampered["fc.weight"].astype(np.float32)
    replace_blob(file_store, encode_arrays(tampered))
    with pytest.raises(CheckpointCorrupt, match=r"fc\.weight of dtype float32, manifest says float64"):
        load_checkpoint(file_store, KEY)
    tampered = model_arrays()
    tampered["backdoor"] = tampered.pop("mask")
    replace_blob(file_store, encode_arrays(tampered))
    with pytest.raises(CheckpointCorrupt, match="missing mask; unexpected backdoor"):
        load_checkpoint(file_store, KEY)


@pytest.mark.parametrize(
    ("blob", "message"),
    [
        (b"", "expected at least 8 bytes, found 0"),
        (b"\x01\x02", "expected at least 8 bytes, found 2"),
        (b"\xff" * 8 + b"{}", r"header length 18446744073709551615 exceeds the 100 MB limit"),
        ((200_000_000).to_bytes(8, "little") + b"{}" * 10, "exceeds the 100 MB limit"),
        (raw_safetensors({}, length=1000), "header length 1000 exceeds the 2 bytes after it"),
        (raw_safetensors(b"{not json"), "malformed safetensors header"),
        (raw_safetensors(b"\xff\xfe{}"), "malformed safetensors header"),
        (raw_safetensors(b"[1, 2]"), "expected a JSON object, found list"),
        (raw_safetensors(b'{"a": 1, "a": 2}'), "duplicate key 'a'"),
        (raw_safetensors(b"[" * 50_000 + b"]" * 50_000), "malformed safetensors header"),
        (raw_safetensors({"__metadata__": {"k": 1}}), "__metadata__"),
        (raw_safetensors({"w": {"dtype": "F32", "shape": [1]}}, b"\0" * 4), "must have exactly"),
        (
            raw_safetensors({"w": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}, b"\0" * 4),
            r"data_offsets \[0, 8\], expected \[begin, end\] within the 4 data bytes",
        ),
        (
            raw_safetensors({"w": {"dtype": "F32", "shape": [1], "data_offsets": [0, 10**12]}}, b"\0" * 4),
            "data_offsets",
        ),
        (
            raw_safetensors({"w": {"dtype": "F32", "shape": [1], "data_offsets": [4, 0]}}, b"\0" * 4),
            "data_offsets",
        ),
        (
            raw_safetensors({"w": {"dtype": "F32", "shape": [2], "data_offsets": [0, 4]}}, b"\0" * 4),
            r"needs 8 bytes, data_offsets \[0, 4\] span 4",
        ),
        (
            raw_safetensors({"w": {"dtype": "F32", "shape": [-1], "data_offsets": [0, 4]}}, b"\0" * 4),
            "invalid shape",
        ),
        (
            raw_safetensors({"w": {"dtype": "F32", "shape": [1.0], "data_offsets": [0, 4]}}, b"\0" * 4),
            "invalid shape",
        ),
        (
            raw_safetensors({"w": {"dtype": "F32", "shape": [0, 10**30], "data_offsets": [0, 0]}}),
            "could not be decoded as safetensors",
        ),
        (
            raw_safetensors({"w": {"dtype": "F32", "shape": [0] * 100, "data_offsets": [0, 0]}}),
            "could not be decoded as safetensors",
        ),
        (
            raw_safetensors({"w": {"dtype": "U16", "shape": [2], "data_offsets": [0, 4]}}, b"\0" * 4),
            "unsupported dtype 'U16'",
        ),
        (
            raw_safetensors({"w": {"dtype": "C64", "shape": [1], "data_offsets": [0, 8]}}, b"\0" * 8),
            "unsupported dtype 'C64'",
        ),
        (
            raw_safetensors({"w": {"dtype": "O", "shape": [1], "data_offsets": [0, 8]}}, b"\0" * 8),
            "unsupported dtype 'O'",
        ),
        (
            raw_safetensors(
                {
                    "a": {"dtype": "U8", "shape": [2], "data_offsets": [0, 2]},
                    "b": {"dtype": "U8", "shape": [2], "data_offsets": [1, 3]},
                },
                b"\0" * 3,
            ),
            "starts at byte 1, expected 2",
        ),
        (
            raw_safetensors({"w": {"dtype": "U8", "shape": [2], "data_offsets": [0, 2]}}, b"\0" * 6),
            "tensors cover 2 data bytes, the blob has 6",
        ),
        (
            raw_safetensors({"w": {"dtype": "U8", "shape": [2], "data_offsets": [2, 4]}}, b"\0" * 4),
            "starts at byte 2, expected 0",
        ),
    ],
)
def test_malformed_safetensors_is_corrupt(blob: bytes, message: str) -> None:
    with pytest.raises(CheckpointCorrupt, match=message) as info:
        decode_arrays(blob, where="s3://bucket/x.safetensors")
    assert str(info.value).startswith("s3://bucket/x.safetensors")
    assert "\n" not in str(info.value)


def test_header_claiming_data_beyond_the_blob_through_a_store(store: Store) -> None:
    """A header pointing past the data, with a manifest fixed up to match, is refused cleanly."""
    save_update(store, {"w": np.zeros(4, np.float32)})
    replace_blob(store, raw_safetensors({"w": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]}}))
    with pytest.raises(CheckpointCorrupt, match=re.escape(store.key_uri(BLOB)) + ".*data_offsets"):
        load_checkpoint(store, KEY)


class _Exploit:
    """Unpickling this creates ``marker`` (a directory): proof that something was unpickled."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self) -> tuple[Callable[[str], None], tuple[str]]:
        return (os.mkdir, (self.marker,))


@pytest.mark.parametrize("protocol", [2, 4, 5])
def test_pickle_payload_is_rejected_without_unpickling(
    file_store: Store, tmp_path: Path, protocol: int
) -> None:
    marker = tmp_path / "pwned"
    payload = pickle.dumps({"conv1.weight": _Exploit(marker)}, protocol=protocol)
    save_update(file_store)
    replace_blob(file_store, payload)  # manifest sha256/size fixed up: only the content can tell
    with pytest.raises(CheckpointCorrupt, match="is not safetensors"):
        load_checkpoint(file_store, KEY)
    with pytest.raises(CheckpointCorrupt):
        decode_arrays(payload, where="payload")
    assert not marker.exists()


def test_numpy_pickle_file_is_rejected(file_store: Store, tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    npy = tmp_path / "evil.npy"
    np.save(npy, np.array([_Exploit(marker)], dtype=object), allow_pickle=True)
    save_update(file_store)
    replace_blob(file_store, npy.read_bytes())
    with pytest.raises(CheckpointCorrupt, match=re.escape(file_store.key_uri(BLOB))):
        load_checkpoint(file_store, KEY)
    assert not marker.exists()


@pytest.mark.parametrize("bad_value", [np.nan, np.inf, -np.inf])
def test_non_finite_values_are_refused(store: Store, bad_value: float) -> None:
    arrays = model_arrays()
    arrays["fc.weight"][2, 3] = bad_value
    arrays["fc.weight"][4, 5] = bad_value
    save_update(store, arrays)
    with pytest.raises(CheckpointCorrupt) as info:
        load_checkpoint(store, KEY)
    message = str(info.value)
    assert "fc.weight" in message
    assert "2 non-finite" in message
    assert store.key_uri(BLOB) in message
    ckpt = load_checkpoint(store, KEY, require_finite=False)
    assert np.count_nonzero(~np.isfinite(ckpt.arrays["fc.weight"])) == 2


def test_non_finite_float16_is_refused(file_store: Store) -> None:
    save_update(file_store, {"h": np.array([1.0, np.inf], np.float16), "i": np.array([1], np.int8)})
    with pytest.raises(CheckpointCorrupt, match=r"1 non-finite .* in h"):
        load_checkpoint(file_store, KEY)


# --------------------------------------------------------------------------- corrupt manifests


def _set(field: str, value: Any) -> Callable[[dict[str, Any]], Any]:
    def mutate(doc: dict[str, Any]) -> dict[str, Any]:
        doc[field] = value
        return doc

    return mutate


def _drop(field: str) -> Callable[[dict[str, Any]], Any]:
    def mutate(doc: dict[str, Any]) -> dict[str, Any]:
        del doc[field]
        return doc

    return mutate


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda doc: b"not json {", "expected JSON"),
        (lambda doc: b"\xff\xfe", "expected JSON"),
        (lambda doc: [doc], "expected a JSON object, found list"),
        (_set("format", "argofl.checkpoint/v0"), "format is 'argofl.checkpoint/v0'"),
        (_drop("format"), "format is None"),
        (_drop("sha256"), r"missing \['sha256'\]"),
        (_set("surprise", 1), r"unknown \['surprise'\]"),
        (_set("round", -1), "round is -1"),
        (_set("round", "3"), "round is '3'"),
        (_set("round", True), "round is True"),
        (_set("round", 3.0), "round is 3.0"),
        (_set("examples", -600), "examples is -600"),
        (_set("size", None), "size is None"),
        (_set("client", 3), "client is 3"),
        (_set("metrics", {"loss": "low"}), "metric loss is 'low'"),
        (_set("metrics", {"loss": True}), "metric loss is True"),
        (_set("metrics", [0.1]), "metrics is"),
        (lambda doc: json.dumps(doc).replace('"loss": 0.25', '"loss": NaN').encode(), "NaN"),
        (lambda doc: json.dumps(doc).replace('"loss": 0.25', '"loss": Infinity').encode(), "Infinity"),
        (lambda doc: json.dumps(doc).replace('"loss": 0.25', '"loss": 1e999').encode(), "metric loss is inf"),
        (_set("sha256", "ab12"), "sha256 is 'ab12'"),
        (_set("sha256", "G" * 64), "sha256 is"),
        (_set("extra", {"k": 1}), "extra is"),
        (_set("tensors", []), "tensors is"),
        (_set("tensors", {"w": {"dtype": "float128", "shape": [1]}}), "tensor 'w'"),
        (_set("tensors", {"w": {"dtype": "float32", "shape": [-1]}}), "tensor 'w'"),
        (_set("tensors", {"w": {"dtype": "float32"}}), "tensor 'w'"),
        (lambda doc: json.dumps(doc)[:-1].encode() + b', "round": 4}', "duplicate key 'round'"),
    ],
)
def test_corrupt_manifest(file_store: Store, mutate: Callable[[dict[str, Any]], Any], message: str) -> None:
    save_update(file_store)
    changed = mutate(json.loads(file_store.get_bytes(MANIFEST)))
    file_store.put_bytes(MANIFEST, changed if isinstance(changed, bytes) else json.dumps(changed).encode())
    uri = file_store.key_uri(MANIFEST)
    for load in (load_manifest, load_checkpoint):
        with pytest.raises(CheckpointCorrupt, match=message) as info:
            load(file_store, KEY)
        assert str(info.value).startswith(f"invalid checkpoint manifest {uri}: ")
        assert "\n" not in str(info.value)


def test_manifest_without_extra_is_accepted(file_store: Store) -> None:
    save_update(file_store)
    doc = json.loads(file_store.get_bytes(MANIFEST))
    del doc["extra"]
    file_store.put_bytes(MANIFEST, json.dumps(doc).encode())
    assert load_checkpoint(file_store, KEY).manifest.extra == {}


# --------------------------------------------------------------------------- expected specs (like)


def test_like_equal_specs_pass(store: Store) -> None:
    save_update(store)
    ckpt = load_checkpoint(store, KEY, like=specs_of(model_arrays(seed=9)))
    assert_same_arrays(ckpt.arrays, model_arrays())


def test_like_shape_mismatch_names_tensor_and_shapes(store: Store) -> None:
    arrays = model_arrays()
    arrays["conv1.weight"] = np.zeros((16, 1, 5, 5), np.float32)
    save_update(store, arrays)
    with pytest.raises(CheckpointMismatch) as info:
        load_checkpoint(store, KEY, like=specs_of(model_arrays()))
    assert str(info.value) == (
        f"update from client 3 at {store.key_uri(BLOB)} has conv1.weight of shape (16, 1, 5, 5), "
        "expected (32, 1, 5, 5)"
    )


def test_like_is_checked_before_the_blob_is_read(file_store: Store) -> None:
    arrays = model_arrays()
    arrays["conv1.weight"] = np.zeros((16, 1, 5, 5), np.float32)
    save_update(file_store, arrays)
    file_store.delete(BLOB)
    with pytest.raises(CheckpointMismatch, match=r"conv1\.weight"):
        load_checkpoint(file_store, KEY, like=specs_of(model_arrays()))


def test_like_dtype_mismatch(file_store: Store) -> None:
    save_checkpoint(file_store, KEY, {"w": np.zeros(3, np.float64), "v": np.zeros(2, np.float64)}, round=1)
    like = {"w": TensorSpec("float32", (3,)), "v": TensorSpec("float32", (2,))}
    with pytest.raises(CheckpointMismatch) as info:
        load_checkpoint(file_store, KEY, like=like)
    assert str(info.value) == (
        f"checkpoint {file_store.key_uri(BLOB)} has v of dtype float64, expected float32 "
        "(1 more tensors differ)"
    )


def test_like_lists_missing_and_unexpected_names(file_store: Store) -> None:
    arrays = {f"layer{i}.weight": np.zeros(1, np.float32) for i in range(3)}
    save_update(file_store, {**arrays, "extra.a": np.zeros(1, np.float32)})
    like = specs_of({**arrays, **{f"head{i}.weight": np.zeros(1, np.float32) for i in range(8)}})
    with pytest.raises(CheckpointMismatch) as info:
        load_checkpoint(file_store, KEY, like=like)
    message = str(info.value)
    assert message.startswith(
        f"update from client 3 at {file_store.key_uri(BLOB)} has different tensor names"
    )
    assert "missing head0.weight, head1.weight, head2.weight, head3.weight, head4.weight (+3 more)" in message
    assert "unexpected extra.a" in message


def test_supported_dtypes_all_round_trip(file_store: Store) -> None:
    arrays = {name: np.arange(4).astype(name) for name in sorted(SUPPORTED_DTYPES)}
    save_checkpoint(file_store, "all", arrays, round=0)
    assert_same_arrays(load_checkpoint(file_store, "all").arrays, arrays)
