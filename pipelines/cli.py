"""The ``argofl`` command line. Subcommand groups are imported lazily so that a step process
(``argofl step train``) pays only for what it runs."""

from __future__ import annotations

import importlib
import sys
from typing import Any

import click

from argofl.pipelines.exits import ArgoflGroup
from argofl.pipelines.stop_signals import guard_stops

# command name -> "module:attribute" of a click command; imported only when invoked or listed.
_COMMANDS: dict[str, str] = {
    "compile": "argofl.pipelines.commands:compile_cmd",
    "data": "argofl.pipelines.data_commands:data",
    "run": "argofl.pipelines.commands:run_cmd",
    "resume": "argofl.pipelines.commands:resume_cmd",
    "step": "argofl.steps.cli:step",
    "local": "argofl.pipelines.local.cli:local",
    "submit": "argofl.pipelines.cluster_commands:submit_cmd",
    "status": "argofl.pipelines.cluster_commands:status_cmd",
    "watch": "argofl.pipelines.cluster_commands:watch_cmd",
    "resubmit": "argofl.pipelines.cluster_commands:resubmit_cmd",
}

# the commands that run a workflow here: their stop signals are handled from main's first line
_RUNS_WORKFLOW = (("run",), ("resume",), ("local", "run"))


class LazyGroup(ArgoflGroup):
    """A click group whose subcommands live in other modules and load on first use."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(set(super().list_commands(ctx)) | set(_COMMANDS))

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name in _COMMANDS:
            module_name, attr = _COMMANDS[cmd_name].split(":")
            command: click.Command = getattr(importlib.import_module(module_name), attr)
            return command
        return super().get_command(ctx, cmd_name)


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="argofl")
def cli() -> None:
    """Federated and split learning where every round is an Argo Workflows DAG."""


def main(argv: list[str] | None = None) -> Any:
    """Console-script entry point."""
    args = argv if argv is not None else sys.argv[1:]
    if not any(tuple(args[: len(command)]) == command for command in _RUNS_WORKFLOW):
        return cli.main(args=args, prog_name="argofl")
    with guard_stops() as stops:  # before the imports: a stop during them must not be lost
        try:
            return cli.main(args=args, prog_name="argofl")
        except SystemExit as exc:
            if stops.signum is not None and exc.code in (0, None):  # the stop came after the run
                raise SystemExit(128 + stops.signum) from None
            raise
