"""Wall time of a run against its compute floor, per round, its share of orchestration, step start-up,
and the size of its node status as Argo stores it.

Runs a config with `argofl run` (local executor, file:// store, local MLflow), then reads the run's
Argo-shaped status: for each round, wall time of the round node, and the time spent inside client
training (reported by each train step); orchestration = everything else (process start-up, imports,
data loading, checkpoint I/O, aggregation, evaluation, scheduling), computed as
1 - (training seconds / parallelism) / round wall time; the median time of each step's pods, and of
a train pod beyond the training it reports. In the same run it measures the compute floor
(the same clients, rounds and hyperparameters trained and evaluated in-process by
`bench_training.py`, `parallelism` workers) just before and just after the run, and prints the run's
wall time as a multiple of their mean beside `--target`, with how far the machine's speed drifted
between the two (on a shared VM it can move by a quarter within minutes: a ratio is only as good as
that drift); and the node status (JSON → gzip → base64, as Argo compresses it) per round, projected to
`--project-clients` single-client pods × `--project-rounds` rounds against Argo's 1 MiB; for a run in
blocks of rounds (`cluster.rounds_per_workflow`), also each Workflow object (parent, child) on its own.

    python benchmarks/bench_rounds.py [CONFIG] [-p rounds=2 ...] [--parallelism 2] [--target 1.15]
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
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
for _path in (ROOT, ROOT / "benchmarks"):  # runnable without installing argofl
    if str(_path) not in sys.path:
        sys.path.insert(0, str(_path))


def _ts(value: str) -> float:
    return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()


def startup_times(repeat: int = 5) -> dict[str, float | None]:
    """Median seconds for step-process start-up pieces."""
    cases = {
        "argofl_step_help_s": [str(BIN / "argofl"), "step", "train", "--help"],
        "import_torch_backend_s": [
            sys.executable,
            "-c",
            "from argofl.steps.frameworks import get_backend; get_backend('torch')",
        ],
        "import_mlflow_s": [sys.executable, "-c", "import mlflow"],
        "load_fmnist_train_s": [
            sys.executable,
            "-c",
            "from argofl.steps.data import load_dataset; load_dataset('fashion-mnist', 'train')",
        ],
    }
    out: dict[str, float | None] = {}
    for name, cmd in cases.items():
        runs = []
        for _ in range(repeat):
            t0 = time.perf_counter()
            subprocess.run(cmd, check=True, capture_output=True, cwd=ROOT)
            runs.append(time.perf_counter() - t0)
        out[name] = round(statistics.median(runs), 3)
    out["forked_argofl_step_train_help_s"] = _forked_startup(repeat)
    return out


def _forked_startup(repeat: int) -> float | None:
    """Median seconds of `argofl step train --help` forked from the local executor's fork server."""
    import os

    from argofl.pipelines.local import forkserver

    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"}
    server = forkserver.ForkServer(env)
    try:
        if not server.wait_ready(300):
            print(f"fork server unavailable: {server.failure}", file=sys.stderr)
            return None
        runs = []
        with tempfile.TemporaryFile() as err:
            for _ in range(repeat):
                t0 = time.perf_counter()
                proc = server.spawn(
                    [str(BIN / "argofl"), "step", "train", "--help"],
                    env=env,
                    cwd=str(ROOT),
                    stderr=err.fileno(),
                )
                if proc is None or proc.stdout is None:
                    return None
                proc.stdout.read()
                proc.wait()
                runs.append(time.perf_counter() - t0)
        return round(statistics.median(runs), 3)
    finally:
        server.close()


def compute_floor(config: str, params: list[str], parallelism: int) -> dict[str, float]:
    """The run's training and evaluation compute, in-process (`bench_training.run`)."""
    import argparse as _argparse

    import bench_training

    from argofl.pipelines.config import load_config
    from argofl.steps.settings import Settings

    overrides = dict(p.split("=", 1) for p in params)
    base = {k: str(v) for k, v in load_config(config).settings.to_dict().items() if v is not None}
    merged = {**base, **{k.replace("-", "_"): v for k, v in overrides.items()}}
    s = Settings.from_mapping(merged, where="bench_rounds -p", strings=True)
    if s.fraction < 1.0:
        print(
            "note: the floor trains every client each round (fraction < 1 is not modelled)", file=sys.stderr
        )
    args = _argparse.Namespace(
        framework=s.framework,
        model=s.model,
        dataset=s.dataset,
        clients=s.clients,
        rounds=s.rounds,
        epochs=s.local_epochs,
        batch_size=s.batch_size,
        lr=s.lr,
        momentum=s.momentum,
        workers=parallelism,
        threads=s.threads or 1,
        eval_threads=s.threads or 1,
        seed=s.seed,
        limit=s.data_limit or None,
        eval_batch_size=s.eval_batch_size,
        skip_startup=True,
        device="auto",
    )
    figures: dict[str, float] = bench_training.run(args)
    figures["floor_s"] = figures["train_wall_s"] + figures["eval_wall_s"]
    return figures


def floor_line(
    args: argparse.Namespace, total: float, accuracy: float, floors: list[dict[str, float]]
) -> tuple[str, str, str]:
    """The wall-time figure: ``total`` against the mean of the floors measured before and after the run."""
    before, after = (f["floor_s"] for f in floors)
    mean = (before + after) / 2
    drift = abs(after - before) / min(before, after)
    return (
        f"{Path(args.config).stem} {' '.join(args.params)} wall time",
        f"{total:.1f} s = {total / mean:.2f}x its compute floor {mean:.1f} s (mean of {before:.1f} s "
        f"before and {after:.1f} s after the run: the machine's speed drifted {drift:.0%}"
        + ("; too much for a trustworthy ratio, measure again" if drift > 0.1 else "")
        + f"; accuracy {accuracy:.4f} vs {floors[0]['accuracy']:.4f} in-process)",
        f"<= {args.target}x",
    )


def node_status_figures(
    status: dict[str, Any],
    clients: int,
    rounds: int,
    children: list[dict[str, Any]] | None = None,
    rounds_per_workflow: int = 0,
) -> dict[str, Any]:
    """Node-status size of the run, per round, and projected to ``clients`` one-client pods × ``rounds``:
    as one Workflow and, for a run in blocks (``children``), per Workflow object."""
    from argofl.pipelines.node_status import (
        ARGO_MAX_WORKFLOW_SIZE,
        measure,
        per_round,
        project,
        project_blocks,
    )

    merged = {**(status.get("nodes") or {})}
    for child in children or []:
        merged.update(child.get("nodes") or {})
    total = measure(merged)
    by_round = per_round({"nodes": merged})
    projection = project(by_round, total, pods=clients, rounds_count=rounds)
    figures: dict[str, Any] = {
        "nodes": total.nodes,
        "json_bytes": total.json_bytes,
        "compressed_bytes": total.compressed_bytes,
        "compressed_bytes_per_node": round(total.compressed_per_node, 1),
        "per_round": [
            {"round": r.round, "nodes": r.size.nodes, "compressed_bytes": r.size.compressed_bytes}
            for r in by_round
        ],
        "projected": {
            "clients": clients,
            "rounds": rounds,
            "nodes": projection.nodes,
            "compressed_bytes": projection.compressed_bytes,
            "limit_bytes": ARGO_MAX_WORKFLOW_SIZE,
            "share_of_limit": round(projection.share_of_limit, 2),
        },
    }
    if children and rounds_per_workflow:
        blocks = project_blocks(
            status, children, pods=clients, rounds_count=rounds, rounds_per_workflow=rounds_per_workflow
        )
        figures["per_workflow"] = [
            {"workflow": name, "nodes": size.nodes, "compressed_bytes": size.compressed_bytes}
            for name, size in [
                ("parent", measure(status.get("nodes") or {})),
                *((f"child {i + 1}", measure(c.get("nodes") or {})) for i, c in enumerate(children)),
            ]
        ]
        figures["projected_blocks"] = {
            "clients": clients,
            "rounds": rounds,
            "rounds_per_workflow": rounds_per_workflow,
            "blocks": blocks.blocks,
            "parent": {"nodes": blocks.parent.nodes, "compressed_bytes": blocks.parent.compressed_bytes},
            "child": {"nodes": blocks.child.nodes, "compressed_bytes": blocks.child.compressed_bytes},
            "largest_bytes": blocks.largest.compressed_bytes,
            "limit_bytes": ARGO_MAX_WORKFLOW_SIZE,
            "share_of_limit": round(blocks.largest.share_of_limit, 3),
        }
    return figures


def trained_seconds(node: dict[str, Any]) -> float | None:
    """The training time a train pod reports (its ``seconds`` output); None for other nodes."""
    for p in node.get("outputs", {}).get("parameters", []):
        if p["name"] == "seconds":
            return float(p["value"])
    return None


def pod_times(nodes: list[dict[str, Any]]) -> dict[str, Any]:
    """Median seconds of each step's pods, and of a train pod beyond the training it reports."""
    by_step: dict[str, list[float]] = {}
    beyond: list[float] = []
    for n in nodes:
        if n["type"] != "Pod" or n.get("phase") != "Succeeded" or not n.get("finishedAt"):
            continue
        took = _ts(n["finishedAt"]) - _ts(n["startedAt"])
        by_step.setdefault(str(n.get("templateName")), []).append(took)
        trained = trained_seconds(n)
        if n.get("templateName") == "train" and trained is not None:
            beyond.append(took - trained)
    return {
        "median_s": {step: round(statistics.median(v), 3) for step, v in sorted(by_step.items())},
        "count": {step: len(v) for step, v in sorted(by_step.items())},
        "train_pod_beyond_training_ms": round(statistics.median(beyond) * 1000, 1) if beyond else None,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("config", nargs="?", default=str(ROOT / "configs" / "fedavg-fmnist-torch.yaml"))
    parser.add_argument("-p", dest="params", action="append", default=[])
    parser.add_argument("--parallelism", type=int, default=2)
    parser.add_argument("--target", type=float, default=1.15, help="target wall time ÷ compute floor")
    parser.add_argument("--no-floor", action="store_true", help="skip measuring the compute floor")
    parser.add_argument("--project-clients", type=int, default=1000)
    parser.add_argument("--project-rounds", type=int, default=100)
    args = parser.parse_args()
    startup = startup_times()
    print(json.dumps({"startup": startup}, indent=2), flush=True)
    floors = [] if args.no_floor else [compute_floor(args.config, args.params, args.parallelism)]
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
        from argofl.pipelines.node_status import run_statuses

        status_file = next(Path(tmp, "workflows").glob("*/status.json"))
        status, children = run_statuses(status_file.parent)  # children: rounds_per_workflow's blocks
        params = {
            p["name"]: p.get("value")
            for p in json.loads((status_file.parent / "workflow.json").read_text())["spec"]["arguments"][
                "parameters"
            ]
        }
        rounds_per_workflow = int(params.get("rounds-per-workflow") or 0)
        summary = json.loads((status_file.parent / "summary.json").read_text())
    nodes = [n for s in (status, *children) for n in s["nodes"].values()]
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
        train_s = sum(t for n in below if (t := trained_seconds(n)) is not None)
        rounds.append(
            {
                "wall_s": round(wall, 1),
                "training_s": round(train_s, 1),
                "orchestration_share": round(1 - (train_s / args.parallelism) / wall, 3),
            }
        )
    pods = pod_times(nodes)
    print(
        json.dumps(
            {
                "config": Path(args.config).name,
                "total_wall_s": round(total, 1),
                "pods": pods,
                "final_accuracy": summary["final_accuracy"],
                "rounds": rounds,
                "mean_round_wall_s": round(statistics.mean(r["wall_s"] for r in rounds), 1),
                "mean_orchestration_share": round(
                    statistics.mean(r["orchestration_share"] for r in rounds), 3
                ),
            },
            indent=2,
        ),
        flush=True,
    )
    sizes = node_status_figures(
        status, args.project_clients, args.project_rounds, children, rounds_per_workflow
    )
    print(json.dumps({"node_status": sizes}, indent=2), flush=True)
    if floors:
        floors.append(compute_floor(args.config, args.params, args.parallelism))
    projected = sizes["projected"]
    lines = [
        (
            "a train pod beyond its training (median, node start to end)",
            f"{pods['train_pod_beyond_training_ms']} ms over {pods['count'].get('train', 0)} pods; "
            + ", ".join(f"{step} {t} s" for step, t in pods["median_s"].items() if step != "train"),
            "nearly free",
        ),
        (
            "step process start-up (argofl step train --help)",
            f"fresh {startup['argofl_step_help_s']} s, forked {startup['forked_argofl_step_train_help_s']} s "
            f"(a fresh torch step also imports torch: {startup['import_torch_backend_s']} s)",
            "nearly free",
        ),
        (
            "node status, projected "
            f"{projected['clients']} clients x {projected['rounds']} rounds (1 client per pod)",
            f"{projected['compressed_bytes'] / 1e6:.1f} MB compressed = {projected['share_of_limit']}x "
            "Argo's 1 MiB",
            "< 1x (without offloading)",
        ),
    ]
    blocks = sizes.get("projected_blocks")
    if blocks is not None:
        lines.append(
            (
                f"largest Workflow object, projected {blocks['clients']} clients x {blocks['rounds']} rounds "
                f"in blocks of {blocks['rounds_per_workflow']} rounds (1 client per pod)",
                f"{blocks['largest_bytes'] / 1e6:.2f} MB compressed = "
                f"{blocks['share_of_limit']}x Argo's 1 MiB "
                f"(parent {blocks['parent']['compressed_bytes'] / 1e3:.1f} kB, "
                f"each of {blocks['blocks']} children {blocks['child']['compressed_bytes'] / 1e6:.2f} MB)",
                "well under 1x (without offloading)",
            )
        )
    if floors:
        lines.insert(0, floor_line(args, total, summary["final_accuracy"], floors))
    print("\nfigure | measured | target")
    for name, value, target in lines:
        print(f"{name} | {value} | {target}")


if __name__ == "__main__":
    main()
