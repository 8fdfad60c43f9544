"""``argofl compile``, ``argofl run`` and ``argofl resume``: config → Argo manifest, that manifest run on
this machine, and a stopped local run continued from its last evaluated round."""

from __future__ import annotations

import json
import os
import sys
import threading
import time
import urllib.parse
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import click

from pipelines.config import ConfigError, load_config
from steps.settings import PARAM_NAMES, Settings, SettingsError

__all__ = [
    "absolute_store_uri",
    "absolute_tracking_uri",
    "compile_cmd",
    "overrides_option",
    "resume_cmd",
    "run_cmd",
]


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
def run_cmd(
    config: Path,
    overrides: dict[str, str],
    runs_dir: Path,
    parallelism: int | None,
    mlflow_uri: str | None,
    store: str | None,
) -> None:
    """Compile CONFIG and run the workflow on this machine (no cluster needed)."""
    from pipelines.compile import manifest_for

    try:
        cfg = load_config(config)
        settings = {
            **cfg.settings.to_params(),
            **{k: v for k, v in overrides.items() if k in PARAM_NAMES},
        }
        Settings.from_mapping(settings, where="parameters", strings=True)
    except (ConfigError, SettingsError) as exc:
        raise click.UsageError(str(exc)) from None
    root = runs_dir.resolve()
    root.mkdir(parents=True, exist_ok=True)
    # steps run in their own working directories: relative paths are the user's, resolved here
    tracking_uri = absolute_tracking_uri(overrides.get("mlflow-uri") or mlflow_uri or "") or (
        f"sqlite:///{root / 'mlflow.db'}"
    )
    params = {
        **overrides,
        "store": absolute_store_uri(overrides.get("store") or store or "") or (root / "store").as_uri(),
        "mlflow-uri": tracking_uri,
        # where `mlflow ui` serves a local database by default, or the tracking server itself
        "mlflow-ui": overrides.get("mlflow-ui")
        or (tracking_uri if tracking_uri.startswith(("http://", "https://")) else LOCAL_MLFLOW_UI),
    }
    data_dir = overrides.get("data-dir", cfg.settings.data_dir)
    if data_dir:
        params["data-dir"] = os.path.abspath(data_dir)
    manifest = manifest_for(cfg)
    if parallelism is None:
        parallelism = LOCAL_PARALLELISM + (1 if cfg.kind == "split" else 0)
    click.echo(f"running {cfg.name} locally: store {params['store']}, MLflow {params['mlflow-uri']}")
    _run_locally(manifest, params, root / "workflows", parallelism)


def absolute_store_uri(uri: str) -> str:
    """A store URI whose local path (plain or ``file:``) is absolute; other URIs as given."""
    parsed = urllib.parse.urlparse(uri)
    if parsed.scheme == "" and uri:
        return Path(uri).resolve().as_uri()
    if parsed.scheme == "file" and parsed.netloc == "" and not uri.startswith("file:/"):
        return Path(urllib.parse.unquote(parsed.path)).resolve().as_uri()  # file:relative/path
    return uri


def absolute_tracking_uri(uri: str) -> str:
    """An MLflow tracking URI whose local database or directory is absolute: ``sqlite:///x.db`` (relative
    to the current directory) becomes ``sqlite:////abs/x.db``; a plain path an absolute one."""
    if uri.startswith("sqlite:///") and not uri.startswith("sqlite:////"):
        database = uri.removeprefix("sqlite:///")
        if database and database != ":memory:":
            return "sqlite:///" + os.path.abspath(database)
        return uri
    if uri and urllib.parse.urlparse(uri).scheme == "":
        return os.path.abspath(uri)
    return uri


def _run_locally(
    manifest: Mapping[str, Any], params: Mapping[str, str], runs_dir: Path, parallelism: int
) -> None:
    """Run ``manifest`` with the local executor under ``runs_dir`` (``<root>/workflows``); print progress,
    then the summary, or what failed; exit non-zero unless it succeeded."""
    from pipelines.local import LocalExecutorError, run_workflow
    from steps.store import FileStore

    started = time.monotonic()
    try:
        result = run_workflow(
            manifest,
            params,
            runs_dir=runs_dir,
            artifact_store=FileStore(runs_dir.parent / "artifacts"),
            on_node=Progress(),
            parallelism=parallelism,
            stop_on_signals=True,
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
        if result.stopped_by is not None:
            click.echo(f"continue it: argofl resume {result.run_dir}", err=True)
            sys.exit(128 + result.stopped_by)
        sys.exit(1)
    from pipelines.cluster import outputs_of, parameters_of

    values = parameters_of(json.loads((result.run_dir / "workflow.json").read_text()))
    summary_path = _save_summary(values["store"], values["experiment"], result.name, result.run_dir, wall)
    click.echo(f"done in {wall:.1f}s; summary: {summary_path}")
    outputs = outputs_of(result.status)
    if outputs.get("mlflow-run-url"):
        uri = values["mlflow-uri"]
        hint = "" if uri.startswith("http") else f" (start the UI: mlflow ui --backend-store-uri {uri})"
        click.echo(f"MLflow run: {outputs['mlflow-run-url']}{hint}")


@click.command("resume")
@click.argument("run_dir", metavar="RUN_DIR", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option(
    "--parallelism",
    default=None,
    type=click.IntRange(min=1),
    help="Most step processes at once on this machine [default: as argofl run].",
)
def resume_cmd(run_dir: Path, parallelism: int | None) -> None:
    """Continue the stopped or failed local run in RUN_DIR (runs/workflows/NAME) in a new run, from the
    round after its last evaluated one, as `argofl resubmit` does on a cluster."""
    from pipelines.cluster import last_completed_round, parameters_of, resubmission_manifest
    from pipelines.local.runlock import run_is_locked

    run_dir = run_dir.resolve()
    try:
        old = json.loads((run_dir / "workflow.json").read_text())
        status = json.loads((run_dir / "status.json").read_text())
    except (OSError, ValueError) as exc:
        raise click.BadParameter(
            f"{run_dir}: not a local run directory (workflow.json and status.json): {exc}",
            param_hint="RUN_DIR",
        ) from None
    name = str((old.get("metadata") or {}).get("name") or run_dir.name)
    if run_is_locked(run_dir):
        raise click.UsageError(
            f"{name} is still running; stop it (Ctrl-C or kill its argofl) before resuming"
        )
    params = parameters_of(old)
    missing = [p for p in ("start-round", "resume-from", "experiment", "rounds") if p not in params]
    if missing:
        raise click.UsageError(
            f"{name} cannot resume: its workflow declares no {', '.join(missing)} parameter, so its rounds "
            "cannot start later; run it again with argofl run"
        )
    last = last_completed_round(status)
    rounds = int(params["rounds"])
    if last is not None and last >= rounds:
        click.echo(f"all {rounds} rounds of {name} completed; nothing to resume")
        return
    if last is None:  # nothing finished: start where it started, from what it resumed (if anything)
        start, resume = int(params["start-round"] or 1), params["resume-from"]
    else:
        start, resume = last + 1, f"{params['experiment']}/{name}"
    try:
        manifest = resubmission_manifest(old, start, resume)
    except (KeyError, ValueError) as exc:
        raise click.UsageError(f"{name} cannot resume: {exc}") from None
    phase = str(status.get("phase") or "?")
    if phase == "Running":  # not locked: its executor was killed before it could record the end
        phase = "stopped (its executor was killed)"
    click.echo(
        f"{name} {phase}: last completed round {last if last is not None else 'none'}; "
        f"resuming from round {start}" + (f" ({resume})" if resume else "")
    )
    if parallelism is None:  # as argofl run: one more where a daemon (split's server) holds a slot
        daemons = any(t.get("daemon") for t in (manifest["spec"].get("templates") or []))
        parallelism = LOCAL_PARALLELISM + (1 if daemons else 0)
    _run_locally(manifest, {}, run_dir.parent, parallelism)


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
