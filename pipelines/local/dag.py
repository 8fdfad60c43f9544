"""DAG templates: a scheduler that starts each task as soon as its ``depends`` logic can be decided.

Only the ``target`` tasks (default: those nothing depends on) and their dependencies run. The scheduler
loop starts every task whose dependencies are done, then waits on the futures of the running children
(no polling); a loop task becomes a ``TaskGroup`` node. What one invocation's tasks share is a
:class:`DagRun`. The DAG's phase is derived from
the targets' branches the way Argo's ``assessDAGPhase`` does, honouring ``continueOn`` and ``failFast``.
"""

from __future__ import annotations

from collections.abc import Mapping
from concurrent.futures import FIRST_COMPLETED, Future, wait
from dataclasses import dataclass, field
from typing import Any

from argofl.pipelines.local.children import Children, continues_on
from argofl.pipelines.local.depends import Depends, TaskResults, resolve_depends
from argofl.pipelines.local.errors import ExpressionError, WorkflowInputError
from argofl.pipelines.local.graph import Call, LogKey
from argofl.pipelines.local.model import FAILED_OR_ERROR, Node, Phase
from argofl.pipelines.local.scopes import Scope, aggregate_outputs, node_scope
from argofl.pipelines.local.slots import Slots
from argofl.pipelines.local.state import WorkflowState
from argofl.pipelines.local.threads import done

__all__ = ["DagRun", "DagRunner"]


@dataclass
class DagRun:
    """One DAG template invocation: what its tasks share while the scheduler runs them."""

    node: Node
    call: Call
    where: str
    deps: Mapping[str, Depends]
    base_scope: Scope
    slots: Slots | None
    task_node: dict[str, Node] = field(default_factory=dict)  # finished (or never run) tasks
    running: dict[str, list[Future[Node]]] = field(default_factory=dict)  # tasks with children running
    groups: dict[str, tuple[Node, list[Future[Node]]]] = field(default_factory=dict)  # loops' TaskGroups

    def done(self, name: str) -> bool:
        return name in self.task_node


class DagRunner:
    """Runs DAG templates."""

    def __init__(self, state: WorkflowState, children: Children) -> None:
        self.state = state
        self.graph = state.graph
        self.children = children

    def run(self, call: Call, tmpl: dict[str, Any], retried: bool, log_key: LogKey | None = None) -> Node:
        node = self.graph.create_for_call(call, "DAG", Phase.RUNNING, tmpl, retried=retried)
        dag = tmpl["dag"]
        order = [dict(t) for t in dag.get("tasks") or []]
        tasks = {str(t["name"]): t for t in order}
        where = f"templates.{call.template_name}.dag"
        deps = {name: resolve_depends(task, tasks, where) for name, task in tasks.items()}
        target = str(dag.get("target") or "").strip()
        if target:
            targets = target.split()
            for t in targets:
                if t not in tasks:
                    return self.children.finish_template(
                        node, tmpl, Scope(), (Phase.ERROR, f"target {t!r} is not a task")
                    )
        else:
            depended = {d for dep in deps.values() for d in dep.dependencies}
            targets = sorted(n for n in tasks if n not in depended)
        needed: set[str] = set()
        stack = list(targets)
        while stack:
            name = stack.pop()
            if name not in needed:
                needed.add(name)
                stack.extend(deps[name].dependencies)
        limit = tmpl.get("parallelism")
        run = DagRun(
            node=node,
            call=call,
            where=where,
            deps=deps,
            base_scope=self.children.seed_scope(tmpl),
            slots=Slots(int(limit)) if limit not in (None, "", 0) else None,
        )
        while True:
            progress = True
            while progress:
                progress = False
                for task in order:
                    name = str(task["name"])
                    if name not in needed or name in run.task_node or name in run.running:
                        continue
                    if not all(run.done(d) for d in deps[name].dependencies):
                        continue
                    progress = True
                    self._start_task(run, task)
                    if name in run.groups and not run.running[name]:
                        self._finish_task(run, name)
            if not run.running:
                break
            finished = [name for name, futures in run.running.items() if all(f.done() for f in futures)]
            if not finished:
                # only the futures still running: a finished item of an unfinished fan-out would make
                # wait() return at once, and this loop spin for as long as its siblings run
                pending = [f for futures in run.running.values() for f in futures if not f.done()]
                wait(pending, return_when=FIRST_COMPLETED)
                continue
            for name in finished:
                self._finish_task(run, name)
        task_node = run.task_node
        failed = self._assess_dag(dag, targets, tasks, deps, task_node)
        scope = run.base_scope.copy()
        with self.graph.lock:
            for entry in order:
                tname = str(entry["name"])
                if tname in task_node:
                    self._add_task_scope(node, tname, task_node[tname], scope)
            node.outbound_nodes = [
                o for t in targets if t in task_node for o in self.graph.outbound(task_node[t].id)
            ]
        return self.children.finish_template(node, tmpl, scope, failed)

    def _finish_task(self, run: DagRun, name: str) -> None:
        """A task whose children have all finished: its node (a loop's TaskGroup takes its phase)."""
        futures = run.running.pop(name)
        if name not in run.groups:
            run.task_node[name] = futures[0].result()
            return
        group, children = run.groups[name]
        phase = Phase.SUCCEEDED
        for child in children:
            node = child.result()
            if node.failed_or_error:
                phase = node.phase
        self.graph.set_phase(group, phase)
        run.task_node[name] = group

    def _assess_dag(
        self,
        dag: Mapping[str, Any],
        targets: list[str],
        tasks: Mapping[str, Mapping[str, Any]],
        deps: Mapping[str, Depends],
        task_node: Mapping[str, Node],
    ) -> tuple[Phase, str] | None:
        memo: dict[str, Phase | None] = {}

        def branch(name: str) -> Phase | None:
            if name in memo:
                return memo[name]
            n = task_node.get(name)
            phase: Phase | None
            if n is None:
                phase = None
            elif n.completed:
                phase = n.phase
            else:
                phase = Phase.SUCCEEDED
                for dep in deps[name].dependencies:
                    b = branch(dep)
                    if b in FAILED_OR_ERROR:
                        phase = b
                        break
            memo[name] = phase
            return phase

        fail_fast = dag.get("failFast") is not False
        result = Phase.SUCCEEDED
        for name in targets:
            phase = branch(name)
            if phase is not None and phase in FAILED_OR_ERROR:
                if continues_on(tasks[name], phase):
                    continue
                result = phase
                if fail_fast:
                    break
        return None if result == Phase.SUCCEEDED else (result, "")

    def _add_task_scope(self, dag_node: Node, name: str, task: Node, scope: Scope) -> None:
        if task.type == "TaskGroup":
            prefix = f"{dag_node.name}.{name}("
            members = [
                n
                for n in self.graph.nodes.values()
                if n.boundary_id == dag_node.id and n.name.startswith(prefix)
            ]
            scope.params.update(aggregate_outputs(f"tasks.{name}", members))
        scope.update(node_scope(f"tasks.{name}", task, self.graph.last_attempt(task)))

    def _task_results(self, task: Node) -> TaskResults:
        any_succeeded = all_failed = False
        if task.type == "TaskGroup":
            kids = [self.graph.nodes[c] for c in task.children]
            any_succeeded = any(k.phase == Phase.SUCCEEDED for k in kids)
            all_failed = bool(kids) and all(k.phase == Phase.FAILED for k in kids)
        return TaskResults(
            Succeeded=task.phase == Phase.SUCCEEDED,
            Failed=task.phase == Phase.FAILED,
            Errored=task.phase == Phase.ERROR,
            Skipped=task.phase == Phase.SKIPPED,
            Omitted=task.phase == Phase.OMITTED,
            Daemoned=task.daemoned and task.phase != Phase.PENDING,
            AnySucceeded=any_succeeded,
            AllFailed=all_failed,
        )

    def _start_task(self, run: DagRun, task: dict[str, Any]) -> None:
        """Decide the task's ``depends``, then create its Skipped node or start its children."""
        name = str(task["name"])
        dep = run.deps[name]
        node_name = f"{run.node.name}.{name}"
        with self.graph.lock:
            if dep.dependencies:
                parents = [o for d in dep.dependencies for o in self.graph.outbound(run.task_node[d].id)]
            else:
                parents = [run.node.id]

        def skip(child_name: str, phase: Phase, message: str, under: list[str], template: Any) -> Node:
            return self.graph.skipped(
                child_name,
                phase,
                message,
                boundary_id=run.node.id,
                parents=under,
                template_name=template,
            )

        if dep.logic:
            try:
                with self.graph.lock:
                    results = {d: self._task_results(run.task_node[d]) for d in dep.dependencies}
                go = dep.evaluate(results)
            except ExpressionError as exc:
                run.task_node[name] = skip(node_name, Phase.ERROR, str(exc), parents, task.get("template"))
                return
            if not go:
                run.task_node[name] = skip(
                    node_name,
                    Phase.OMITTED,
                    "omitted: depends condition not met",
                    parents,
                    task.get("template"),
                )
                return
        scope = run.base_scope.copy()
        with self.graph.lock:
            for ancestor in _ancestors(name, run.deps):
                if ancestor in run.task_node:
                    self._add_task_scope(run.node, ancestor, run.task_node[ancestor], scope)
        scope.params["tasks.name"] = name
        try:
            calls = self.children.prepare_calls(task, scope, run.node.name, f"{run.where}.tasks[{name}]")
        except (WorkflowInputError, ExpressionError) as exc:
            run.task_node[name] = skip(node_name, Phase.ERROR, str(exc), parents, task.get("template"))
            return
        is_loop = len(calls) != 1 or calls[0][0] != node_name
        if not is_loop and calls[0][2] is not None:
            run.task_node[name] = skip(node_name, Phase.SKIPPED, calls[0][2], parents, task.get("template"))
            return
        child_parents = parents
        futures: list[Future[Node]] = []
        run.running[name] = futures
        if is_loop:
            group = self.graph.create(
                node_name,
                "TaskGroup",
                Phase.RUNNING,
                boundary_id=run.node.id,
                parents=parents,
                template_name=task.get("template"),
            )
            run.groups[name] = (group, [])
            child_parents = [group.id]
        for child_name, body, skipped in calls:
            if skipped is not None:
                node = skip(child_name, Phase.SKIPPED, skipped, child_parents, body.get("template"))
                if is_loop:
                    run.groups[name][1].append(done(node))
                continue
            if run.slots is not None:
                run.slots.acquire()
            child_call = Call(
                name=child_name,
                template=body.get("template") or body.get("inline") or "",
                arguments=body.get("arguments") or {},
                boundary_id=run.node.id,
                parents=child_parents,
                on_exit=run.call.on_exit,
                local={"tasks.name": name},
            )
            future = self.children.spawn_child(body, child_call, scope, "tasks", run.slots)
            futures.append(future)
            if is_loop:
                run.groups[name][1].append(future)


def _ancestors(name: str, deps: Mapping[str, Depends]) -> list[str]:
    seen: list[str] = []
    stack = list(deps[name].dependencies)
    while stack:
        current = stack.pop()
        if current not in seen:
            seen.append(current)
            stack.extend(deps[current].dependencies)
    return seen
