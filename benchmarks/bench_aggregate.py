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


def _shapes(params: int) -> dict[str, tuple[int, ...]]:
    rows = 1000
    return {"dense.weight": (rows, params // rows - 10), "dense.bias": (rows * 10,)}


def prepare(root: Path, updates: int, params: int) -> None:
    """Write the run (global checkpoint, MLflow run, plan, updates) below ``root``."""
    store = FileStore(root / "store")
    layout = RunLayout("bench/run")
    settings = Settings.from_mapping(
        {"experiment": "bench", "clients": updates, "min_clients": updates, "rounds": 1}
    )
    rng = np.random.default_rng(0)
    model = {k: rng.standard_normal(s, dtype=np.float32) for k, s in _shapes(params).items()}
    save_checkpoint(store, layout.global_key(0), model, round=0)
    run_id = tracking.create_run("bench", run_name="run", params={}, tags={}).run_id
    store.put_bytes(layout.record_key, RunRecord(settings, run_id, "run", "uid", time.time()).to_json())
    write_json(store, layout.plan_key(1), {"round": 1, "clients": [str(c) for c in range(updates)]})
    for c in range(updates):
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--updates", type=int, default=50)
    parser.add_argument("--params", type=int, default=25_000_000)
    parser.add_argument("--prepare", type=Path, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.prepare is not None:
        prepare(args.prepare, args.updates, args.params)
        return
    with tempfile.TemporaryDirectory(prefix="argofl-bench-") as tmp:
        root = Path(tmp)
        os.environ["ARGOFL_STORE"] = FileStore(root / "store").uri
        os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{root / 'mlflow.db'}"
        # written by a separate process: a child's peak RSS (ru_maxrss) counts the memory of the
        # process that started it, so this one stays small (no model, no MLflow) to measure the step
        sizes = ["--updates", str(args.updates), "--params", str(args.params)]
        t0 = time.perf_counter()
        subprocess.run([sys.executable, __file__, "--prepare", str(root), *sizes], check=True)
        write_s = time.perf_counter() - t0
        model_bytes = sum(int(np.prod(s)) * 4 for s in _shapes(args.params).values())
        argofl = Path(sys.executable).parent / "argofl"
        t0 = time.perf_counter()
        step = subprocess.Popen(
            [str(argofl), "step", "aggregate", "--run-key", "bench/run", "--round", "1"],
            stderr=subprocess.DEVNULL,
        )
        _, status, usage = os.wait4(step.pid, 0)  # this child's own usage (the writer's is apart)
        wall = time.perf_counter() - t0
        step.returncode = os.waitstatus_to_exitcode(status)
        if step.returncode != 0:
            raise SystemExit(f"argofl step aggregate failed with status {status}")
        peak = usage.ru_maxrss * 1024
        cpu = usage.ru_utime + usage.ru_stime
        total = model_bytes * args.updates
        print(
            json.dumps(
                {
                    "updates": args.updates,
                    "params": sum(int(np.prod(s)) for s in _shapes(args.params).values()),
                    "model_mb": round(model_bytes / 1e6, 1),
                    "update_data_gb": round(total / 1e9, 2),
                    "write_updates_s": round(write_s, 1),
                    "aggregate_step_wall_s": round(wall, 2),
                    "aggregate_gb_per_s": round(total / 1e9 / wall, 3),
                    "aggregate_cpu_s": round(cpu, 2),
                    "load_average_1min": round(os.getloadavg()[0], 2),
                    "aggregate_peak_rss_mb": round(peak / 1e6, 1),
                    "aggregate_peak_rss_models": round(peak / model_bytes, 2),
                },
                indent=2,
            )
        )


if __name__ == "__main__":
    main()
