"""A 1,000-client round, flat and with a tree of aggregate tasks: the round's wall time, the aggregator's
time and its peak RSS.

Runs CONFIG with `argofl run` (local executor, file:// store) twice with the same `-p` values — once as
configured (flat aggregation unless it sets `cluster.aggregate_fanin`) and once with
`cluster.aggregate_fanin: --fanin` and `aggregate_levels: --levels` — and reads each run's status for
the round node's and the aggregate (and combine) nodes' wall times. The aggregator's peak RSS is
measured by running `argofl step aggregate` again on the finished round (its global checkpoint and
report removed first) as a child process whose `ru_maxrss` is its own. Defaults: 1,000 clients in pods
of 100, one round, 60 examples a client.

    python benchmarks/bench_clients.py [CONFIG] [-p clients=1000 ...] [--fanin 4] [--levels 1]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
if str(ROOT) not in sys.path:  # runnable without installing argofl
    sys.path.insert(0, str(ROOT))

DEFAULT_PARAMS = [
    "clients=1000",
    "clients-per-pod=100",
    "rounds=1",
    "min-clients=800",
    "data-limit=60000",
    "experiment=bench-clients",
]


def _ts(value: str) -> float:
    return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()


def _seconds(node: dict[str, Any]) -> float:
    return _ts(node["finishedAt"]) - _ts(node["startedAt"])


def run_once(config: Path, params: list[str], runs: Path) -> dict[str, float]:
    """`argofl run` of ``config``: wall seconds of the whole run, the round, aggregate and combines."""
    cmd = [str(BIN / "argofl"), "run", str(config), "--runs-dir", str(runs)]
    for param in params:
        cmd += ["-p", param]
    t0 = time.perf_counter()
    done = subprocess.run(cmd, capture_output=True, text=True, check=False)
    wall = time.perf_counter() - t0
    if done.returncode != 0:
        raise SystemExit(f"argofl run {config} failed ({done.returncode}): {done.stderr[-2000:]}")
    (status_file,) = [
        p / "status.json" for p in (runs / "workflows").iterdir() if (p / "status.json").is_file()
    ]
    nodes = json.loads(status_file.read_text())["nodes"].values()
    pods = [n for n in nodes if n.get("type") == "Pod" and n.get("finishedAt")]
    rounds = [n for n in nodes if n.get("templateName") == "round" and n.get("finishedAt")]
    combines = [n for n in pods if n.get("templateName") == "combine"]
    (aggregate,) = [n for n in pods if n.get("templateName") == "aggregate"]
    return {
        "run_wall_s": round(wall, 1),
        "round_wall_s": round(_seconds(rounds[0]), 1),
        "aggregate_node_s": round(_seconds(aggregate), 2),
        "combine_tasks": len(combines),
        "combine_node_max_s": round(max((_seconds(n) for n in combines), default=0.0), 2),
    }


def aggregator_peak(runs: Path) -> dict[str, float]:
    """Re-run round 1's aggregate step on the finished run: its wall seconds and peak RSS (MB)."""
    from argofl.steps import round_report
    from argofl.steps.runinfo import RunLayout
    from argofl.steps.store import FileStore

    store_dir = runs / "store"
    (blob,) = store_dir.rglob("round-0001/global.safetensors")
    run_key = blob.parent.parent.relative_to(store_dir).as_posix()
    layout, store = RunLayout(run_key), FileStore(store_dir)
    for key in (layout.global_key(1) + ".json", layout.global_key(1) + ".safetensors"):
        store.delete(key)
    store.delete(round_report.report_key(layout, 1))
    env = {**os.environ, "ARGOFL_STORE": store.uri}
    t0 = time.perf_counter()
    step = subprocess.Popen(
        [str(BIN / "argofl"), "step", "aggregate", "--run-key", run_key, "--round", "1"],
        env=env,
        stderr=subprocess.DEVNULL,
    )
    _, status, usage = os.wait4(step.pid, 0)
    wall = time.perf_counter() - t0
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"argofl step aggregate on {runs} failed with status {status}")
    return {"aggregate_step_s": round(wall, 2), "aggregate_peak_rss_mib": round(usage.ru_maxrss / 1024, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("config", nargs="?", default=str(ROOT / "configs" / "fedavg-fmnist-torch.yaml"))
    parser.add_argument("-p", "--param", action="append", default=[], help="NAME=VALUE over the defaults")
    parser.add_argument("--fanin", type=int, default=4, help="cluster.aggregate_fanin of the tree run")
    parser.add_argument("--levels", type=int, default=1, help="cluster.aggregate_levels of the tree run")
    args = parser.parse_args()
    given = {p.split("=", 1)[0] for p in args.param}
    params = [p for p in DEFAULT_PARAMS if p.split("=", 1)[0] not in given] + args.param
    doc = yaml.safe_load(Path(args.config).read_text())
    results: dict[str, dict[str, float]] = {}
    with tempfile.TemporaryDirectory(prefix="argofl-bench-clients-") as tmp:
        tree = {
            "aggregate_fanin": args.fanin,
            **({"aggregate_levels": args.levels} if args.levels > 1 else {}),
        }
        levels = f"-levels-{args.levels}" if args.levels > 1 else ""
        for name, cluster in (("flat", {"aggregate_fanin": 0}), (f"tree-fanin-{args.fanin}{levels}", tree)):
            config = Path(tmp) / f"{name}.yaml"
            config.write_text(yaml.safe_dump({**doc, "cluster": {**doc.get("cluster", {}), **cluster}}))
            runs = Path(tmp) / name
            results[name] = {**run_once(config, params, runs), **aggregator_peak(runs)}
    print(json.dumps({"params": params, **results}, indent=2))


if __name__ == "__main__":
    main()
