"""Steps templates: step groups run in order, the steps of a group in parallel threads.

Each group is a ``StepGroup`` node whose parents are the previous group's outbound nodes. A group fails
when a child fails or errors without ``continueOn``. A template's ``parallelism`` caps the steps running at
once and, with it, ``failFast: true`` stops starting steps once one has failed. After each group, its
outputs (loops aggregated) become ``steps.<name>.*`` for the next groups.
"""

from __future__ import annotations

import threading
from typing import Any

from argofl.pipelines.local.children import ChildRunner, continues_on
from argofl.pipelines.local.errors import ExpressionError, WorkflowInputError
from argofl.pipelines.local.model import Node
from argofl.pipelines.local.scopes import Scope, aggregate_outputs, node_scope
from argofl.pipelines.local.slots import Slots
from argofl.pipelines.local.state import Call

__all__ = ["StepsRunner"]


class StepsRunner(ChildRunner):
    """Runs steps templates."""

    def _run_steps(self, call: Call, tmpl: dict[str, Any], retried: bool) -> Node:
        node = self._create_for_call(call, "Steps", "Running", tmpl, retried=retried)
        scope = self._seed_scope(tmpl)
        limit = tmpl.get("parallelism")
        slots = Slots(int(limit)) if limit not in (None, "", 0) else None
        fail_fast = tmpl.get("failFast") is True
        failed: tuple[str, str] | None = None
        prev_group: Node | None = None
        for gi, group in enumerate(tmpl.get("steps") or []):
            if prev_group is None:
                parents = [node.id]
            else:
                with self.lock:
                    outs = [o for c in prev_group.children for o in self._outbound(c)]
                parents = outs or [prev_group.id]
            sg = self._create(
                f"{node.name}[{gi}]",
                "StepGroup",
                "Running",
                boundary_id=node.id,
                parents=parents,
                template_name=None,
            )
            prev_group = sg
            try:
                plans = [
                    (
                        step,
                        self._prepare_calls(
                            dict(step), scope, sg.name, f"templates.{call.template_name}.steps[{gi}]"
                        ),
                    )
                    for step in group
                ]
            except (WorkflowInputError, ExpressionError) as exc:
                self._set_phase(sg, "Error", str(exc))
                failed = ("Failed", str(exc))
                break
            children: list[tuple[dict[str, Any], Node | None, threading.Thread | None, list[Node]]] = []
            stop_spawning = False
            for step, calls in plans:
                for child_name, body, skip in calls:
                    if skip is not None:
                        skipped = self._create(
                            child_name,
                            "Skipped",
                            "Skipped",
                            boundary_id=node.id,
                            parents=[sg.id],
                            template_name=body.get("template"),
                            message=skip,
                        )
                        children.append((step, skipped, None, []))
                        continue
                    if stop_spawning:
                        continue
                    if slots is not None:
                        slots.acquire()
                        if fail_fast and self._has_failures(node.id):
                            slots.release()
                            stop_spawning = True
                            continue
                    child_call = Call(
                        name=child_name,
                        template=body.get("template") or body.get("inline") or "",
                        arguments=body.get("arguments") or {},
                        boundary_id=node.id,
                        parents=[sg.id],
                        on_exit=call.on_exit,
                        local={"steps.name": str(body["name"])},
                    )
                    box: list[Node] = []
                    thread = threading.Thread(
                        target=self._child_thread,
                        args=(body, child_call, scope, "steps", box, slots, None),
                        name=f"step-{child_name}",
                        daemon=True,
                    )
                    thread.start()
                    children.append((step, None, thread, box))
            for _, _, child_thread, _ in children:
                if child_thread is not None:
                    child_thread.join()
            results = [(step, done or (box[0] if box else None)) for step, done, _, box in children]
            for step, child in results:
                if child is None:
                    continue
                if child.failed_or_error and not continues_on(step, child.phase):
                    msg = f"child '{child.id}' failed"
                    self._set_phase(sg, "Failed", msg)
                    failed = ("Failed", msg)
                    break
            if failed is None and stop_spawning:
                msg = "template has failed or errored children and failFast enabled"
                self._set_phase(sg, "Failed", msg)
                failed = ("Failed", msg)
            if failed is not None:
                break
            self._set_phase(sg, "Succeeded")
            self._add_step_outputs(group, results, scope, sg, node)
        with self.lock:
            last_group = prev_group
            node.outbound_nodes = [
                o for c in (last_group.children if last_group else []) for o in self._outbound(c)
            ]
        return self._finish_template(node, tmpl, scope, failed)

    def _has_failures(self, boundary_id: str) -> bool:
        with self.lock:
            return any(
                n.boundary_id == boundary_id and n.type in ("Pod", "Steps", "DAG") and n.failed_or_error
                for n in self.nodes.values()
            )

    def _add_step_outputs(
        self,
        group: list[dict[str, Any]],
        results: list[tuple[dict[str, Any], Node | None]],
        scope: Scope,
        sg: Node,
        steps_node: Node,
    ) -> None:
        with self.lock:
            for step in group:
                name = str(step["name"])
                direct = [
                    c for s, c in results if s is step and c is not None and c.name == f"{sg.name}.{name}"
                ]
                if direct and not any(k in step for k in ("withItems", "withParam", "withSequence")):
                    child = direct[0]
                    scope.update(node_scope(f"steps.{name}", child, self._last_attempt(child)))
                    continue
                prefix = f"{sg.name}.{name}("
                loop_children = [
                    n
                    for n in self.nodes.values()
                    if n.boundary_id == steps_node.id and n.name.startswith(prefix) and n.type != "Skipped"
                ]
                scope.params.update(aggregate_outputs(f"steps.{name}", loop_children))
                scope.update(node_scope(f"steps.{name}", sg))
