"""Benchmark the flagship training set-up: FedAvg simulated in-process with real client workers.

Fashion-MNIST, the built-in model, ``--clients`` IID clients each training ``--epochs`` local epochs
from the global weights, then a weighted average of the weights by examples and an evaluation on the
10k test set; repeated for ``--rounds`` rounds. Clients run in ``--workers`` spawned processes of
``--threads`` threads each, like the Argo train steps (2 at once on a 2-core machine).

Prints per-round test accuracy, seconds per client-epoch (the first one each worker trains, with its
warm-up — cuDNN, kernels, allocator — apart from the warm ones), images/s, the start-up cost of a train
step process (import the backend and load the data) and an estimate of the whole flagship run's wall
time. ``--device cuda`` trains (and evaluates) the torch model on the GPU.

    python benchmarks/bench_training.py --framework torch
    python benchmarks/bench_training.py --framework torch --device cuda --workers 1
    python benchmarks/bench_training.py --framework tensorflow --rounds 3
"""

from __future__ import annotations

import argparse
import math
import os
import subprocess
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # runnable without installing argofl
    sys.path.insert(0, str(ROOT))

from argofl.steps.data import load_dataset  # noqa: E402
from argofl.steps.frameworks import FRAMEWORKS, get_backend  # noqa: E402
from argofl.steps.partition import client_seed, partition  # noqa: E402
from argofl.steps.settings import EVAL_BATCH_SIZE  # noqa: E402

# The flagship hyperparameters per framework (1 local epoch, 10 IID clients, 5 rounds).
FLAGSHIP: dict[str, dict[str, Any]] = {
    "torch": {"batch_size": 32, "lr": 0.03, "momentum": 0.9},
    "tensorflow": {"batch_size": 32, "lr": 0.03, "momentum": 0.9},
}

Weights = dict[str, np.ndarray]

# ---------------------------------------------------------------------------------- worker processes

_WORKER: dict[str, Any] = {}


def _backend(framework: str, device: str) -> Any:
    """The framework's backend; for torch on ``device`` (``auto``: the GPU when there is one)."""
    if framework == "torch" and device != "auto":
        from argofl.steps.frameworks.torch_backend import TorchBackend

        return TorchBackend(device)
    return get_backend(framework)


def _init_worker(framework: str, model: str, threads: int, dataset: str, seed: int, device: str) -> None:
    backend = _backend(framework, device)
    backend.configure(threads=threads, deterministic=True)
    train = load_dataset(dataset, "train")
    _WORKER.update(
        backend=backend,
        train=train,
        calls=0,
        model=backend.build_model(
            model, input_shape=train.input_shape, num_classes=train.num_classes, seed=seed
        ),
    )


def _train_client(
    weights: Weights, indices: np.ndarray, hparams: dict[str, Any], seed: int
) -> tuple[Weights, dict[str, float], float, bool]:
    """Train one client; its weights, metrics, seconds, and whether it was this worker's first."""
    backend, model, train = _WORKER["backend"], _WORKER["model"], _WORKER["train"]
    first = _WORKER["calls"] == 0
    _WORKER["calls"] += 1
    start = time.perf_counter()
    backend.set_weights(model, weights)
    metrics = backend.train(model, train.x[indices], train.y[indices], seed=seed, **hparams)
    updated = backend.get_weights(model)
    return updated, metrics, time.perf_counter() - start, first


# ------------------------------------------------------------------------------------------- FedAvg


def fedavg(updates: list[tuple[Weights, float]]) -> Weights:
    """Average of the weights, weighted by examples (float64 accumulation, original dtypes)."""
    total = sum(n for _, n in updates)
    out: Weights = {}
    for name, first in updates[0][0].items():
        acc = sum(w[name].astype(np.float64) * (n / total) for w, n in updates)
        out[name] = np.asarray(np.rint(acc) if first.dtype.kind in "iu" else acc).astype(first.dtype)
    return out


def startup_seconds(framework: str, dataset: str) -> float:
    """Wall time of a fresh process that imports the backend and loads the train split."""
    code = (
        "from argofl.steps.frameworks import get_backend; from argofl.steps.data import load_dataset; "
        f"get_backend({framework!r}).configure(threads=1); load_dataset({dataset!r}, 'train')"
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    start = time.perf_counter()
    subprocess.run([sys.executable, "-c", code], check=True, env=env, capture_output=True)
    return time.perf_counter() - start


def run(args: argparse.Namespace) -> dict[str, float]:
    """Run the simulation; returns its figures (``accuracy``, ``train_wall_s``, ``eval_wall_s``,
    ``client_epoch_s``, ``first_client_epoch_s``, ``warm_client_epoch_s``)."""
    device = getattr(args, "device", "auto")
    hparams = {**FLAGSHIP[args.framework], "epochs": args.epochs}
    for key in ("batch_size", "lr", "momentum"):
        if getattr(args, key) is not None:
            hparams[key] = getattr(args, key)
    print(
        f"== {args.framework} {args.model} on {args.dataset}: {args.clients} IID clients, "
        f"{args.rounds} rounds, {hparams}, {args.workers} workers x {args.threads} thread(s), "
        f"device {device}",
        flush=True,
    )
    backend = _backend(args.framework, device)
    # evaluation threads: the evaluate step's (bench_rounds passes them), else one per worker
    backend.configure(threads=getattr(args, "eval_threads", None) or args.workers, deterministic=True)
    train = load_dataset(args.dataset, "train", limit=args.limit)
    test = load_dataset(args.dataset, "test")
    model = backend.build_model(
        args.model, input_shape=train.input_shape, num_classes=train.num_classes, seed=args.seed
    )
    global_weights = backend.get_weights(model)
    parts = partition(train.y, args.clients, "iid", seed=args.seed)

    client_seconds: list[float] = []
    first_seconds: list[float] = []
    train_wall = 0.0
    eval_wall = 0.0
    accuracy = 0.0
    ctx = get_context("spawn")
    init = (args.framework, args.model, args.threads, args.dataset, args.seed, device)
    with ProcessPoolExecutor(args.workers, mp_context=ctx, initializer=_init_worker, initargs=init) as pool:
        list(pool.map(time.sleep, [0.0] * args.workers))  # start the workers before timing
        for rnd in range(1, args.rounds + 1):
            start = time.perf_counter()
            futures = [
                pool.submit(_train_client, global_weights, idx, hparams, client_seed(args.seed, rnd, f"c{i}"))
                for i, idx in enumerate(parts)
            ]
            results = [f.result() for f in futures]
            wall = time.perf_counter() - start
            train_wall += wall
            client_seconds += [s / args.epochs for _, _, s, first in results if not first]
            first_seconds += [s / args.epochs for _, _, s, first in results if first]
            global_weights = fedavg([(w, m["examples"]) for w, m, _, _ in results])
            started = time.perf_counter()
            backend.set_weights(model, global_weights)
            eval_batch = getattr(args, "eval_batch_size", EVAL_BATCH_SIZE)
            ev = backend.evaluate(model, test.x, test.y, batch_size=eval_batch)
            eval_wall += time.perf_counter() - started
            accuracy = ev["accuracy"]
            train_loss = np.mean([m["loss"] for _, m, _, _ in results])
            print(
                f"round {rnd}: test accuracy {accuracy:.4f} loss {ev['loss']:.4f} | client train loss "
                f"{train_loss:.4f} | round {wall:.1f}s, {len(train) * args.epochs / wall:.0f} images/s",
                flush=True,
            )

    per_client = float(np.mean(client_seconds or first_seconds))
    first_epoch = float(np.mean(first_seconds))
    images = len(train) / args.clients
    total_rate = len(train) * args.epochs * args.rounds / train_wall
    print(
        f"{args.framework}: {per_client:.2f} s per client-epoch ({images:.0f} images, "
        f"{images / per_client:.0f} images/s per process); {total_rate:.0f} images/s over {args.workers} "
        f"processes; one epoch over all {len(train)} images takes {train_wall / args.rounds:.1f}s",
        flush=True,
    )
    print(
        f"{args.framework} on {device}: first client-epoch of each worker (warm-up) {first_epoch:.2f} s; "
        f"warm client-epochs {per_client:.2f} s (mean of {len(client_seconds)}); evaluation "
        f"{eval_wall / args.rounds:.2f} s per round",
        flush=True,
    )
    if not args.skip_startup:
        boot = startup_seconds(args.framework, args.dataset)
        waves = math.ceil(args.clients / args.workers)
        estimate = args.rounds * waves * (boot + per_client * args.epochs)
        print(
            f"{args.framework}: train step start-up {boot:.1f}s (import + data); estimated train-step "
            f"wall time of the whole run {estimate:.0f}s ({args.rounds} rounds x {waves} waves of "
            f"{args.workers})",
            flush=True,
        )
    return {
        "accuracy": accuracy,
        "train_wall_s": train_wall,
        "eval_wall_s": eval_wall,
        "client_epoch_s": per_client,
        "first_client_epoch_s": first_epoch,
        "warm_client_epoch_s": float(np.mean(client_seconds)) if client_seconds else float("nan"),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--framework", choices=[*FRAMEWORKS, "both"], default="both", help="both: every framework in turn"
    )
    parser.add_argument("--model", default="cnn")
    parser.add_argument("--dataset", default="fashion-mnist")
    parser.add_argument("--clients", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--batch-size", dest="batch_size", type=int)
    parser.add_argument("--lr", type=float)
    parser.add_argument("--momentum", type=float)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--limit", type=int, help="use only the first N training images")
    parser.add_argument(
        "--eval-batch-size", type=int, default=EVAL_BATCH_SIZE, help="the evaluate step's default"
    )
    parser.add_argument("--skip-startup", action="store_true", help="do not time a train step's start-up")
    parser.add_argument(
        "--device",
        choices=["auto", "cpu", "cuda"],
        default="auto",
        help="torch only: where to train (auto: the GPU when one is present, as the train step does)",
    )
    args = parser.parse_args(argv)
    if args.device != "auto" and args.framework != "torch":
        parser.error(f"--device {args.device} needs --framework torch (got {args.framework})")
    if args.device == "cuda":
        import torch

        if not torch.cuda.is_available():
            print("error: --device cuda: no CUDA GPU is visible here; use --device cpu", file=sys.stderr)
            return 2
    if args.framework == "both":  # one process per framework: neither imports the other
        rest = sys.argv[1:] if argv is None else argv
        status = 0
        for framework in FRAMEWORKS:
            cmd = [sys.executable, __file__, *rest, "--framework", framework]
            status = max(status, subprocess.run(cmd, check=False).returncode)
        return status
    run(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
