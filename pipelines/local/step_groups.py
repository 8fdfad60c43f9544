"""Steps templates: step groups run in order, the steps of a group in parallel threads.

Each group is a ``StepGroup`` node whose parents are the previous group's outbound nodes. A group fails
when a child fails or errors without ``continueOn``. A template's ``parallelism`` caps the steps running at
once and, with it, ``failFast: true`` stops starting steps once one has failed. After each group, its
outputs (loops aggregated) become ``steps.<name>.*`` for the next groups.
"""

from __future__ import annotations

from concurrent.futures import Future
from typing import Any

from argofl.pipelines.local.children import Children, continues_on
from argofl.pipelines.local.errors import ExpressionError, WorkflowInputError
from argofl.pipelines.local.graph import Call, LogKey
from argofl.pipelines.local.model import Node, Phase
from argofl.pipelines.local.scopes import Scope, aggregate_outputs, node_scope
from argofl.pipelines.local.slots import Slots
from argofl.pipelines.local.state import WorkflowState
from argofl.pipelines.local.threads import done

__all__ = ["StepsRunner"]


class StepsRunner:
    """Runs steps templates."""

    def __init__(self, state: WorkflowState, children: Children) -> None:
        self.state = state
        self.graph = state.graph
        self.children = children

    def run(self, call: Call, tmpl: dict[str, Any], retried: bool, log_key: LogKey | None = None) -> Node:
        node = self.graph.create_for_call(call, "Steps", Phase.RUNNING, tmpl, retried=retried)
        scope = self.children.seed_scope(tmpl)
        limit = tmpl.get("parallelism")
        slots = Slots(int(limit)) if limit not in (None, "", 0) else None
        fail_fast = tmpl.get("failFast") is True
        failed: tuple[Phase, str] | None = None
        prev_group: Node | None = None
        for gi, group in enumerate(tmpl.get("steps") or []):
            if prev_group is None:
                parents = [node.id]
            else:
                with self.graph.lock:
                    outs = [o for c in prev_group.children for o in self.graph.outbound(c)]
                parents = outs or [prev_group.id]
            sg = self.graph.create(
                f"{node.name}[{gi}]",
                "StepGroup",
                Phase.RUNNING,
                boundary_id=node.id,
                parents=parents,
                template_name=None,
            )
            prev_group = sg
            try:
                plans = [
                    (
                        step,
                        self.children.prepare_calls(
                            dict(step), scope, sg.name, f"templates.{call.template_name}.steps[{gi}]"
                        ),
                    )
                    for step in group
                ]
            except (WorkflowInputError, ExpressionError) as exc:
                self.graph.set_phase(sg, Phase.ERROR, str(exc))
                failed = (Phase.FAILED, str(exc))
                break
            spawned: list[tuple[dict[str, Any], Future[Node]]] = []
            stop_spawning = False
            for step, calls in plans:
                for child_name, body, skip in calls:
                    if skip is not None:
                        skipped = self.graph.skipped(
                            child_name,
                            Phase.SKIPPED,
                            skip,
                            boundary_id=node.id,
                            parents=[sg.id],
                            template_name=body.get("template"),
                        )
                        spawned.append((step, done(skipped)))
                        continue
                    if stop_spawning:
                        continue
                    if slots is not None:
                        slots.acquire()
                        if fail_fast and self.graph.has_failures(node.id):
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
                    future = self.children.spawn_child(body, child_call, scope, "steps", slots)
                    spawned.append((step, future))
            results = [(step, future.result()) for step, future in spawned]
            for step, child in results:
                if child.failed_or_error and not continues_on(step, child.phase):
                    msg = f"child '{child.id}' failed"
                    self.graph.set_phase(sg, Phase.FAILED, msg)
                    failed = (Phase.FAILED, msg)
                    break
            if failed is None and stop_spawning:
                msg = "template has failed or errored children and failFast enabled"
                self.graph.set_phase(sg, Phase.FAILED, msg)
                failed = (Phase.FAILED, msg)
            if failed is not None:
                break
            self.graph.set_phase(sg, Phase.SUCCEEDED)
            self._add_step_outputs(group, results, scope, sg, node)
        with self.graph.lock:
            last_group = prev_group
            node.outbound_nodes = [
                o for c in (last_group.children if last_group else []) for o in self.graph.outbound(c)
            ]
        return self.children.finish_template(node, tmpl, scope, failed)

    def _add_step_outputs(
        self,
        group: list[dict[str, Any]],
        results: list[tuple[dict[str, Any], Node]],
        scope: Scope,
        sg: Node,
        steps_node: Node,
    ) -> None:
        with self.graph.lock:
            for step in group:
                name = str(step["name"])
                direct = [c for s, c in results if s is step and c.name == f"{sg.name}.{name}"]
                if direct and not any(k in step for k in ("withItems", "withParam", "withSequence")):
                    child = direct[0]
                    scope.update(node_scope(f"steps.{name}", child, self.graph.last_attempt(child)))
                    continue
                prefix = f"{sg.name}.{name}("
                loop_children = [
                    n
                    for n in self.graph.nodes.values()
                    if n.boundary_id == steps_node.id and n.name.startswith(prefix) and n.type != "Skipped"
                ]
                scope.params.update(aggregate_outputs(f"steps.{name}", loop_children))
                scope.update(node_scope(f"steps.{name}", sg))
