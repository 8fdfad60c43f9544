"""Container start-up per step, and the flagship's wall time under both local runtimes.

Start-up: the median seconds of ``argofl step train --help`` as a host process and in a fresh container
of the step image (``docker run --rm``; the difference is what a container adds to every step). Then
the same config runs twice with ``argofl run`` — ``--runtime process`` and ``--runtime docker`` — and
the wall times and median pod durations print, with whether the global checkpoints are byte-identical.
Needs a Docker engine and ``make images``.

    python benchmarks/bench_runtimes.py [CONFIG] [-p rounds=2 ...] [--repeat 5]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ARGOFL = str(Path(sys.executable).with_name("argofl"))
IMAGE = "argofl/step-torch-cpu:0.1.0"


def _ts(value: str) -> float:
    return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()


def _median_seconds(argv: list[str], repeat: int) -> float:
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        subprocess.run(argv, check=True, capture_output=True)
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def container_overhead(repeat: int) -> dict[str, float]:
    """Median seconds of a step's start-up (``--help``) on the host and in a container of the step image."""
    step = ["argofl", "step", "train", "--help"]
    host = _median_seconds([ARGOFL, *step[1:]], repeat)
    docker = _median_seconds(
        ["docker", "run", "--rm", "--network", "none", "--read-only", IMAGE, *step], repeat
    )
    return {
        "host_step_s": round(host, 3),
        "container_step_s": round(docker, 3),
        "added_s": round(docker - host, 3),
    }


def run(config: str, params: list[str], runtime: str, runs_dir: Path) -> dict[str, object]:
    """One ``argofl run``: wall seconds, pod start-up medians and the global checkpoints' digests."""
    argv = [ARGOFL, "run", config, "--runs-dir", str(runs_dir), "--runtime", runtime]
    for param in params:
        argv += ["-p", param]
    started = time.perf_counter()
    subprocess.run(argv, check=True, cwd=ROOT, stdout=subprocess.DEVNULL)
    wall = time.perf_counter() - started
    (run_dir,) = (runs_dir / "workflows").iterdir()
    status = json.loads((run_dir / "status.json").read_text())
    pods = [n for n in status["nodes"].values() if n.get("type") == "Pod" and n.get("finishedAt")]
    checkpoints = sorted((runs_dir / "store").glob("*/*/round-*/global.safetensors"))
    return {
        "runtime": runtime,
        "wall_s": round(wall, 1),
        "pods": len(pods),
        "median_pod_s": round(statistics.median(_ts(n["finishedAt"]) - _ts(n["startedAt"]) for n in pods), 2),
        "globals": [hashlib.sha256(p.read_bytes()).hexdigest()[:16] for p in checkpoints],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("config", nargs="?", default="configs/fedavg-fmnist-torch.yaml")
    parser.add_argument("-p", dest="params", action="append", default=[], metavar="NAME=VALUE")
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    print(json.dumps(container_overhead(args.repeat)))
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for runtime in ("process", "docker"):
            results.append(run(args.config, args.params, runtime, Path(tmp) / runtime))
            print(json.dumps(results[-1]))
    same = results[0]["globals"] == results[1]["globals"]
    print(
        f"flagship wall: process {results[0]['wall_s']} s, docker {results[1]['wall_s']} s; median pod: "
        f"process {results[0]['median_pod_s']} s, docker {results[1]['median_pod_s']} s; "
        f"checkpoints byte-identical: {same}"
    )


if __name__ == "__main__":
    main()
