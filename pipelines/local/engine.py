"""The executor: runs a validated workflow as Argo's controller would, one Python thread per active node.

:class:`Engine` is assembled by composition: a :class:`~.state.WorkflowState` (globals, deadlines,
daemons, running pods; ``status.json``) owning the :class:`~.graph.NodeGraph` (nodes and the lock), and
one runner per template kind that receives it. ``Engine.run`` executes the entrypoint template, then the
exit handler, and derives the workflow phase the way ``operator.go`` does. A template invocation
(:meth:`Engine.execute`) binds arguments to inputs and substitutes ``{{...}}`` (:mod:`.binding`), wraps
the node in a ``Retry`` node when the template has a ``retryStrategy`` (here) and hands the template to
the runner of its kind (:meth:`Engine.runners`, the one dispatch point):

* container/script — :class:`~.pods.PodRunner`: a host process (:mod:`.process`, :mod:`.sandbox`), or a
  container with ``--runtime docker`` (:mod:`.containers`);
* steps — :class:`~.step_groups.StepsRunner`: step groups in order, the steps of a group in parallel;
* dag — :class:`~.dag.DagRunner`: a scheduler that starts each task as soon as its ``depends`` logic can
  be decided, woken by task completions (no polling).

What steps and DAGs share lives in :mod:`.children`; children run on threads that report through futures
(:mod:`.threads`). Workflow ``parallelism`` (and the caller's ``parallelism``) caps running pods; a
template's ``parallelism`` caps the active child nodes in its boundary, handed out in index order.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Protocol

from argofl.pipelines.local.artifacts import ArtifactError
from argofl.pipelines.local.binding import find_template, process_args
from argofl.pipelines.local.children import Children
from argofl.pipelines.local.dag import DagRunner
from argofl.pipelines.local.errors import ExpressionError, WorkflowInputError
from argofl.pipelines.local.expressions import go_json
from argofl.pipelines.local.graph import Call, LogKey
from argofl.pipelines.local.model import FAILED_OR_ERROR, Node, Phase, generate_name, new_uid, rfc3339
from argofl.pipelines.local.pods import PodRunner
from argofl.pipelines.local.resources import ResourceRunner
from argofl.pipelines.local.retries import RetryRunner
from argofl.pipelines.local.retry import RetryPolicy
from argofl.pipelines.local.state import RunOptions, WorkflowState
from argofl.pipelines.local.step_groups import StepsRunner
from argofl.pipelines.local.templating import NONE, substitute_obj

__all__ = [
    "TEMPLATE_KINDS",
    "Engine",
    "LocalRunResult",
    "TemplateRunner",
    "generate_name",
    "new_uid",
    "template_kind",
]

TEMPLATE_KINDS = (
    "steps",
    "dag",
    "container",
    "script",
    "resource",
    "suspend",
    "containerSet",
    "data",
    "http",
    "plugin",
)
"""Argo's template types: a template has exactly one of these keys (:mod:`.validate` checks it)."""


def template_kind(tmpl: Mapping[str, Any]) -> str:
    """Which of :data:`TEMPLATE_KINDS` ``tmpl`` is; one with none runs as a (command-less) container."""
    return next((kind for kind in TEMPLATE_KINDS if kind in tmpl), "container")


class TemplateRunner(Protocol):
    """Runs one bound template invocation of its kind and returns its node."""

    def __call__(self, call: Call, tmpl: dict[str, Any], retried: bool, log_key: LogKey | None) -> Node: ...


@dataclass
class LocalRunResult:
    """The outcome of :func:`run_workflow`."""

    name: str
    uid: str
    phase: str
    status: dict[str, Any]
    run_dir: Path
    stopped_by: int | None = None  # the signal that interrupted the run (see run_workflow)


class Engine:
    """Runs one workflow; create it, then call :meth:`run` once (:meth:`interrupt` from any thread)."""

    def __init__(
        self, options: RunOptions, workflow_templates: Mapping[str, Mapping[str, Any]] | None = None
    ) -> None:
        self.on_node = options.on_node
        self.workflow_templates = dict(workflow_templates or {})
        self.state = WorkflowState(options)
        self.graph = self.state.graph
        children = Children(self.state, self.execute)
        self.pods = PodRunner(self.state)
        self.steps = StepsRunner(self.state, children)
        self.dags = DagRunner(self.state, children)
        self.retries = RetryRunner(self.state, self._execute_once)
        self.resources = ResourceRunner(self.state, self.workflow_templates, self._child)

    def runners(self) -> dict[str, TemplateRunner]:
        """The runner of each template kind (:func:`template_kind`): the one place that chooses how a
        template runs."""
        return {
            "container": self.pods.run,
            "script": self.pods.run,
            "steps": self.steps.run,
            "dag": self.dags.run,
            "resource": self.resources.run,
        }

    def _child(
        self,
        *,
        name: str,
        metadata: Mapping[str, Any],
        spec: Mapping[str, Any],
        templates: Mapping[str, dict[str, Any]],
        parameters: list[dict[str, Any]],
        run_dir: Path,
    ) -> Engine:
        """The engine of a Workflow this run created (:mod:`.resources`): the same store, environment,
        progress callback, container runtime, key references, WorkflowTemplates and pod slots."""
        state = self.state
        options = replace(
            state.options,
            name=name,
            uid=new_uid(),
            metadata=metadata,
            spec=spec,
            templates=templates,
            parameters=parameters,
            run_dir=run_dir,
            parallelism=None,
        )
        child = Engine(options, self.workflow_templates)
        if state.pod_slots is not None:
            child.state.pod_slots = state.pod_slots
        return child

    def interrupt(self, message: str, *, hard: bool = False) -> list[threading.Thread]:
        """Stop the run as ``argo stop`` does (:meth:`.state.WorkflowState.interrupt`)."""
        return self.state.interrupt(message, hard=hard)

    # ------------------------------------------------------------------------------------ the run

    def run(self) -> LocalRunResult:
        state = self.state
        state.run_dir.mkdir(parents=True, exist_ok=True)
        state.status_file.write()
        state.status_file.start()
        try:
            root = self.execute(
                Call(
                    name=state.name,
                    template=str(state.spec["entrypoint"]),
                    arguments={
                        "parameters": state.parameters,
                        "artifacts": (state.spec.get("arguments") or {}).get("artifacts") or [],
                    },
                    boundary_id=None,
                    parents=[],
                )
            )
            state.wait_daemon_node(root)
            wf_status = {
                Phase.SUCCEEDED: Phase.SUCCEEDED,
                Phase.SKIPPED: Phase.SUCCEEDED,
                Phase.OMITTED: Phase.SUCCEEDED,
                Phase.FAILED: Phase.FAILED,
                Phase.ERROR: Phase.ERROR,
            }.get(root.phase, Phase.ERROR)
            with state.lock:
                state.globals["workflow.status"] = wf_status
                failures = [
                    {
                        "displayName": n.display_name,
                        "message": n.message,
                        "templateName": n.template_name or "",
                        "phase": n.phase,
                        "podName": n.id,
                        "finishedAt": (rfc3339(n.finished_at) or "")[:19] + "Z",
                    }
                    for n in self.graph.nodes.values()
                    if n.phase in FAILED_OR_ERROR
                ]
                state.globals["workflow.failures"] = json.dumps(go_json(failures), ensure_ascii=False)
            on_exit = self._exit_handler()
            phase, message = wf_status, root.message if wf_status != Phase.SUCCEEDED else ""
            if on_exit is not None and wf_status == Phase.SUCCEEDED and on_exit.failed_or_error:
                phase, message = on_exit.phase, on_exit.message
            state.stop_daemons(None, everything=True)
            if state.interrupted is not None:  # as `argo stop`: Failed, whatever the nodes reached
                phase, message = Phase.FAILED, state.interrupted
                self.graph.finalize(state.interrupted)
            with state.lock:
                state.phase = phase
                state.message = message
                state.globals["workflow.status"] = phase
                state.finished_at = time.time()
        except BaseException as exc:
            stopped = f"stopped: executor interrupted ({type(exc).__name__})"
            for thread in state.interrupt(stopped, hard=True):
                thread.join()
            state.stop_daemons(None, everything=True)
            self.graph.finalize(stopped)
            with state.lock:
                if state.phase == Phase.RUNNING:
                    state.phase = Phase.ERROR
                    state.finished_at = time.time()
            raise
        finally:
            if state.exit_grace is not None:
                state.exit_grace.cancel()
            state.status_file.close()
        return LocalRunResult(state.name, state.uid, state.phase, state.status(), state.run_dir)

    def _exit_handler(self) -> Node | None:
        spec = self.state.spec
        hook = (spec.get("hooks") or {}).get("exit")
        template = spec.get("onExit") or (hook or {}).get("template")
        if not template:
            return None
        arguments = substitute_obj((hook or {}).get("arguments") or {}, self.state.global_scope(), NONE)
        return self.execute(
            Call(
                name=f"{self.state.name}.onExit",
                template=str(template),
                arguments=arguments,
                boundary_id=None,
                parents=[],
                hooked=True,
                on_exit=True,
            )
        )

    # --------------------------------------------------------------------------- template dispatch

    def execute(self, call: Call, *, retried: bool = False) -> Node:
        """Run one template invocation to completion (a daemon: until it is ready) and return its node."""
        tmpl_raw = find_template(self.state.templates, call.template)
        if tmpl_raw is None:
            return self.graph.error_node(call, f"template {call.template!r} not found")
        local = {"node.name": call.name, **call.local}
        try:
            tmpl = process_args(tmpl_raw, call.arguments, local, self.state.global_scope())
            strategy = tmpl.get("retryStrategy") or self.state.spec.get("retryStrategy")
            policy = (
                RetryPolicy.parse(strategy, f"templates.{call.template_name}.retryStrategy")
                if strategy
                else None
            )
        except (WorkflowInputError, ExpressionError) as exc:
            return self.graph.error_node(call, str(exc))
        if policy is not None:
            return self.retries.run(call, tmpl, policy)
        return self._execute_once(call, tmpl, retried=retried)

    def _execute_once(
        self,
        call: Call,
        tmpl: dict[str, Any],
        *,
        retried: bool = False,
        log_key: LogKey | None = None,
    ) -> Node:
        kind = template_kind(tmpl)
        runner = self.runners().get(kind)
        if runner is None:
            return self.graph.error_node(call, f"{kind} templates are not supported by the local executor")
        try:
            return runner(call, tmpl, retried, log_key)
        except (WorkflowInputError, ExpressionError, ArtifactError) as exc:
            return self.graph.fail_call(call, str(exc))
