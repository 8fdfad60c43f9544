"""The aggregate step's streaming path: updates verified in one pass (the same checks and messages as
``load_checkpoint``), folded chunk by chunk into bytes identical to a plain reference fold, with
memory that stays about the size of the float64 sums however many updates there are."""

from __future__ import annotations

import hashlib
import json
import time
import tracemalloc
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from argofl.steps import checkpoint_stream, step_aggregate, strategies
from argofl.steps.checkpoint import (
    CheckpointError,
    TensorSpec,
    encode_arrays,
    encode_to_file,
    load_checkpoint,
    save_checkpoint,
)
from argofl.steps.checkpoint_stream import open_streamed
from argofl.steps.runinfo import RunLayout, RunRecord, write_json
from argofl.steps.settings import Settings
from argofl.steps.store import FileStore, Store
from argofl.steps.strategies import ClientUpdate, FedAvg, WeightedAverage
from tests.stores import backend_store  # noqa: F401  (fixture: store)

KEY = "exp/run/round-0001/updates/3"
BLOB, MANIFEST = KEY + ".safetensors", KEY + ".json"


@pytest.fixture
def small_chunks(monkeypatch: pytest.MonkeyPatch) -> None:
    """Chunks of a few elements, so every tensor is read and folded across chunk boundaries."""
    monkeypatch.setattr(checkpoint_stream, "READ_BYTES", 24)
    monkeypatch.setattr(strategies, "_CHUNK", 5)


def model(seed: int) -> dict[str, np.ndarray]:
    """Every supported dtype, a scalar and an empty tensor."""
    rng = np.random.default_rng(seed)
    return {
        "w32": rng.standard_normal((7, 3)).astype(np.float32),
        "w64": rng.standard_normal(11),
        "w16": rng.standard_normal(13).astype(np.float16),
        "count": np.array(seed * 7 + 3, dtype=np.int64),
        "i8": rng.integers(-128, 127, 9, dtype=np.int8),
        "i16": rng.integers(-1000, 1000, (3, 3), dtype=np.int16),
        "i32": rng.integers(-(10**6), 10**6, 4, dtype=np.int32),
        "u8": rng.integers(0, 255, 5, dtype=np.uint8),
        "mask": rng.random(6) > 0.5,
        "empty": np.zeros((0, 3), dtype=np.float32),
    }


def reference_fold(updates: list[tuple[dict[str, np.ndarray], int]]) -> dict[str, np.ndarray]:
    """FedAvg written plainly: float64 sums in order, divided by the total, rounded for integers."""
    total = float(sum(weight for _, weight in updates))
    out = {}
    for name, first in updates[0][0].items():
        acc = np.zeros(first.shape, dtype=np.float64)
        for arrays, weight in updates:
            acc = acc + arrays[name].astype(np.float64) * float(weight)
        mean = acc / total
        if np.issubdtype(first.dtype, np.integer) or first.dtype == np.bool_:
            mean = np.rint(mean)
        out[name] = mean.astype(first.dtype)
    return out


def test_streamed_arrays_equal_the_loaded_ones(store: Store, tmp_path: Path, small_chunks: None) -> None:
    save_checkpoint(store, KEY, model(1), round=1, client="3", examples=5)
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    manifest, arrays = open_streamed(store, KEY, scratch=scratch)
    try:
        assert manifest == load_checkpoint(store, KEY).manifest
        assert {name: (dtype.name, shape) for name, (dtype, shape) in arrays.layout().items()} == {
            name: (a.dtype.name, a.shape) for name, a in model(1).items()
        }
        for name, want in model(1).items():
            assert arrays[name].dtype == want.dtype
            assert arrays[name].tobytes() == want.tobytes()
            pieces = [(start, values.copy()) for start, values in arrays.chunks(name, 4)]
            assert [start for start, _ in pieces] == list(range(0, want.size, 4))
            joined = np.concatenate([values for _, values in pieces]) if pieces else np.zeros(0)
            assert joined.tobytes() == want.tobytes()
    finally:
        arrays.close()
    assert list(scratch.iterdir()) == []  # a download into scratch is deleted on close


def _flip_last_byte(blob: bytes) -> tuple[bytes, bool]:
    return blob[:-1] + bytes([blob[-1] ^ 1]), False


def _truncate(blob: bytes) -> tuple[bytes, bool]:
    return blob[: len(blob) // 2], False


def _other_shape(blob: bytes) -> tuple[bytes, bool]:
    arrays = model(1)
    arrays["w32"] = np.zeros((3, 7), np.float32)
    return encode_arrays(arrays), True


def _other_names(blob: bytes) -> tuple[bytes, bool]:
    arrays = model(1)
    arrays["backdoor"] = arrays.pop("mask")
    return encode_arrays(arrays), True


def _non_finite(blob: bytes) -> tuple[bytes, bool]:
    arrays = model(1)
    arrays["w64"][[2, 9]] = np.nan
    arrays["w16"][0] = np.inf
    return encode_arrays(arrays), True


def _bad_header(blob: bytes) -> tuple[bytes, bool]:
    text = b'{"w32": {"dtype": "F32", "shape": [1], "data_offsets": [0, 8]}}'
    return len(text).to_bytes(8, "little") + text + bytes(8), True


def _header_too_long(blob: bytes) -> tuple[bytes, bool]:
    return (10**9).to_bytes(8, "little") + blob[8:], True


def _short(blob: bytes) -> tuple[bytes, bool]:
    return b"\x01\x02", True


@pytest.mark.parametrize(
    "tamper",
    [
        _flip_last_byte,
        _truncate,
        _other_shape,
        _other_names,
        _non_finite,
        _bad_header,
        _header_too_long,
        _short,
    ],
)
def test_streamed_refuses_what_load_refuses_with_the_same_message(
    tmp_path: Path, small_chunks: None, tamper: Callable[[bytes], tuple[bytes, bool]]
) -> None:
    store = FileStore(tmp_path / "store")
    save_checkpoint(store, KEY, model(1), round=1, client="3", examples=5)
    blob, fix_manifest = tamper(store.get_bytes(BLOB))
    store.put_bytes(BLOB, blob)
    if fix_manifest:
        doc = json.loads(store.get_bytes(MANIFEST))
        doc["sha256"], doc["size"] = hashlib.sha256(blob).hexdigest(), len(blob)
        store.put_bytes(MANIFEST, json.dumps(doc).encode())
    with pytest.raises(CheckpointError) as loaded:
        load_checkpoint(store, KEY)
    with pytest.raises(CheckpointError) as streamed:
        open_streamed(store, KEY, scratch=tmp_path)
    assert (type(streamed.value), str(streamed.value)) == (type(loaded.value), str(loaded.value))


def test_streamed_checks_like_and_size_before_reading(tmp_path: Path) -> None:
    store = FileStore(tmp_path / "store")
    save_checkpoint(store, KEY, model(1), round=1, client="3", examples=5)
    like = {name: TensorSpec(a.dtype.name, a.shape) for name, a in model(1).items()}
    like["w32"] = TensorSpec("float32", (3, 7))
    cases: list[tuple[dict[str, Any], str]] = [
        ({"like": like}, "w32 of shape (7, 3), expected (3, 7)"),
        ({"blob_size": 10}, "its tensors encode to 10; not read"),
    ]
    for kwargs, message in cases:
        with pytest.raises(CheckpointError) as loaded:
            load_checkpoint(store, KEY, **kwargs)
        with pytest.raises(CheckpointError) as streamed:
            open_streamed(store, KEY, scratch=tmp_path, **kwargs)
        assert str(streamed.value) == str(loaded.value)
        assert message in str(streamed.value)


def test_streamed_fold_is_byte_identical_to_a_reference_fold(tmp_path: Path, small_chunks: None) -> None:
    store = FileStore(tmp_path / "store")
    updates = [(model(seed), 10 + 7 * seed) for seed in range(5)]
    for seed, (arrays, weight) in enumerate(updates):
        save_checkpoint(store, f"u/{seed}", arrays, round=1, client=str(seed), examples=weight)
    want = reference_fold(updates)
    plain = strategies.fedavg(updates)
    mean = WeightedAverage()
    for seed, (_, weight) in enumerate(updates):
        _, streamed = open_streamed(store, f"u/{seed}", scratch=tmp_path)
        mean.add(streamed, weight)
        streamed.close()
    folded = mean.result()
    for got in (plain, folded):
        assert encode_arrays(got) == encode_arrays(want)


def test_encoding_to_a_file_gives_the_encoded_bytes(tmp_path: Path) -> None:
    arrays: dict[str, Any] = model(3)
    arrays["strided"] = np.arange(12, dtype=np.float32).reshape(3, 4)[:, ::2]
    arrays["big_endian"] = np.arange(5, dtype=">i4")
    assert encode_to_file(arrays, tmp_path / "blob").read_bytes() == encode_arrays(arrays)


# ------------------------------------------------------------------------ the step, end to end


def _write_round(
    root: Path, monkeypatch: pytest.MonkeyPatch, data_dir: Path, *, params: int, updates: int
) -> RunLayout:
    """A run whose round 1 has ``updates`` client updates of a ``params``-float32 model; no MLflow.
    (The aggregator reads the dataset's labels to bound each client's example count.)"""
    store = FileStore(root / "store")
    monkeypatch.setenv("ARGOFL_STORE", store.uri)
    layout = RunLayout("mem/run")
    settings = Settings.from_mapping(
        {"experiment": "mem", "clients": updates, "min_clients": 1, "rounds": 1, "data_dir": str(data_dir)}
    )
    rng = np.random.default_rng(0)
    arrays = {"w": rng.standard_normal(params - 3, dtype=np.float32), "b": np.zeros(3, np.float32)}
    save_checkpoint(store, layout.global_key(0), arrays, round=0)
    store.put_bytes(layout.record_key, RunRecord(settings, "mlflow-run", "run", "uid", time.time()).to_json())
    write_json(store, layout.plan_key(1), {"round": 1, "clients": [str(c) for c in range(updates)]})
    for c in range(updates):
        arrays["b"][:] = c
        arrays["w"][c] += 1
        save_checkpoint(store, layout.update_key(1, str(c)), arrays, round=1, client=str(c), examples=100 + c)
    return layout


def test_the_step_folds_n_updates_in_about_the_memory_of_its_sums(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fmnist_dir: Path
) -> None:
    """Peak traced memory of the real step over 6 updates of an 8M-float32 model (32 MB): the float64
    sums (2× the model) plus a few MB of buffers; reading whole updates, as before, costs ≥ 3×."""
    params, count = 8_000_000, 6
    layout = _write_round(tmp_path, monkeypatch, fmnist_dir, params=params, updates=count)
    model_bytes = params * 4
    tracemalloc.start()
    try:
        step_aggregate.run(run_key=layout.run_key, round=1)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 2.5 * model_bytes, f"peak {peak / 1e6:.1f} MB for a {model_bytes / 1e6:.0f} MB model"
    store = FileStore(tmp_path / "store")
    got = load_checkpoint(store, layout.global_key(1))
    updates = [(load_checkpoint(store, layout.update_key(1, str(c))).arrays, 100 + c) for c in range(count)]
    assert got.manifest.sha256 == hashlib.sha256(encode_arrays(reference_fold(updates))).hexdigest()


def test_an_update_failing_while_folding_releases_the_read_ahead(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fmnist_dir: Path
) -> None:
    layout = _write_round(tmp_path, monkeypatch, fmnist_dir, params=1000, updates=4)
    opened: list[checkpoint_stream.StreamedArrays] = []
    original = checkpoint_stream.StreamedArrays.__init__

    def recording(self: checkpoint_stream.StreamedArrays, *args: Any, **kwargs: Any) -> None:
        original(self, *args, **kwargs)
        opened.append(self)

    monkeypatch.setattr(checkpoint_stream.StreamedArrays, "__init__", recording)

    def failing(self: FedAvg, global_weights: Any, updates: Any, state: Any = None) -> Any:
        for update in updates:
            if update.client == "1":
                raise strategies.AggregationError("boom")
            assert isinstance(update, ClientUpdate)
        return None

    monkeypatch.setattr(FedAvg, "aggregate", failing)
    with pytest.raises(strategies.AggregationError, match="round 1: boom"):
        step_aggregate.run(run_key=layout.run_key, round=1)
    assert len(opened) >= 3  # the global, update 0, update 1 (and update 2, read ahead)
    assert all(arrays._fd == -1 for arrays in opened), "every opened blob is closed"
