"""Aggregation throughput and peak memory of the real `argofl step aggregate` process.

Writes a run with N client updates of a P-parameter model to a file:// store, then runs the aggregate
step as a subprocess and prints: GB/s of update data folded, wall time, peak RSS (and peak RSS in
units of one model, which should stay a small constant however many updates there are).

    python benchmarks/bench_aggregate.py [--updates 50] [--params 25000000]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from argofl.steps import tracking  # noqa: E402
from argofl.steps.checkpoint import save_checkpoint  # noqa: E402
from argofl.steps.runinfo import RunLayout, RunRecord, write_json  # noqa: E402
from argofl.steps.settings import Settings  # noqa: E402
from argofl.steps.store import FileStore  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--updates", type=int, default=50)
    parser.add_argument("--params", type=int, default=25_000_000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="argofl-bench-") as tmp:
        root = Path(tmp)
        store = FileStore(root / "store")
        os.environ["ARGOFL_STORE"] = store.uri
        os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{root / 'mlflow.db'}"
        layout = RunLayout("bench/run")
        settings = Settings.from_mapping(
            {"experiment": "bench", "clients": args.updates, "min_clients": args.updates, "rounds": 1}
        )
        rows = 1000
        shapes = {"dense.weight": (rows, args.params // rows - 10), "dense.bias": (rows * 10,)}
        rng = np.random.default_rng(0)
        model = {k: rng.standard_normal(s, dtype=np.float32) for k, s in shapes.items()}
        model_bytes = sum(a.nbytes for a in model.values())
        save_checkpoint(store, layout.global_key(0), model, round=0)
        run_id = tracking.create_run("bench", run_name="run", params={}, tags={}).run_id
        store.put_bytes(layout.record_key, RunRecord(settings, run_id, "run", "uid", time.time()).to_json())
        write_json(store, layout.plan_key(1), {"round": 1, "clients": [str(c) for c in range(args.updates)]})
        t0 = time.perf_counter()
        for c in range(args.updates):
            model["dense.bias"][0] = c
            save_checkpoint(
                store,
                layout.update_key(1, str(c)),
                model,
                round=1,
                client=str(c),
                examples=100 + c,
                metrics={"loss": 1.0, "accuracy": 0.5},
            )
        write_s = time.perf_counter() - t0
        argofl = Path(sys.executable).parent / "argofl"
        t0 = time.perf_counter()
        subprocess.run(
            [str(argofl), "step", "aggregate", "--run-key", "bench/run", "--round", "1"],
            check=True,
            stderr=subprocess.DEVNULL,
        )
        wall = time.perf_counter() - t0
        peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024
        total = model_bytes * args.updates
        print(
            json.dumps(
                {
                    "updates": args.updates,
                    "params": sum(int(np.prod(s)) for s in shapes.values()),
                    "model_mb": round(model_bytes / 1e6, 1),
                    "update_data_gb": round(total / 1e9, 2),
                    "write_updates_s": round(write_s, 1),
                    "aggregate_step_wall_s": round(wall, 2),
                    "aggregate_gb_per_s": round(total / 1e9 / wall, 3),
                    "aggregate_peak_rss_mb": round(peak / 1e6, 1),
                    "aggregate_peak_rss_models": round(peak / model_bytes, 2),
                },
                indent=2,
            )
        )


if __name__ == "__main__":
    main()
