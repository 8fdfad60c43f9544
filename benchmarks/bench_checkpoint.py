"""Checkpoint throughput: encode/decode and save/load through FileStore (and S3 on moto with --s3).

    .venv/bin/python benchmarks/bench_checkpoint.py [--mb 64] [--repeat 3] [--s3]

Prints one line per operation: best wall time over ``--repeat`` runs and MB/s.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from argofl.steps.checkpoint import decode_arrays, encode_arrays, load_checkpoint, save_checkpoint  # noqa: E402
from argofl.steps.store import FileStore, Store, open_store  # noqa: E402


def model(total_mb: int) -> dict[str, np.ndarray]:
    """Float32 layers adding up to about ``total_mb`` MB, plus biases."""
    rng = np.random.default_rng(0)
    per_layer = 4 * 1024 * 1024  # floats: 16 MB
    layers = max(1, total_mb * 1024 * 1024 // (per_layer * 4))
    arrays: dict[str, np.ndarray] = {}
    for i in range(layers):
        arrays[f"layer{i}.weight"] = rng.standard_normal((2048, per_layer // 2048), dtype=np.float32)
        arrays[f"layer{i}.bias"] = rng.standard_normal(2048, dtype=np.float32)
    return arrays


def best(fn: Callable[[], object], repeat: int) -> float:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def report(what: str, seconds: float, nbytes: int) -> None:
    print(f"{what:<28} {seconds * 1000:9.1f} ms  {nbytes / seconds / 1e6:9.1f} MB/s")


def bench_store(label: str, store: Store, arrays: dict[str, np.ndarray], nbytes: int, repeat: int) -> None:
    counter = iter(range(10**6))
    report(
        f"save ({label})",
        best(lambda: save_checkpoint(store, f"bench/{next(counter)}", arrays, round=0), repeat),
        nbytes,
    )
    report(f"load+verify ({label})", best(lambda: load_checkpoint(store, "bench/0"), repeat), nbytes)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mb", type=int, default=64, help="model size in MB (default 64)")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--s3", action="store_true", help="also measure S3Store against a local moto_server")
    args = parser.parse_args()

    arrays = model(args.mb)
    nbytes = sum(a.nbytes for a in arrays.values())
    print(f"model: {len(arrays)} tensors, {nbytes / 1e6:.1f} MB")
    blob = encode_arrays(arrays)
    report("encode", best(lambda: encode_arrays(arrays), args.repeat), nbytes)
    report("sha256", best(lambda: hashlib.sha256(blob).hexdigest(), args.repeat), nbytes)
    report("decode (validated)", best(lambda: decode_arrays(blob, where="bench"), args.repeat), nbytes)
    with tempfile.TemporaryDirectory(prefix="argofl-bench-") as tmp:
        bench_store("file", FileStore(tmp), arrays, nbytes, args.repeat)
    if args.s3:
        from servers import start_moto_server

        with start_moto_server() as server:
            os.environ.update(server.env)
            bench_store("s3/moto", open_store("s3://argofl-bench"), arrays, nbytes, args.repeat)


if __name__ == "__main__":
    main()
