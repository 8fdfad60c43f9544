"""What robust and private aggregation buy: test accuracy under a sign-flip attack, and ε of DP-FedAvg.

Fashion-MNIST, 10 clients (IID), 5 rounds, every client every round; clients 0 and 1 are malicious
(TEST FEATURE ``attack=sign-flip``, ``attack_scale=10``: they send ``w_global − 10·(w − w_global)``).
Rows: FedAvg without attack (the baseline), then FedAvg, median, trimmed mean (β = 0.2) and Krum
(f = 2) under the attack, then DP-FedAvg (central, fixed clipping, no attack) at two noise levels with
the ε reached at δ = 1e-5. The steps run in this process against a file:// store and a local MLflow
store, exactly as a workflow's pods run them (one after another).

    python benchmarks/bench_robust.py                       # the full benchmark (minutes per row)
    python benchmarks/bench_robust.py --rounds 2 --data-limit 2000 --only fedavg,median   # a smoke run
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import tempfile
import time
from pathlib import Path
from typing import Any

from argofl.steps import step_aggregate, step_distribute, step_evaluate, step_init, step_train
from argofl.steps.checkpoint import load_manifest
from argofl.steps.frameworks.base import TrainingDiverged
from argofl.steps.runinfo import RunLayout
from argofl.steps.settings import Settings
from argofl.steps.step_aggregate import NotEnoughUpdates
from argofl.steps.store import open_store
from argofl.steps.strategies import DP_DELTA, DP_NOISE


def variants(args: argparse.Namespace) -> dict[str, dict[str, Any]]:
    """Row name → settings overrides."""
    attack = {
        "attack": "sign-flip",
        "attack_clients": ",".join(str(c) for c in range(args.attackers)),
        "attack_scale": args.scale,
    }
    rows: dict[str, dict[str, Any]] = {
        "fedavg-no-attack": {"strategy": "fedavg"},
        "fedavg": {"strategy": "fedavg", **attack},
        "median": {"strategy": "median", **attack},
        "trimmed-mean": {"strategy": "trimmed-mean", "trim_beta": args.trim_beta, **attack},
        "krum": {"strategy": "krum", "krum_f": args.attackers, **attack},
    }
    for noise in args.dp_noise:
        rows[f"dp-fedavg-z{noise:g}"] = {"strategy": "dp-fedavg", "dp_noise": noise, "dp_clip": args.dp_clip}
    return rows


def run_one(name: str, overrides: dict[str, Any], args: argparse.Namespace, store_uri: str) -> dict[str, Any]:
    s = Settings.from_mapping(
        {
            "experiment": "bench-robust",
            "framework": args.framework,
            "model": args.model,
            "clients": args.clients,
            "min_clients": args.clients,
            "rounds": args.rounds,
            "data_limit": args.data_limit,
            "seed": args.seed,
            "threads": args.threads,
            **overrides,
        }
    )
    run_key = f"bench-robust/{name}"
    started = time.perf_counter()
    step_init.run(s, run_key=run_key, workflow_name=name, workflow_uid=name)
    accuracy: list[float] = []
    failed_round = None
    for r in range(1, s.rounds + 1):
        for group in step_distribute.run(run_key=run_key, round=r):
            # as in a workflow: a client whose training diverges fails; min_clients decides
            with contextlib.suppress(TrainingDiverged):
                step_train.run(run_key=run_key, round=r, clients=group)
        try:
            step_aggregate.run(run_key=run_key, round=r)
        except NotEnoughUpdates:
            failed_round = r
            break
        accuracy.append(round(step_evaluate.run(run_key=run_key, round=r)["accuracy"], 4))
    last = s.rounds if failed_round is None else failed_round - 1
    metrics = load_manifest(open_store(store_uri), RunLayout(run_key).global_key(last)).metrics
    row = {
        "row": name,
        "strategy": s.strategy,
        "attack": f"{s.attack} ×{s.attack_scale:g} by {s.attack_clients}" if s.attack != "none" else "none",
        "final_accuracy": accuracy[-1] if accuracy else None,
        "accuracy_per_round": accuracy,
        "failed_in_round": failed_round,
        "seconds": round(time.perf_counter() - started, 1),
    }
    if "dp_epsilon" in metrics:
        row["epsilon"] = round(metrics["dp_epsilon"], 3)
        row["delta"] = s.option(DP_DELTA)
        row["noise_multiplier"] = s.option(DP_NOISE)
    return row


def table(rows: list[dict[str, Any]]) -> str:
    lines = [
        "| strategy | attack | final test accuracy | ε (δ = 1e-5) |",
        "| --- | --- | --- | --- |",
    ]
    for row in rows:
        strategy = (
            row["row"] if row["strategy"] != "dp-fedavg" else f"dp-fedavg z={row['noise_multiplier']:g}"
        )
        epsilon = f"{row['epsilon']:.2f}" if "epsilon" in row else "—"
        if row.get("failed_in_round"):  # every honest client diverged: the workflow would fail there
            outcome = f"run fails in round {row['failed_in_round']} (clients diverge)"
        else:
            outcome = f"{row['final_accuracy']:.4f}"
        lines.append(f"| {strategy} | {row['attack']} | {outcome} | {epsilon} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--framework", default="torch")
    parser.add_argument("--model", default="cnn")
    parser.add_argument("--clients", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--data-limit", type=int, default=0, help="first N training examples (0 = all)")
    parser.add_argument("--attackers", type=int, default=2, help="clients 0..N-1 sign-flip")
    parser.add_argument("--scale", type=float, default=10.0)
    parser.add_argument("--trim-beta", type=float, default=0.2)
    parser.add_argument("--dp-noise", type=float, nargs=2, default=[0.1, 0.5], metavar="Z")
    parser.add_argument("--dp-clip", type=float, default=1.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--only", default="", help="comma-separated row names (default: all)")
    parser.add_argument("--out", type=Path, help="also write the rows as JSON here")
    args = parser.parse_args()
    logging.basicConfig(level=logging.ERROR)
    rows_wanted = variants(args)
    if args.only:
        wanted = args.only.split(",")
        unknown = [w for w in wanted if w not in rows_wanted]
        if unknown:
            parser.error(f"--only: unknown rows {unknown}; choose from {', '.join(rows_wanted)}")
        rows_wanted = {k: v for k, v in rows_wanted.items() if k in wanted}
    rows = []
    with tempfile.TemporaryDirectory(prefix="argofl-bench-robust-") as tmp:
        store_uri = (Path(tmp) / "store").as_uri()
        os.environ["ARGOFL_STORE"] = store_uri
        os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{Path(tmp) / 'mlflow.db'}"
        for name, overrides in rows_wanted.items():
            row = run_one(name, overrides, args, store_uri)
            print(json.dumps(row), flush=True)
            rows.append(row)
    print(table(rows))
    if args.out:
        args.out.write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    main()
