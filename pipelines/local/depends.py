"""DAG ``depends`` / ``dependencies`` logic as Argo resolves it (``workflow/common/ancestry.go``).

A bare task name ``X`` means ``(X.Succeeded || X.Skipped || X.Daemoned)``, plus ``X.Errored`` /
``X.Failed`` when task ``X`` has ``continueOn.error`` / ``continueOn.failed``. ``dependencies: [A, B]`` is
the same as ``depends: "A && B"``. The resolved expression is evaluated with the expr dialect against
each dependency's results (``Succeeded``, ``Failed``, ``Errored``, ``Skipped``, ``Omitted``, ``Daemoned``,
``AnySucceeded``, ``AllFailed``), task names with '-' written with '_'.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from argofl.pipelines.local.errors import ExpressionError, WorkflowInputError
from argofl.pipelines.local.expressions import evaluate_bool, parse

__all__ = ["RESULTS", "Depends", "TaskResults", "resolve_depends"]

RESULTS = ("Succeeded", "Failed", "Errored", "Skipped", "Omitted", "Daemoned", "AnySucceeded", "AllFailed")
_TASK_NAME = re.compile(r"([a-zA-Z0-9][-a-zA-Z0-9]*?\.[A-Z][a-zA-Z]+)|([a-zA-Z0-9][-a-zA-Z0-9]*)")


@dataclass(frozen=True)
class TaskResults:
    """What a dependency's node looks like to ``depends``."""

    Succeeded: bool = False
    Failed: bool = False
    Errored: bool = False
    Skipped: bool = False
    Omitted: bool = False
    Daemoned: bool = False
    AnySucceeded: bool = False
    AllFailed: bool = False


@dataclass(frozen=True)
class Depends:
    """The resolved logic of one task: the tasks it depends on and the expression to evaluate."""

    task: str
    source: str
    dependencies: tuple[str, ...]
    logic: str

    def evaluate(self, results: Mapping[str, TaskResults]) -> bool:
        """Whether the task should run, given each dependency's :class:`TaskResults`."""
        if not self.logic:
            return True
        env: dict[str, Any] = {dep.replace("-", "_"): results[dep] for dep in self.dependencies}
        try:
            return evaluate_bool(self.logic.replace("-", "_"), env)
        except ExpressionError as exc:
            raise ExpressionError(
                f"task {self.task!r}: unable to evaluate depends {self.source!r}: {exc}"
            ) from None


def _expand(name: str, task: Mapping[str, Any]) -> str:
    parts = [f"{name}.Succeeded", f"{name}.Skipped", f"{name}.Daemoned"]
    continue_on = task.get("continueOn") or {}
    if continue_on.get("error"):
        parts.append(f"{name}.Errored")
    if continue_on.get("failed"):
        parts.append(f"{name}.Failed")
    return "(" + " || ".join(parts) + ")"


def resolve_depends(task: Mapping[str, Any], tasks: Mapping[str, Mapping[str, Any]], where: str) -> Depends:
    """Resolve ``task``'s ``depends`` (or ``dependencies``); malformed logic is a WorkflowInputError."""
    name = str(task.get("name"))
    depends = task.get("depends")
    dependencies = task.get("dependencies")
    if depends and dependencies:
        raise WorkflowInputError(
            f"{where}: task {name!r} sets both depends and dependencies; use one of them"
        )
    if dependencies:
        if not isinstance(dependencies, list):
            raise WorkflowInputError(
                f"{where}.dependencies: expected a list of task names, got {dependencies!r}"
            )
        for dep in dependencies:
            if dep not in tasks:
                raise WorkflowInputError(
                    f"{where}.dependencies: task {name!r} depends on unknown task {dep!r}"
                )
        logic = " && ".join(_expand(str(dep), tasks[dep]) for dep in dependencies)
        return Depends(
            name, " && ".join(map(str, dependencies)), tuple(dict.fromkeys(map(str, dependencies))), logic
        )
    if not depends:
        return Depends(name, "", (), "")
    if not isinstance(depends, str):
        raise WorkflowInputError(f"{where}.depends: expected a string, got {depends!r}")
    deps: dict[str, None] = {}
    pieces: list[str] = []
    pos = 0
    for match in _TASK_NAME.finditer(depends):
        if match.group(1):
            dep, result = match.group(1).split(".", 1)
            if result not in RESULTS:
                raise WorkflowInputError(
                    f"{where}.depends: task result {result!r} for task {dep!r} in {depends!r} "
                    f"is invalid; expected one of {', '.join(RESULTS)}"
                )
            if dep not in tasks:
                raise WorkflowInputError(f"{where}.depends: {depends!r} refers to unknown task {dep!r}")
            deps[dep] = None
        else:
            dep = match.group(2)
            if dep not in tasks:
                raise WorkflowInputError(f"{where}.depends: {depends!r} refers to unknown task {dep!r}")
            deps[dep] = None
            pieces.append(depends[pos : match.start()])
            pieces.append(_expand(dep, tasks[dep]))
            pos = match.end()
    pieces.append(depends[pos:])
    logic = "".join(pieces)
    try:
        parse(logic.replace("-", "_"), "expr")
    except ExpressionError as exc:
        raise WorkflowInputError(
            f"{where}.depends: malformed depends expression {depends!r}: {exc}"
        ) from None
    if name in deps:
        raise WorkflowInputError(f"{where}.depends: task {name!r} depends on itself in {depends!r}")
    return Depends(name, depends, tuple(deps), logic)
