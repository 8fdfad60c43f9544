"""Wall time per round and the share of it that is orchestration, plus step process start-up time.

Runs a config with `argofl run` (local executor, file:// store, local MLflow), then reads the run's
Argo-shaped status: for each round, wall time of the round node, and the time spent inside client
training (reported by each train step); orchestration = everything else (process start-up, imports,
data loading, checkpoint I/O, aggregation, evaluation, scheduling), computed as
1 - (training seconds / parallelism) / round wall time.

    python benchmarks/bench_rounds.py [CONFIG] [-p rounds=2 ...] [--parallelism 2]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def _ts(value: str) -> float:
    return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()


def startup_times(repeat: int = 5) -> dict[str, float]:
    """Median seconds for step-process start-up pieces."""
    cases = {
        "argofl_step_help_s": [str(BIN / "argofl"), "step", "train", "--help"],
        "import_torch_backend_s": [
            sys.executable,
            "-c",
            "from steps.frameworks import get_backend; get_backend('torch')",
        ],
        "import_mlflow_s": [sys.executable, "-c", "import mlflow"],
        "load_fmnist_train_s": [
            sys.executable,
            "-c",
            "from steps.data import load_dataset; load_dataset('fashion-mnist', 'train')",
        ],
    }
    out = {}
    for name, cmd in cases.items():
        runs = []
        for _ in range(repeat):
            t0 = time.perf_counter()
            subprocess.run(cmd, check=True, capture_output=True, cwd=ROOT)
            runs.append(time.perf_counter() - t0)
        out[name] = round(statistics.median(runs), 3)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("config", nargs="?", default=str(ROOT / "configs" / "fedavg-fmnist-torch.yaml"))
    parser.add_argument("-p", dest="params", action="append", default=[])
    parser.add_argument("--parallelism", type=int, default=2)
    args = parser.parse_args()
    print(json.dumps({"startup": startup_times()}, indent=2), flush=True)
    with tempfile.TemporaryDirectory(prefix="argofl-bench-") as tmp:
        cmd = [
            str(BIN / "argofl"),
            "run",
            args.config,
            "--runs-dir",
            tmp,
            "--parallelism",
            str(args.parallelism),
        ]
        for p in args.params:
            cmd += ["-p", p]
        t0 = time.perf_counter()
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
        total = time.perf_counter() - t0
        status_file = next(Path(tmp, "workflows").glob("*/status.json"))
        status = json.loads(status_file.read_text())
        summary = json.loads((status_file.parent / "summary.json").read_text())
    nodes = status["nodes"].values()
    rounds = []
    for node in sorted(
        (n for n in nodes if n.get("templateName") == "round" and n["type"] == "DAG"),
        key=lambda n: n["startedAt"],
    ):
        wall = _ts(node["finishedAt"]) - _ts(node["startedAt"])
        below = [
            n
            for n in nodes
            if n.get("boundaryID") == node["id"] and n["type"] == "Pod" and n.get("templateName") == "train"
        ]
        train_s = sum(
            float(p["value"])
            for n in below
            for p in n.get("outputs", {}).get("parameters", [])
            if p["name"] == "seconds"
        )
        rounds.append(
            {
                "wall_s": round(wall, 1),
                "training_s": round(train_s, 1),
                "orchestration_share": round(1 - (train_s / args.parallelism) / wall, 3),
            }
        )
    print(
        json.dumps(
            {
                "config": Path(args.config).name,
                "total_wall_s": round(total, 1),
                "final_accuracy": summary["final_accuracy"],
                "rounds": rounds,
                "mean_round_wall_s": round(statistics.mean(r["wall_s"] for r in rounds), 1),
                "mean_orchestration_share": round(
                    statistics.mean(r["orchestration_share"] for r in rounds), 3
                ),
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
