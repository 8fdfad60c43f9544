"""Templates with a ``retryStrategy``: a ``Retry`` node whose children are the attempts.

:class:`RetryRunner` runs attempts until one succeeds or the policy (:mod:`.retry`), the workflow's
deadline or an interrupt stops it, backing off between attempts, as Argo's ``processNodeRetries`` does.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Mapping
from typing import Any, Protocol

from argofl.pipelines.local.errors import ExpressionError
from argofl.pipelines.local.graph import Call, LogKey
from argofl.pipelines.local.model import Node, Phase, node_id, rfc3339
from argofl.pipelines.local.retry import RetryPolicy, humanize_seconds
from argofl.pipelines.local.state import WorkflowState
from argofl.pipelines.local.templating import NONE, expand_scope, substitute_obj

__all__ = ["RetryRunner", "RunOnce"]


class RunOnce(Protocol):
    """Runs one attempt of a template (:meth:`.engine.Engine._execute_once`)."""

    def __call__(
        self, call: Call, tmpl: dict[str, Any], *, retried: bool = ..., log_key: LogKey | None = ...
    ) -> Node: ...


class RetryRunner:
    """Runs a template invocation under its :class:`~.retry.RetryPolicy`."""

    def __init__(self, state: WorkflowState, run_once: RunOnce) -> None:
        self.state = state
        self.graph = state.graph
        self.run_once = run_once

    def run(self, call: Call, tmpl: dict[str, Any], policy: RetryPolicy) -> Node:
        rnode = self.graph.create_for_call(call, "Retry", Phase.RUNNING, tmpl)
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
                "pod.name": node_id(self.state.name, f"{call.name}({n})"),
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
            child = self.run_once(child_call, attempt_tmpl, retried=True, log_key=(rnode.id, n))
            attempts.append(child)
            if child.daemoned and child.phase == Phase.RUNNING:
                with self.graph.lock:
                    rnode.daemoned = True
                    for daemon in self.state.daemons.values():
                        if daemon.node is child:
                            daemon.retry_parent = rnode
                self.graph.changed(rnode)
                return rnode
            if not child.failed_or_error:
                with self.graph.lock:
                    rnode.outputs = copy.deepcopy(child.outputs)
                return self.graph.set_phase(
                    rnode, child.phase if child.phase != Phase.OMITTED else Phase.SUCCEEDED, ""
                )
            stopping = self.state.stopping(call)
            stop = (
                (child.phase, stopping)
                if stopping
                else self._retry_stop_reason(policy, child, attempts, tmpl)
            )
            if stop is not None:
                with self.graph.lock:
                    rnode.outputs = copy.deepcopy(child.outputs)
                return self.graph.set_phase(
                    rnode, Phase.ERROR if stop[0] == Phase.ERROR else child.phase, stop[1]
                )
            wait = policy.backoff_seconds(len(attempts))
            if wait:
                self.graph.set_phase(rnode, Phase.RUNNING, f"Backoff for {humanize_seconds(wait)}")
                until = (child.finished_at or time.time()) + wait
                if self.state.deadline is not None and not call.on_exit and until > self.state.deadline:
                    with self.graph.lock:
                        rnode.outputs = copy.deepcopy(child.outputs)
                    return self.graph.set_phase(
                        rnode, child.phase, f"retry exceeded workflow deadline {rfc3339(self.state.deadline)}"
                    )
                self.state.interrupt_event.wait(max(0.0, until - time.time()))
                if self.state.stopping(call) is None:  # after an interrupt, an exit handler still backs off
                    time.sleep(max(0.0, until - time.time()))
                self.graph.set_phase(rnode, Phase.RUNNING, "")

    def _retry_stop_reason(
        self, policy: RetryPolicy, child: Node, attempts: list[Node], tmpl: Mapping[str, Any]
    ) -> tuple[Phase, str] | None:
        if self.state.deadline is not None and time.time() > self.state.deadline:
            return child.phase, f"retry exceeded workflow deadline {rfc3339(self.state.deadline)}"
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
                    len(attempts) - 1, last, expand_scope(self.state.global_scope())
                )
            except ExpressionError as exc:
                return Phase.ERROR, str(exc)
            if not allowed:
                return child.phase, "retryStrategy.expression evaluated to false"
        return None


def _seconds(node: Node) -> str:
    """A node's duration as Argo reports ``lastRetry.duration``: from timestamps kept to the second."""
    end = node.finished_at or time.time()
    return str(int(end) - int(node.started_at))
