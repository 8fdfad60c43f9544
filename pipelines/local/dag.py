"""DAG templates: a scheduler that starts each task as soon as its ``depends`` logic can be decided.

Only the ``target`` tasks (default: those nothing depends on) and their dependencies run. The scheduler
loop starts every task whose dependencies are done, then sleeps on a queue that child threads post to
when they finish (no polling); a loop task becomes a ``TaskGroup`` node. The DAG's phase is derived from
the targets' branches the way Argo's ``assessDAGPhase`` does, honouring ``continueOn`` and ``failFast``.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Mapping
from typing import Any

from argofl.pipelines.local.children import ChildRunner, continues_on
from argofl.pipelines.local.depends import Depends, TaskResults, resolve_depends
from argofl.pipelines.local.errors import ExpressionError, WorkflowInputError
from argofl.pipelines.local.model import FAILED_OR_ERROR, Node
from argofl.pipelines.local.scopes import Scope, aggregate_outputs, node_scope
from argofl.pipelines.local.slots import Slots
from argofl.pipelines.local.state import Call

__all__ = ["DagRunner"]


class DagRunner(ChildRunner):
    """Runs DAG templates."""

    def _run_dag(self, call: Call, tmpl: dict[str, Any], retried: bool) -> Node:
        node = self._create_for_call(call, "DAG", "Running", tmpl, retried=retried)
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
                    return self._finish_template(
                        node, tmpl, Scope(), ("Error", f"target {t!r} is not a task")
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
        slots = Slots(int(limit)) if limit not in (None, "", 0) else None
        base_scope = self._seed_scope(tmpl)
        task_node: dict[str, Node] = {}
        pending: dict[str, int] = {}
        groups: dict[str, tuple[Node, list[list[Node]]]] = {}
        boxes: dict[str, list[list[Node]]] = {}
        events: queue.SimpleQueue[Any] = queue.SimpleQueue()

        def done(name: str) -> bool:
            return name in task_node and pending.get(name, 0) == 0

        def finish_group(name: str) -> None:
            group, group_boxes = groups[name]
            phase = "Succeeded"
            for box in group_boxes:
                if box and box[0].failed_or_error:
                    phase = box[0].phase
            self._set_phase(group, phase)
            task_node[name] = group

        while True:
            progress = True
            while progress:
                progress = False
                for task in order:
                    name = str(task["name"])
                    if name not in needed or name in task_node or name in pending:
                        continue
                    if not all(done(d) for d in deps[name].dependencies):
                        continue
                    progress = True
                    self._start_task(
                        node,
                        task,
                        deps[name],
                        task_node,
                        pending,
                        groups,
                        boxes,
                        base_scope,
                        slots,
                        events,
                        call,
                        where,
                        deps,
                    )
                    if pending.get(name, 0) == 0 and name in groups:
                        finish_group(name)
            if not any(pending.values()):
                break
            finished = [events.get()]
            while True:
                try:
                    finished.append(events.get_nowait())
                except queue.Empty:
                    break
            for child_name in finished:
                for name in list(pending):
                    if child_name == f"{node.name}.{name}" or child_name.startswith(f"{node.name}.{name}("):
                        pending[name] -= 1
                        if pending[name] == 0:
                            if name in groups:
                                finish_group(name)
                            else:
                                box = boxes[name][0]
                                task_node[name] = box[0]
                        break
        failed = self._assess_dag(dag, targets, tasks, deps, task_node)
        scope = base_scope.copy()
        with self.lock:
            for entry in order:
                tname = str(entry["name"])
                if tname in task_node:
                    self._add_task_scope(node, tname, task_node[tname], scope)
            node.outbound_nodes = [
                o for t in targets if t in task_node for o in self._outbound(task_node[t].id)
            ]
        return self._finish_template(node, tmpl, scope, failed)

    def _assess_dag(
        self,
        dag: Mapping[str, Any],
        targets: list[str],
        tasks: Mapping[str, Mapping[str, Any]],
        deps: Mapping[str, Depends],
        task_node: Mapping[str, Node],
    ) -> tuple[str, str] | None:
        memo: dict[str, str] = {}

        def branch(name: str) -> str:
            if name in memo:
                return memo[name]
            n = task_node.get(name)
            if n is None:
                phase = ""
            elif n.completed:
                phase = n.phase
            else:
                phase = "Succeeded"
                for dep in deps[name].dependencies:
                    b = branch(dep)
                    if b in FAILED_OR_ERROR:
                        phase = b
                        break
            memo[name] = phase
            return phase

        fail_fast = dag.get("failFast") is not False
        result = "Succeeded"
        for name in targets:
            phase = branch(name)
            if phase in FAILED_OR_ERROR:
                if continues_on(tasks[name], phase):
                    continue
                result = phase
                if fail_fast:
                    break
        return None if result == "Succeeded" else (result, "")

    def _add_task_scope(self, dag_node: Node, name: str, task: Node, scope: Scope) -> None:
        if task.type == "TaskGroup":
            prefix = f"{dag_node.name}.{name}("
            children = [
                n for n in self.nodes.values() if n.boundary_id == dag_node.id and n.name.startswith(prefix)
            ]
            scope.params.update(aggregate_outputs(f"tasks.{name}", children))
        scope.update(node_scope(f"tasks.{name}", task, self._last_attempt(task)))

    def _task_results(self, task: Node) -> TaskResults:
        any_succeeded = all_failed = False
        if task.type == "TaskGroup":
            kids = [self.nodes[c] for c in task.children]
            any_succeeded = any(k.phase == "Succeeded" for k in kids)
            all_failed = bool(kids) and all(k.phase == "Failed" for k in kids)
        return TaskResults(
            Succeeded=task.phase == "Succeeded",
            Failed=task.phase == "Failed",
            Errored=task.phase == "Error",
            Skipped=task.phase == "Skipped",
            Omitted=task.phase == "Omitted",
            Daemoned=task.daemoned and task.phase != "Pending",
            AnySucceeded=any_succeeded,
            AllFailed=all_failed,
        )

    def _start_task(
        self,
        dag_node: Node,
        task: dict[str, Any],
        dep: Depends,
        task_node: dict[str, Node],
        pending: dict[str, int],
        groups: dict[str, tuple[Node, list[list[Node]]]],
        boxes: dict[str, list[list[Node]]],
        base_scope: Scope,
        slots: Slots | None,
        events: queue.SimpleQueue[Any],
        call: Call,
        where: str,
        deps: Mapping[str, Depends],
    ) -> None:
        name = str(task["name"])
        node_name = f"{dag_node.name}.{name}"
        with self.lock:
            if dep.dependencies:
                parents = [o for d in dep.dependencies for o in self._outbound(task_node[d].id)]
            else:
                parents = [dag_node.id]

        def skip_node(phase: str, message: str) -> Node:
            """The task's Skipped node: not run (Omitted / Skipped) or failed to expand (Error)."""
            return self._create(
                node_name,
                "Skipped",
                phase,
                boundary_id=dag_node.id,
                parents=parents,
                template_name=task.get("template"),
                message=message,
            )

        if dep.logic:
            try:
                with self.lock:
                    results = {d: self._task_results(task_node[d]) for d in dep.dependencies}
                run = dep.evaluate(results)
            except ExpressionError as exc:
                task_node[name] = skip_node("Error", str(exc))
                return
            if not run:
                task_node[name] = skip_node("Omitted", "omitted: depends condition not met")
                return
        scope = base_scope.copy()
        with self.lock:
            for ancestor in _ancestors(name, deps):
                if ancestor in task_node:
                    self._add_task_scope(dag_node, ancestor, task_node[ancestor], scope)
        scope.params["tasks.name"] = name
        try:
            calls = self._prepare_calls(task, scope, dag_node.name, f"{where}.tasks[{name}]")
        except (WorkflowInputError, ExpressionError) as exc:
            task_node[name] = skip_node("Error", str(exc))
            return
        is_loop = len(calls) != 1 or calls[0][0] != node_name
        if len(calls) == 1 and calls[0][0] == node_name and calls[0][2] is not None:
            task_node[name] = skip_node("Skipped", calls[0][2])
            return
        child_parents = parents
        if is_loop:
            group = self._create(
                node_name,
                "TaskGroup",
                "Running",
                boundary_id=dag_node.id,
                parents=parents,
                template_name=task.get("template"),
            )
            groups[name] = (group, [])
            child_parents = [group.id]
        pending[name] = 0
        boxes[name] = []
        for child_name, body, skip in calls:
            if skip is not None:
                skipped = self._create(
                    child_name,
                    "Skipped",
                    "Skipped",
                    boundary_id=dag_node.id,
                    parents=child_parents,
                    template_name=body.get("template"),
                    message=skip,
                )
                if is_loop:
                    groups[name][1].append([skipped])
                continue
            if slots is not None:
                slots.acquire()
            box: list[Node] = []
            boxes[name].append(box)
            if is_loop:
                groups[name][1].append(box)
            pending[name] += 1
            child_call = Call(
                name=child_name,
                template=body.get("template") or body.get("inline") or "",
                arguments=body.get("arguments") or {},
                boundary_id=dag_node.id,
                parents=child_parents,
                on_exit=call.on_exit,
                local={"tasks.name": name},
            )
            threading.Thread(
                target=self._child_thread,
                args=(body, child_call, scope, "tasks", box, slots, events),
                name=f"task-{child_name}",
                daemon=True,
            ).start()


def _ancestors(name: str, deps: Mapping[str, Depends]) -> list[str]:
    seen: list[str] = []
    stack = list(deps[name].dependencies)
    while stack:
        current = stack.pop()
        if current not in seen:
            seen.append(current)
            stack.extend(deps[current].dependencies)
    return seen
