"""``argofl compile`` and ``argofl run``: config → Argo manifest, and that manifest run on this machine."""

from __future__ import annotations

import json
import os
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import click

from pipelines.config import ConfigError, load_config
from pipelines.local.cli import container_options, runtime_options
from steps.settings import PARAM_NAMES, Settings, SettingsError

__all__ = ["compile_cmd", "overrides_option", "run_cmd"]


class ConfigPath(click.Path):
    """A config file argument whose load errors become usage errors."""

    name = "config"

    def __init__(self) -> None:
        super().__init__(exists=True, dir_okay=False, path_type=Path)


def _parse_overrides(ctx: click.Context, param: click.Parameter, values: tuple[str, ...]) -> dict[str, str]:
    out: dict[str, str] = {}
    for item in values:
        name, sep, value = item.partition("=")
        if not sep or not name:
            raise click.BadParameter(f"expected NAME=VALUE, got {item!r}")
        out[name] = value
    return out


def overrides_option(command: Callable[..., Any]) -> Callable[..., Any]:
    """``-p/--parameter NAME=VALUE`` (repeatable), parsed into a dict, as with ``argo submit -p``."""
    return click.option(
        "-p",
        "--parameter",
        "overrides",
        multiple=True,
        callback=_parse_overrides,
        metavar="NAME=VALUE",
        help="Set a workflow parameter, e.g. -p rounds=20 (as with argo submit).",
    )(command)


@click.command("compile")
@click.argument("configs", nargs=-1, required=True, type=ConfigPath())
@click.option(
    "--out-dir",
    default="argo",
    show_default=True,
    type=click.Path(file_okay=False, path_type=Path),
    help="Where manifests are written.",
)
def compile_cmd(configs: tuple[Path, ...], out_dir: Path) -> None:
    """Compile experiment CONFIGS into Argo Workflow manifests (argo/NAME.yaml)."""
    from pipelines.compile import compile_config

    for config in configs:
        try:
            out = compile_config(config, out_dir)
        except ConfigError as exc:
            raise click.UsageError(str(exc)) from None
        click.echo(f"wrote {out}")


LOCAL_MLFLOW_UI = "http://127.0.0.1:5000"
LOCAL_PARALLELISM = 2  # step processes at once: two clients train side by side on a 2-core machine


class Progress:
    """Prints one line per finished step from the executor's node events, as ``argofl watch`` does."""

    def __init__(self, out: Any = None) -> None:
        self.out = out or sys.stdout
        self.lock = threading.Lock()
        self.seen: set[tuple[str, str]] = set()
        self.start = time.monotonic()

    def __call__(self, node: dict[str, Any]) -> None:
        from pipelines.cluster import step_line, step_of

        phase = node.get("phase", "")
        if phase not in ("Succeeded", "Failed", "Error") or node.get("type") != "Pod":
            return
        key = (node.get("id", ""), phase)
        if key in self.seen:
            return
        self.seen.add(key)
        stamp = f"[{time.monotonic() - self.start:7.1f}s]"
        with self.lock:
            print(f"{stamp} {step_line(step_of(node))}", file=self.out, flush=True)


@click.command("run")
@click.argument("config", type=ConfigPath())
@overrides_option
@click.option(
    "--runs-dir",
    default="runs",
    show_default=True,
    type=click.Path(file_okay=False, path_type=Path),
    help="Where the local store, MLflow database, logs and summaries go.",
)
@click.option(
    "--parallelism",
    default=None,
    type=click.IntRange(min=1),
    help="Most step processes at once on this machine [default: 2; 3 for split learning, whose server "
    "daemon holds one all round].",
)
@click.option("--mlflow-uri", default=None, help="Tracking URI (default: sqlite database under --runs-dir).")
@click.option("--store", default=None, help="Store URI (default: file:// under --runs-dir).")
@runtime_options
def run_cmd(
    config: Path,
    overrides: dict[str, str],
    runs_dir: Path,
    parallelism: int | None,
    mlflow_uri: str | None,
    store: str | None,
    runtime: str,
    image_map: tuple[str, ...],
    mounts: tuple[Path, ...],
    ignore_gpu: bool,
) -> None:
    """Compile CONFIG and run the workflow on this machine (no cluster needed).

    With ``--runtime docker`` every step runs in its image (``make images``) as it would in a pod; the
    runs directory is bind-mounted at the same path, so the file store and MLflow database are shared.
    """
    from pipelines.compile import manifest_for
    from pipelines.local import LocalExecutorError, run_workflow

    try:
        cfg = load_config(config)
        settings = {
            **cfg.settings.to_params(),
            **{k: v for k, v in overrides.items() if k in PARAM_NAMES},
        }
        Settings.from_mapping(settings, where="parameters", strings=True)
    except (ConfigError, SettingsError) as exc:
        raise click.UsageError(str(exc)) from None
    containers = container_options(runtime, image_map, mounts, ignore_gpu)
    root = runs_dir.resolve()
    root.mkdir(parents=True, exist_ok=True)
    if containers is not None:
        containers = replace(containers, binds=(*containers.binds, str(root)))
        share_with_containers(root)
    tracking_uri = mlflow_uri or f"sqlite:///{root / 'mlflow.db'}"
    params = {
        "store": store or (root / "store").as_uri(),
        "mlflow-uri": tracking_uri,
        # where `mlflow ui` serves a local database by default, or the tracking server itself
        "mlflow-ui": tracking_uri if tracking_uri.startswith(("http://", "https://")) else LOCAL_MLFLOW_UI,
        **overrides,
    }
    manifest = manifest_for(cfg)
    if parallelism is None:
        parallelism = LOCAL_PARALLELISM + (1 if cfg.kind == "split" else 0)
    click.echo(f"running {cfg.name} locally: store {params['store']}, MLflow {params['mlflow-uri']}")
    started = time.monotonic()
    try:
        from steps.store import FileStore

        result = run_workflow(
            manifest,
            params,
            runs_dir=root / "workflows",
            artifact_store=FileStore(root / "artifacts"),
            on_node=Progress(),
            parallelism=parallelism,
            containers=containers,
        )
    except LocalExecutorError as exc:
        raise click.UsageError(str(exc)) from None
    wall = time.monotonic() - started
    if result.phase != "Succeeded":
        click.echo(
            f"error: workflow {result.name} {result.phase}: {result.status.get('message', '')}", err=True
        )
        for node in result.status.get("nodes", {}).values():
            if node.get("type") == "Pod" and node.get("phase") in ("Failed", "Error"):
                click.echo(f"  {node.get('displayName')}: {node.get('message', '')}", err=True)
        click.echo(f"logs: argofl local logs {result.run_dir}", err=True)
        sys.exit(1)
    summary_path = _save_summary(params["store"], settings["experiment"], result.name, result.run_dir, wall)
    click.echo(f"done in {wall:.1f}s; summary: {summary_path}")
    from pipelines.cluster import outputs_of

    outputs = outputs_of(result.status)
    if outputs.get("mlflow-run-url"):
        uri = params["mlflow-uri"]
        hint = "" if uri.startswith("http") else f" (start the UI: mlflow ui --backend-store-uri {uri})"
        click.echo(f"MLflow run: {outputs['mlflow-run-url']}{hint}")


SHARED_DIRS = ("store", "mlartifacts")
"""What steps write below the runs directory: the default file store and MLflow's artifacts."""


def share_with_containers(root: Path) -> None:
    """Let the step images' user (UID 10001) write the runs directory's store and MLflow database.

    Directories become world-writable (an emptyDir's mode) and an existing ``mlflow.db`` writable by all;
    files the containers write stay theirs (remove them as root, or with ``docker run``).
    """
    directories = [root]
    for name in SHARED_DIRS:
        (root / name).mkdir(parents=True, exist_ok=True)
        directories += [Path(d) for d, _, _ in os.walk(root / name)]
    for path in directories:
        if path.stat().st_uid == os.getuid():
            path.chmod(0o777)
    for db in root.glob("mlflow.db*"):
        if db.stat().st_uid == os.getuid():
            db.chmod(0o666)


def _save_summary(store_uri: str, experiment: str, run: str, run_dir: Path, wall: float) -> Path:
    from steps.runinfo import RunLayout
    from steps.store import open_store

    store = open_store(store_uri)
    summary = json.loads(store.get_bytes(RunLayout(f"{experiment}/{run}").summary_key))
    summary["local_wall_time_s"] = round(wall, 3)
    summary["store_uri"] = store.key_uri(f"{experiment}/{run}")
    path = run_dir / "summary.json"
    path.write_text(json.dumps(summary, indent=2, sort_keys=True) + "\n")
    for row in summary["rounds"]:
        click.echo(f"  round {row['round']}: test accuracy {row['accuracy']:.4f}, loss {row['loss']:.4f}")
    return path
