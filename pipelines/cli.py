"""The ``argofl`` command line. Subcommand groups are imported lazily so that a step process
(``argofl step train``) pays only for what it runs."""

from __future__ import annotations

import importlib
import sys
from typing import Any

import click

from argofl.pipelines.exits import ArgoflGroup

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
    return cli.main(args=argv if argv is not None else sys.argv[1:], prog_name="argofl")
