"""The executor: runs a validated workflow as Argo's controller would, one Python thread per active node.

``Engine.run`` executes the entrypoint template, then the exit handler, and derives the workflow phase
the way ``operator.go`` does. A template invocation (:meth:`Engine.execute`) binds arguments to inputs
and substitutes ``{{...}}`` (:mod:`.binding`), wraps the node in a ``Retry`` node when the template has a
``retryStrategy`` (here) and dispatches on the template type:

* container/script — :mod:`.pods`: a host process (see :mod:`.process`, :mod:`.sandbox`);
* steps — :mod:`.step_groups`: step groups in order, the steps of a group in parallel threads;
* dag — :mod:`.dag`: a scheduler that starts each task as soon as its ``depends`` logic can be decided,
  woken by task completions (no polling).

What steps and DAGs share lives in :mod:`.children`; nodes, globals, ``status.json`` and daemons in
:mod:`.state`. Workflow ``parallelism`` (and the caller's ``parallelism``) caps running pods; a template's
``parallelism`` caps the active child nodes in its boundary, handed out in index order.
"""

from __future__ import annotations

import copy
import json
import random
import string
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from argofl.pipelines.local.artifacts import ArtifactError
from argofl.pipelines.local.binding import TemplateBinder
from argofl.pipelines.local.dag import DagRunner
from argofl.pipelines.local.errors import ExpressionError, WorkflowInputError
from argofl.pipelines.local.expressions import go_json
from argofl.pipelines.local.model import FAILED_OR_ERROR, Node, node_id, rfc3339
from argofl.pipelines.local.pods import PodRunner
from argofl.pipelines.local.retry import RetryPolicy, humanize_seconds
from argofl.pipelines.local.state import Call
from argofl.pipelines.local.step_groups import StepsRunner
from argofl.pipelines.local.templating import NONE, expand_scope, substitute_obj

__all__ = ["Engine", "LocalRunResult", "generate_name", "new_uid"]


@dataclass
class LocalRunResult:
    """The outcome of :func:`run_workflow`."""

    name: str
    uid: str
    phase: str
    status: dict[str, Any]
    run_dir: Path
    stopped_by: int | None = None  # the signal that interrupted the run (see run_workflow)


class Engine(StepsRunner, DagRunner, PodRunner, TemplateBinder):
    """Runs one workflow; create it, then call :meth:`run` once."""

    # ------------------------------------------------------------------------------------ the run

    def run(self) -> LocalRunResult:
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self._write_status()
        self._writer.start()
        try:
            root = self.execute(
                Call(
                    name=self.name,
                    template=str(self.spec["entrypoint"]),
                    arguments={
                        "parameters": self.parameters,
                        "artifacts": (self.spec.get("arguments") or {}).get("artifacts") or [],
                    },
                    boundary_id=None,
                    parents=[],
                )
            )
            self._wait_daemon_node(root)
            wf_status = {
                "Succeeded": "Succeeded",
                "Skipped": "Succeeded",
                "Omitted": "Succeeded",
                "Failed": "Failed",
                "Error": "Error",
            }.get(root.phase, "Error")
            with self.lock:
                self.globals["workflow.status"] = wf_status
                failures = [
                    {
                        "displayName": n.display_name,
                        "message": n.message,
                        "templateName": n.template_name or "",
                        "phase": n.phase,
                        "podName": n.id,
                        "finishedAt": (rfc3339(n.finished_at) or "")[:19] + "Z",
                    }
                    for n in self.nodes.values()
                    if n.phase in FAILED_OR_ERROR
                ]
                self.globals["workflow.failures"] = json.dumps(go_json(failures), ensure_ascii=False)
            on_exit = self._exit_handler()
            phase, message = wf_status, root.message if wf_status != "Succeeded" else ""
            if on_exit is not None and wf_status == "Succeeded" and on_exit.failed_or_error:
                phase, message = on_exit.phase, on_exit.message
            self._stop_daemons(None, everything=True)
            if self.interrupted is not None:  # as `argo stop`: Failed, whatever the nodes reached
                phase, message = "Failed", self.interrupted
                self._finalize_nodes(self.interrupted)
            with self.lock:
                self.phase = phase
                self.message = message
                self.globals["workflow.status"] = phase
                self.finished_at = time.time()
        except BaseException as exc:
            stopped = f"stopped: executor interrupted ({type(exc).__name__})"
            for thread in self.interrupt(stopped, hard=True):
                thread.join()
            self._stop_daemons(None, everything=True)
            self._finalize_nodes(stopped)
            with self.lock:
                if self.phase == "Running":
                    self.phase = "Error"
                    self.finished_at = time.time()
            raise
        finally:
            if self._exit_grace is not None:
                self._exit_grace.cancel()
            with self._dirty:
                self._stop_writer = True
                self._dirty.notify()
            self._writer.join()
            self._write_status()
        return LocalRunResult(self.name, self.uid, self.phase, self.status(), self.run_dir)

    def _exit_handler(self) -> Node | None:
        hook = (self.spec.get("hooks") or {}).get("exit")
        template = self.spec.get("onExit") or (hook or {}).get("template")
        if not template:
            return None
        arguments = substitute_obj((hook or {}).get("arguments") or {}, self._global_scope(), NONE)
        return self.execute(
            Call(
                name=f"{self.name}.onExit",
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
        tmpl_raw = self._template(call.template)
        if tmpl_raw is None:
            return self._error_node(call, f"template {call.template!r} not found")
        local = {"node.name": call.name, **call.local}
        try:
            tmpl = self._process_args(tmpl_raw, call.arguments, local)
            strategy = tmpl.get("retryStrategy") or self.spec.get("retryStrategy")
            policy = (
                RetryPolicy.parse(strategy, f"templates.{call.template_name}.retryStrategy")
                if strategy
                else None
            )
        except (WorkflowInputError, ExpressionError) as exc:
            return self._error_node(call, str(exc))
        if policy is not None:
            return self._execute_retry(call, tmpl, policy)
        return self._execute_once(call, tmpl, retried=retried)

    def _execute_once(
        self,
        call: Call,
        tmpl: dict[str, Any],
        *,
        retried: bool = False,
        log_key: tuple[str, int] | None = None,
    ) -> Node:
        try:
            if "steps" in tmpl:
                return self._run_steps(call, tmpl, retried)
            if "dag" in tmpl:
                return self._run_dag(call, tmpl, retried)
            if "resource" in tmpl:  # a child Workflow (:mod:`.resources`)
                from argofl.pipelines.local.resources import run_resource

                return run_resource(self, call, tmpl, retried)
            return self._run_pod(call, tmpl, retried, log_key)
        except (WorkflowInputError, ExpressionError, ArtifactError) as exc:
            with self.lock:
                existing = self.nodes.get(node_id(self.name, call.name))
            if existing is None:
                return self._error_node(call, str(exc))
            return self._set_phase(existing, "Error", str(exc))

    # ------------------------------------------------------------------------------------- retries

    def _execute_retry(self, call: Call, tmpl: dict[str, Any], policy: RetryPolicy) -> Node:
        rnode = self._create_for_call(call, "Retry", "Running", tmpl)
        attempts: list[Node] = []
        while True:
            n = len(attempts)
            last = attempts[-1] if attempts else None
            local = {
                "retries": str(n),
                "lastRetry.exitCode": ((last.outputs or {}).get("exitCode") or "0") if last else "0",
                "lastRetry.status": last.phase if last else "",
                "lastRetry.duration": _seconds(last) if last else "0",
                "lastRetry.message": last.message if last else "",
                "pod.name": node_id(self.name, f"{call.name}({n})"),
            }
            attempt_tmpl = substitute_obj(tmpl, local, NONE)
            child_call = Call(
                name=f"{call.name}({n})",
                template=call.template,
                arguments=call.arguments,
                boundary_id=call.boundary_id,
                parents=[rnode.id],
                on_exit=call.on_exit,
                local=call.local,
            )
            child = self._execute_once(child_call, attempt_tmpl, retried=True, log_key=(rnode.id, n))
            attempts.append(child)
            if child.daemoned and child.phase == "Running":
                with self.lock:
                    rnode.daemoned = True
                    for daemon in self.daemons.values():
                        if daemon.node is child:
                            daemon.retry_parent = rnode
                self._changed(rnode)
                return rnode
            if not child.failed_or_error:
                with self.lock:
                    rnode.outputs = copy.deepcopy(child.outputs)
                return self._set_phase(rnode, child.phase if child.phase != "Omitted" else "Succeeded", "")
            stopping = self._stopping(call)
            stop = (
                (child.phase, stopping)
                if stopping
                else self._retry_stop_reason(policy, child, attempts, tmpl)
            )
            if stop is not None:
                with self.lock:
                    rnode.outputs = copy.deepcopy(child.outputs)
                return self._set_phase(rnode, "Error" if stop[0] == "Error" else child.phase, stop[1])
            wait = policy.backoff_seconds(len(attempts))
            if wait:
                self._set_phase(rnode, "Running", f"Backoff for {humanize_seconds(wait)}")
                until = (child.finished_at or time.time()) + wait
                if self.deadline is not None and not call.on_exit and until > self.deadline:
                    with self.lock:
                        rnode.outputs = copy.deepcopy(child.outputs)
                    return self._set_phase(
                        rnode, child.phase, f"retry exceeded workflow deadline {rfc3339(self.deadline)}"
                    )
                self._interrupt_event.wait(max(0.0, until - time.time()))
                if self._stopping(call) is None:  # after an interrupt, an exit handler still backs off
                    time.sleep(max(0.0, until - time.time()))
                self._set_phase(rnode, "Running", "")

    def _retry_stop_reason(
        self, policy: RetryPolicy, child: Node, attempts: list[Node], tmpl: Mapping[str, Any]
    ) -> tuple[str, str] | None:
        if self.deadline is not None and time.time() > self.deadline:
            return child.phase, f"retry exceeded workflow deadline {rfc3339(self.deadline)}"
        first_start = attempts[0].started_at
        if (
            policy.backoff_max_duration is not None
            and time.time() > first_start + policy.backoff_max_duration
        ):
            return child.phase, "Max duration limit exceeded"
        if policy.backoff_duration is not None and policy.backoff_max_duration is not None:
            wait = policy.backoff_seconds(len(attempts)) or 0.0
            if (child.finished_at or time.time()) + wait > first_start + policy.backoff_max_duration:
                return child.phase, "Backoff would exceed max duration limit"
        if not policy.should_retry_phase(child.phase, child.message):
            return child.phase, child.message
        if policy.limit is not None and len(attempts) > policy.limit:
            return child.phase, "No more retries left"
        if policy.expression:
            last = {
                "exitCode": (child.outputs or {}).get("exitCode") or "-1",
                "status": child.phase,
                "duration": _seconds(child),
                "message": child.message,
            }
            try:
                allowed = policy.expression_allows(
                    len(attempts) - 1, last, expand_scope(self._global_scope())
                )
            except ExpressionError as exc:
                return "Error", str(exc)
            if not allowed:
                return child.phase, "retryStrategy.expression evaluated to false"
        return None


def _seconds(node: Node) -> str:
    """A node's duration as Argo reports ``lastRetry.duration``: from timestamps kept to the second."""
    end = node.finished_at or time.time()
    return str(int(end) - int(node.started_at))


def generate_name(prefix: str) -> str:
    """``prefix`` + 5 random ``[a-z0-9]``, like Kubernetes' generateName."""
    alphabet = string.ascii_lowercase + string.digits
    return prefix + "".join(random.choice(alphabet) for _ in range(5))


def new_uid() -> str:
    return str(uuid.uuid4())
