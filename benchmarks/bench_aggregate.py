"""Aggregation throughput and peak memory of the real `argofl step aggregate` process.

Writes a run with N client updates of a P-parameter model to a file:// store, then runs the aggregate
step as a subprocess and prints: GB/s of update data folded, wall time, peak RSS (and peak RSS in
units of one model, which should stay a small constant however many updates there are).

With ``--baseline ARGOFL`` (another installation's ``argofl``, e.g. the previous release's
``.venv/bin/argofl``) the two steps run in turn on the same updates (this one first), ``--runs`` times
each, with the round and the MLflow database reset before every run; it prints the medians of each,
their ratio and whether all their global checkpoints are byte-identical.

    python benchmarks/bench_aggregate.py [--updates 50] [--params 25000000] [--runs 3] [--baseline ARGOFL]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import statistics
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


def run_step(argofl: Path, root: Path) -> dict[str, float | str]:
    """One run of ``argofl step aggregate`` on the prepared round, reset first: wall and CPU seconds,
    peak RSS and the sha256 of the global checkpoint it wrote."""
    layout = RunLayout("bench/run")
    store = FileStore(root / "store")
    for key in (layout.global_key(1) + ".json", layout.global_key(1) + ".safetensors"):
        store.delete(key)
    store.delete(layout.round_prefix(1) + "/aggregate-report.json")
    shutil.copyfile(root / "mlflow.db.prepared", root / "mlflow.db")  # what an earlier run logged goes
    t0 = time.perf_counter()
    step = subprocess.Popen(
        [str(argofl), "step", "aggregate", "--run-key", "bench/run", "--round", "1"],
        stderr=subprocess.DEVNULL,
    )
    _, status, usage = os.wait4(step.pid, 0)  # this child's own usage (the writer's is apart)
    wall = time.perf_counter() - t0
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"{argofl} step aggregate failed with status {status}")
    blob = store.local_path(layout.global_key(1) + ".safetensors")
    digest = hashlib.sha256()
    with open(str(blob), "rb") as f:
        while chunk := f.read(1 << 22):
            digest.update(chunk)
    return {
        "wall": wall,
        "cpu": usage.ru_utime + usage.ru_stime,
        "peak": usage.ru_maxrss * 1024,
        "sha256": digest.hexdigest(),
    }


def summary(runs: list[dict[str, float | str]], total: int, model_bytes: int) -> dict[str, float]:
    """The medians of ``runs`` as the figures this benchmark prints."""

    def median(key: str) -> float:
        return statistics.median(float(r[key]) for r in runs)

    wall, peak = median("wall"), median("peak")
    return {
        "aggregate_step_wall_s": round(wall, 2),
        "aggregate_gb_per_s": round(total / 1e9 / wall, 3),
        "aggregate_cpu_s": round(median("cpu"), 2),
        "aggregate_peak_rss_mb": round(peak / 1e6, 1),
        "aggregate_peak_rss_models": round(peak / model_bytes, 2),
        "runs": len(runs),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--updates", type=int, default=50)
    parser.add_argument("--params", type=int, default=25_000_000)
    parser.add_argument("--runs", type=int, default=1, help="runs of each step; medians are printed")
    parser.add_argument(
        "--baseline",
        type=Path,
        default=None,
        help="another installation's argofl, run in turn on the same data",
    )
    parser.add_argument("--prepare", type=Path, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.prepare is not None:
        prepare(args.prepare, args.updates, args.params)
        return
    if args.baseline is not None and not os.access(args.baseline, os.X_OK):
        raise SystemExit(f"--baseline {args.baseline}: not an executable argofl; nothing was run")
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
        shutil.copyfile(root / "mlflow.db", root / "mlflow.db.prepared")
        model_bytes = sum(int(np.prod(s)) * 4 for s in _shapes(args.params).values())
        total = model_bytes * args.updates
        argofl = Path(sys.executable).parent / "argofl"
        this: list[dict[str, float | str]] = []
        baseline: list[dict[str, float | str]] = []
        for _ in range(max(1, args.runs)):
            this.append(run_step(argofl, root))
            if args.baseline is not None:
                baseline.append(run_step(args.baseline, root))
        report: dict[str, object] = {
            "updates": args.updates,
            "params": sum(int(np.prod(s)) for s in _shapes(args.params).values()),
            "model_mb": round(model_bytes / 1e6, 1),
            "update_data_gb": round(total / 1e9, 2),
            "write_updates_s": round(write_s, 1),
            **summary(this, total, model_bytes),
            "load_average_1min": round(os.getloadavg()[0], 2),
        }
        if baseline:
            mine, theirs = summary(this, total, model_bytes), summary(baseline, total, model_bytes)
            report["baseline"] = {"argofl": str(args.baseline), **theirs}
            report["wall_ratio_to_baseline"] = round(
                mine["aggregate_step_wall_s"] / theirs["aggregate_step_wall_s"], 3
            )
            report["identical_checkpoints"] = len({r["sha256"] for r in this + baseline}) == 1
        print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
