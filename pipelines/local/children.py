"""What steps and DAG templates share: turning a step or task into child calls, and finishing the boundary.

:meth:`Children.prepare_calls` resolves a step's or task's ``{{...}}`` references and ``from``
artifacts, evaluates ``when`` and expands ``withItems``/``withParam``/``withSequence`` into named child
calls; :meth:`Children.spawn_child` runs one child (then its exit hook) on its own thread and returns a
future of its node; :meth:`Children.finish_template` stops the boundary's daemons and computes the
template's outputs from the children's scope.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from concurrent.futures import Future
from typing import Any

from argofl.pipelines.local.errors import ExpressionError, WorkflowInputError
from argofl.pipelines.local.expressions import evaluate, evaluate_when, format_value
from argofl.pipelines.local.graph import Call
from argofl.pipelines.local.model import Node, Phase
from argofl.pipelines.local.scopes import Scope, expand_loop, item_name, item_scope, node_scope
from argofl.pipelines.local.slots import Slots
from argofl.pipelines.local.state import WorkflowState
from argofl.pipelines.local.templating import NONE, expand_scope, strict_prefixes, substitute, substitute_obj
from argofl.pipelines.local.threads import spawn

__all__ = ["Children", "Execute", "continues_on"]

_REFS = strict_prefixes("steps", "tasks")


def _strict_refs(name: str) -> bool:
    return _REFS(name) and ".outputs.artifacts." not in name


def _strict_all(name: str) -> bool:
    return ".artifacts." not in name


Execute = Callable[[Call], Node]
"""Runs one template invocation to completion and returns its node (:meth:`.engine.Engine.execute`)."""


class Children:
    """Child calls of steps and DAG templates, their exit hooks and the boundary's outputs."""

    def __init__(self, state: WorkflowState, execute: Execute) -> None:
        self.state = state
        self.graph = state.graph
        self.execute = execute

    @staticmethod
    def seed_scope(tmpl: Mapping[str, Any]) -> Scope:
        scope = Scope()
        inputs = tmpl.get("inputs") or {}
        for p in inputs.get("parameters") or []:
            scope.params[f"inputs.parameters.{p['name']}"] = str(p.get("value"))
        for a in inputs.get("artifacts") or []:
            scope.artifacts[f"inputs.artifacts.{a['name']}"] = a
        return scope

    def _resolve_artifact_refs(self, step: dict[str, Any], scope: Scope) -> None:
        args = step.get("arguments") or {}
        resolved: list[dict[str, Any]] = []
        for art in args.get("artifacts") or []:
            ref = art.get("from")
            if not ref:
                resolved.append(art)
                continue
            key = str(ref).strip()
            if key.startswith("{{") and key.endswith("}}"):
                key = key[2:-2].strip()
            with self.graph.lock:
                found = scope.artifacts.get(key) or self.state.global_artifacts.get(key)
            if found is None:
                if art.get("optional"):
                    continue
                raise WorkflowInputError(f"unable to resolve references: Unable to resolve: {ref}")
            entry = {k: v for k, v in found.items() if k not in ("globalName", "path")}
            entry["name"] = art.get("name")
            if art.get("optional"):
                entry["optional"] = True
            resolved.append(entry)
        if args.get("artifacts"):
            step["arguments"] = {**args, "artifacts": resolved}

    def prepare_calls(
        self, step: dict[str, Any], scope: Scope, base_name: str, where: str
    ) -> list[tuple[str, dict[str, Any], str | None]]:
        """Resolve references, evaluate ``when`` and expand loops: ``(node name, step, skip message)``."""
        merged: dict[str, Any] = {**self.state.global_scope(), **scope.params}
        hooks = step.get("hooks")
        on_exit = step.get("onExit")
        body = {k: v for k, v in step.items() if k not in ("hooks", "onExit")}
        loop = (
            any(body.get(k) not in (None, "") for k in ("withItems", "withParam", "withSequence"))
            or "withItems" in body
        )
        name = f"{base_name}.{step['name']}"
        when = body.get("when")
        if when:
            resolved_when = substitute(str(when), merged, _strict_refs)
            try:
                if not evaluate_when(resolved_when):
                    return [(name, body, f"when '{resolved_when}' evaluated false")]
            except ExpressionError:
                if not loop:
                    raise
        body = substitute_obj(body, merged, _strict_refs)
        if hooks is not None:
            body["hooks"] = hooks
        if on_exit is not None:
            body["onExit"] = on_exit
        items = expand_loop(body, where)
        if items is None:
            self._resolve_artifact_refs(body, scope)
            return [(name, body, None)]
        if not items:
            return [(name, body, "Skipped, empty params")]
        calls: list[tuple[str, dict[str, Any], str | None]] = []
        template = {
            k: v
            for k, v in body.items()
            if k not in ("withItems", "withParam", "withSequence", "hooks", "onExit")
        }
        for index, item in enumerate(items):
            item_vars = item_scope(item)
            expanded = substitute_obj(template, {**merged, **item_vars}, _strict_all)
            expanded["name"] = item_name(step["name"], index, item)
            if hooks is not None:
                expanded["hooks"] = hooks
            if on_exit is not None:
                expanded["onExit"] = on_exit
            child_name = f"{base_name}.{expanded['name']}"
            skip = None
            if expanded.get("when") and not evaluate_when(str(expanded["when"])):
                skip = f"when '{expanded['when']}' evaluated false"
            if skip is None:
                self._resolve_artifact_refs(expanded, scope)
            calls.append((child_name, expanded, skip))
        return calls

    def _run_child(self, step: dict[str, Any], call: Call, scope: Scope, ref_kind: str) -> Node:
        """Execute one step/task child and then its exit hook, if any."""
        node = self.execute(call)
        hook = (step.get("hooks") or {}).get("exit")
        if hook is None and step.get("onExit"):
            hook = {"template": step["onExit"]}
        if hook and node.completed:
            self._run_exit_hook(hook, node, call, scope, ref_kind, str(step["name"]))
        return node

    def spawn_child(
        self, body: dict[str, Any], call: Call, scope: Scope, kind: str, slots: Slots | None
    ) -> Future[Node]:
        """Run one child (and its exit hook) on its own thread; the future gets its node once it is done
        and its ``slots`` place is released."""

        def run() -> Node:
            try:
                return self._run_child(body, call, scope, kind)
            except BaseException as exc:  # keep the run alive; record the failure on the node
                return self.graph.fail_call(call, f"internal error: {exc}")
            finally:
                if slots is not None:
                    slots.release()

        return spawn(run, f"{kind[:-1]}-{call.name}")

    def _run_exit_hook(
        self, hook: Mapping[str, Any], node: Node, call: Call, scope: Scope, ref_kind: str, step_name: str
    ) -> Node | None:
        local = scope.copy()
        with self.graph.lock:
            last = self.graph.last_attempt(node)
            for name in {step_name, step_name.split("(")[0]}:
                local.update(node_scope(f"{ref_kind}.{name}", node, last))
        merged = {**self.state.global_scope(), **local.params}
        if hook.get("expression") and not evaluate(str(hook["expression"]), expand_scope(merged)):
            return None
        arguments = substitute_obj(dict(hook.get("arguments") or {}), merged, NONE)
        holder = {"arguments": arguments}
        self._resolve_artifact_refs(holder, local)
        return self.execute(
            Call(
                name=f"{node.name}.onExit",
                template=str(hook.get("template")),
                arguments=holder["arguments"],
                boundary_id=call.boundary_id,
                parents=[node.id],
                hooked=True,
                on_exit=True,
            )
        )

    def _last_attempt(self, node: Node) -> Node | None:
        if node.type != "Retry":
            return None
        attempts = [self.graph.nodes[c] for c in node.children if not self.graph.nodes[c].hooked]
        return attempts[-1] if attempts else None

    def finish_template(
        self, node: Node, tmpl: Mapping[str, Any], scope: Scope, failed: tuple[Phase, str] | None
    ) -> Node:
        self.state.stop_daemons(node.id)
        if failed is not None:
            return self.graph.set_phase(node, failed[0], failed[1])
        try:
            outputs = self._template_outputs(tmpl, scope)
        except (WorkflowInputError, ExpressionError) as exc:
            return self.graph.set_phase(node, Phase.ERROR, str(exc))
        if outputs:
            with self.graph.lock:
                node.outputs = outputs
            self.state.add_global_outputs(outputs)
        return self.graph.set_phase(node, Phase.SUCCEEDED)

    def _template_outputs(self, tmpl: Mapping[str, Any], scope: Scope) -> dict[str, Any] | None:
        spec = tmpl.get("outputs") or {}
        if not spec.get("parameters") and not spec.get("artifacts"):
            return None
        merged = {**self.state.global_scope(), **scope.params}
        outputs: dict[str, Any] = {}
        params = []
        for p in spec.get("parameters") or []:
            vf = p.get("valueFrom") or {}
            value: str | None = None
            try:
                if vf.get("parameter") is not None:
                    value = substitute(str(vf["parameter"]), merged, _strict_all)
                elif vf.get("expression"):
                    result = evaluate(str(vf["expression"]), expand_scope(merged))
                    if result is None:
                        raise ExpressionError(f"output parameter {p.get('name')!r}: expression produced nil")
                    value = format_value(result)
                elif p.get("value") is not None:
                    value = format_value(p["value"])
                elif vf.get("default") is None:
                    raise WorkflowInputError(
                        f"output parameter {p.get('name')!r}: output parameters must have a "
                        "valueFrom specified"
                    )
            except (WorkflowInputError, ExpressionError):
                if vf.get("default") is None:
                    raise
            if value is None:
                value = format_value(vf.get("default"))
            entry = {k: v for k, v in p.items() if k != "valueFrom"}
            entry["value"] = value
            params.append(entry)
        if params:
            outputs["parameters"] = params
        arts = []
        for a in spec.get("artifacts") or []:
            ref = str(a.get("from") or "").strip()
            key = ref[2:-2].strip() if ref.startswith("{{") and ref.endswith("}}") else ref
            found = scope.artifacts.get(key) or self.state.global_artifacts.get(key)
            if found is None:
                if a.get("optional"):
                    continue
                raise WorkflowInputError(
                    f"unable to resolve outputs from scope: Unable to resolve: {ref or a.get('name')}"
                )
            entry = {k: v for k, v in found.items() if k != "globalName"}
            entry["name"] = a["name"]
            if a.get("globalName"):
                entry["globalName"] = a["globalName"]
            arts.append(entry)
        if arts:
            outputs["artifacts"] = arts
        return outputs


def continues_on(step: Mapping[str, Any], phase: str) -> bool:
    """Whether the step's or task's ``continueOn`` lets a child that ended in ``phase`` pass."""
    continue_on = step.get("continueOn") or {}
    return bool(
        (phase == Phase.FAILED and continue_on.get("failed"))
        or (phase == Phase.ERROR and continue_on.get("error"))
    )
