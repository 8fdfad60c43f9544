"""What a forked train step costs beyond its training: re-runs finished train steps of a local run.

Forks ``argofl step train`` from a fresh fork server (as the local executor does) for the given clients
of round 1 of a finished run, deleting each client's committed update first, and prints per step the
wall time from the request to the exit, the training seconds the step reports, and their difference.
The re-written updates replace the run's own (same inputs, same bytes). Run it inside the run's
directory (the one holding ``runs/``)::

    python benchmarks/bench_pod_overhead.py RUN_NAME [--clients 0,1,0,1]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

from argofl.pipelines.local.forkserver import ForkServer


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", help="the run's workflow name (runs/workflows/<run>)")
    parser.add_argument("--experiment", default="fedavg-fmnist-torch")
    parser.add_argument("--clients", default="0,1,0,1", help="comma-separated client ids, in order")
    args = parser.parse_args()
    root = Path("runs").resolve()
    env = {
        **os.environ,
        "ARGOFL_STORE": f"file://{root / 'store'}",
        "MLFLOW_TRACKING_URI": f"sqlite:///{root / 'mlflow.db'}",
    }
    updates = root / "store" / args.experiment / args.run / "round-0001" / "updates"
    server = ForkServer(env)
    if not server.wait_ready(600):
        raise SystemExit(f"fork server did not start: {server.failure}")
    try:
        with tempfile.TemporaryDirectory() as outputs:
            for client in args.clients.split(","):
                for old in updates.glob(f"client-{client}.*"):
                    old.unlink()
                argv = ["argofl", "step", "train", "--run-key", f"{args.experiment}/{args.run}"]
                argv += ["--round", "1", "--clients", client, "--output", f"seconds={outputs}/seconds"]
                started = time.perf_counter()
                process = server.spawn(argv, env=env, cwd=os.getcwd(), stderr=2)
                if process is None:
                    raise SystemExit("the fork server is not serving")
                code = process.wait()
                wall = time.perf_counter() - started
                trained = float(Path(outputs, "seconds").read_text())
                print(
                    f"client {client}: exit {code}, wall {wall:.3f} s, training {trained:.3f} s, "
                    f"beyond training {wall - trained:.3f} s",
                    flush=True,
                )
    finally:
        server.close()


if __name__ == "__main__":
    main()
