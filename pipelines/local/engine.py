"""The executor: runs a validated workflow as Argo's controller would, one Python thread per active node.

``Engine.run`` executes the entrypoint template, then the exit handler, and derives the workflow phase
the way ``operator.go`` does. A template invocation (:meth:`Engine.execute`) binds arguments to inputs,
substitutes ``{{...}}`` in two passes (globals, then inputs), wraps the node in a ``Retry`` node when the
template has a ``retryStrategy`` and dispatches on the template type:

* container/script — :meth:`Engine._run_pod`: a host process (see :mod:`.process`, :mod:`.sandbox`);
* steps — :meth:`Engine._run_steps`: step groups in order, the steps of a group in parallel threads;
* dag — :meth:`Engine._run_dag`: a scheduler thread that starts each task as soon as its ``depends``
  logic can be decided, woken by task completions (no polling).

Workflow ``parallelism`` (and the caller's ``parallelism``) caps running pods; a template's
``parallelism`` caps the active child nodes in its boundary, handed out in index order.
"""

from __future__ import annotations

import contextlib
import copy
import ipaddress
import json
import os
import queue
import random
import string
import sys
import threading
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pipelines.local.artifacts import ArtifactError, has_location, load_artifact, save_artifact
from pipelines.local.depends import Depends, TaskResults, resolve_depends
from pipelines.local.errors import ExpressionError, LocalExecutorError, WorkflowInputError
from pipelines.local.expressions import evaluate, evaluate_when, format_value, go_json
from pipelines.local.model import FAILED_OR_ERROR, Node, node_id, rfc3339
from pipelines.local.probes import wait_ready
from pipelines.local.process import ProcessOutcome, StepProcess
from pipelines.local.retry import RetryPolicy, humanize_seconds, parse_duration
from pipelines.local.sandbox import PathView
from pipelines.local.scopes import Scope, aggregate_outputs, expand_loop, item_name, item_scope, node_scope
from pipelines.local.slots import Slots
from pipelines.local.templating import expand_scope, strict_prefixes, substitute, substitute_obj
from steps.store import ObjectNotFound, Store

__all__ = ["Engine", "LocalRunResult"]

SCRIPT_PATH = "/argo/staging/script"
_REFS = strict_prefixes("steps", "tasks")


def _strict_refs(name: str) -> bool:
    return _REFS(name) and ".outputs.artifacts." not in name


def _strict_all(name: str) -> bool:
    return ".artifacts." not in name


def _none(name: str) -> bool:
    return False


@dataclass
class LocalRunResult:
    """The outcome of :func:`run_workflow`."""

    name: str
    uid: str
    phase: str
    status: dict[str, Any]
    run_dir: Path


@dataclass
class Call:
    """One template invocation: the node to create, the template and its arguments."""

    name: str
    template: str | dict[str, Any]
    arguments: dict[str, Any]
    boundary_id: str | None
    parents: list[str]
    hooked: bool = False
    on_exit: bool = False
    local: dict[str, str] = field(default_factory=dict)

    @property
    def template_name(self) -> str | None:
        return self.template if isinstance(self.template, str) else self.template.get("name")


@dataclass
class _Daemon:
    proc: StepProcess
    node: Node
    boundary_id: str | None
    done: threading.Event
    retry_parent: Node | None = None


class Engine:
    """Runs one workflow; create it, then call :meth:`run` once."""

    def __init__(
        self,
        *,
        name: str,
        uid: str,
        metadata: Mapping[str, Any],
        spec: Mapping[str, Any],
        templates: Mapping[str, dict[str, Any]],
        parameters: list[dict[str, Any]],
        run_dir: Path,
        store: Store,
        env: Mapping[str, str] | None,
        on_node: Callable[[dict[str, Any]], None] | None,
        parallelism: int | None,
    ) -> None:
        self.name = name
        self.uid = uid
        self.metadata = metadata
        self.spec = spec
        self.templates = templates
        self.parameters = parameters
        self.run_dir = run_dir
        self.store = store
        self.extra_env = dict(env or {})
        self.on_node = on_node
        self.nodes: dict[str, Node] = {}
        self.lock = threading.RLock()
        self._callback_lock = threading.Lock()
        self.started_at = time.time()
        self.finished_at: float | None = None
        self.phase = "Running"
        self.message = ""
        limits = [int(x) for x in (spec.get("parallelism"), parallelism) if x not in (None, "", 0)]
        self.pod_slots = Slots(min(limits)) if limits else None
        deadline = spec.get("activeDeadlineSeconds")
        self.deadline = self.started_at + float(str(deadline)) if deadline not in (None, "") else None
        self.globals: dict[str, str] = {}
        self.global_artifacts: dict[str, dict[str, Any]] = {}
        self.output_params: list[dict[str, Any]] = []
        self.output_artifacts: list[dict[str, Any]] = []
        self.daemons: dict[str, _Daemon] = {}
        self._next_ip = int(ipaddress.IPv4Address("127.0.0.2"))
        self._depends_cache: dict[int, dict[str, Depends]] = {}
        self._dirty = threading.Condition()
        self._dirty_flag = False
        self._stop_writer = False
        self._writer = threading.Thread(target=self._status_writer, name="status-writer", daemon=True)
        self._init_globals()

    # ------------------------------------------------------------------------------------ globals

    def _init_globals(self) -> None:
        created = self.started_at
        g = self.globals
        g["workflow.name"] = self.name
        g["workflow.namespace"] = str(self.metadata.get("namespace") or "default")
        g["workflow.uid"] = self.uid
        g["workflow.mainEntrypoint"] = str(self.spec.get("entrypoint"))
        g["workflow.serviceAccountName"] = str(self.spec.get("serviceAccountName") or "")
        stamp = (rfc3339(created) or "")[:19] + "Z"
        g["workflow.creationTimestamp"] = stamp
        g["workflow.creationTimestamp.RFC3339"] = stamp
        g["workflow.creationTimestamp.s"] = str(int(created))
        tm = time.gmtime(created)
        for char in "aAbBcCdDeFgGhHIjklmMnpPrRsStTuUVwWxXyYzZ":
            with contextlib.suppress(ValueError):
                g.setdefault(f"workflow.creationTimestamp.{char}", time.strftime("%" + char, tm))
        if self.spec.get("priority") is not None:
            g["workflow.priority"] = str(self.spec["priority"])
        g["workflow.parameters"] = go_json(self.parameters)
        g["workflow.parameters.json"] = go_json(self.parameters)
        for p in self.parameters:
            g[f"workflow.parameters.{p['name']}"] = str(p["value"])
        labels = dict(self.metadata.get("labels") or {})
        annotations = dict(self.metadata.get("annotations") or {})
        for k, v in labels.items():
            g[f"workflow.labels.{k}"] = str(v)
        for k, v in annotations.items():
            g[f"workflow.annotations.{k}"] = str(v)
        g["workflow.labels"] = go_json(labels)
        g["workflow.annotations"] = go_json(annotations)
        g["workflow.status"] = "Running"
        # parameter values may themselves use workflow.* variables
        for p in self.parameters:
            value = substitute(str(p["value"]), g, _none)
            p["value"] = value
            g[f"workflow.parameters.{p['name']}"] = value

    def _global_scope(self) -> dict[str, Any]:
        with self.lock:
            scope: dict[str, Any] = dict(self.globals)
        scope["workflow.duration"] = f"{time.time() - self.started_at:f}"
        return scope

    def _add_global_outputs(self, outputs: Mapping[str, Any] | None) -> None:
        if not outputs:
            return
        with self.lock:
            for param in outputs.get("parameters") or []:
                gname = param.get("globalName")
                if gname and param.get("value") is not None:
                    self.globals[f"workflow.outputs.parameters.{gname}"] = str(param["value"])
                    self.output_params = [p for p in self.output_params if p["name"] != gname]
                    self.output_params.append({"name": gname, "value": str(param["value"])})
            for art in outputs.get("artifacts") or []:
                gname = art.get("globalName")
                if gname:
                    entry = {k: v for k, v in art.items() if k not in ("globalName", "path")}
                    entry["name"] = gname
                    self.global_artifacts[f"workflow.outputs.artifacts.{gname}"] = entry
                    self.output_artifacts = [a for a in self.output_artifacts if a["name"] != gname]
                    self.output_artifacts.append(entry)

    # ---------------------------------------------------------------------------------- node state

    def _display_name(self, name: str, boundary_id: str | None) -> str:
        boundary = self.nodes.get(boundary_id) if boundary_id else None
        if boundary is None:
            return name
        display = name[len(boundary.name) :] if name.startswith(boundary.name) else name
        if display.startswith("["):
            end = display.find("]")
            if end > 0 and display[1:end].isdigit() and display[end + 1 : end + 2] == ".":
                display = display[end + 1 :]
        if display.startswith("."):
            display = display[1:]
        return display or name

    def _create(
        self,
        name: str,
        type_: str,
        phase: str,
        *,
        boundary_id: str | None,
        parents: list[str],
        template_name: str | None,
        inputs: dict[str, Any] | None = None,
        message: str = "",
        hooked: bool = False,
        retried: bool = False,
    ) -> Node:
        with self.lock:
            nid = node_id(self.name, name)
            if nid in self.nodes:
                raise LocalExecutorError(f"internal error: node {name!r} created twice")
            node = Node(
                id=nid,
                name=name,
                display_name=self._display_name(name, boundary_id),
                type=type_,
                template_name=template_name,
                phase=phase,
                boundary_id=boundary_id,
                message=message,
                inputs=inputs or None,
                hooked=hooked,
                retried=retried,
            )
            if node.fulfilled:
                node.finished_at = node.started_at
            self.nodes[nid] = node
            for parent in parents:
                self._link(parent, nid)
        self._changed(node)
        return node

    def _link(self, parent_id: str, child_id: str) -> None:
        with self.lock:
            parent = self.nodes.get(parent_id)
            if parent is not None and child_id not in parent.children:
                parent.children.append(child_id)

    def _set_phase(self, node: Node, phase: str, message: str | None = None) -> Node:
        with self.lock:
            changed = node.phase != phase
            node.phase = phase
            if message is not None:
                node.message = message
            if (
                node.phase in ("Succeeded", "Failed", "Error", "Skipped", "Omitted")
                and node.finished_at is None
            ):
                node.finished_at = time.time()
        if changed:
            self._changed(node)
        else:
            self._mark_dirty()
        return node

    def _changed(self, node: Node) -> None:
        self._mark_dirty()
        if self.on_node is not None:
            with self.lock:
                snapshot = node.to_dict()
            with self._callback_lock:
                self.on_node(snapshot)

    def _outbound(self, nid: str) -> list[str]:
        node = self.nodes[nid]
        if node.type in ("Pod", "Skipped", "Suspend"):
            return [nid]
        if node.type == "TaskGroup":
            if not node.children:
                return [nid]
            return [o for c in node.children for o in self._outbound(c)]
        if node.type == "Retry":
            attempts = [c for c in node.children if not self.nodes[c].hooked]
            return [attempts[-1]] if attempts else []
        return [o for c in node.outbound_nodes for o in self._outbound(c)]

    def _error_node(self, call: Call, message: str) -> Node:
        return self._create(
            call.name,
            "Skipped",
            "Error",
            boundary_id=call.boundary_id,
            parents=call.parents,
            template_name=call.template_name,
            message=message,
            hooked=call.hooked,
        )

    # ------------------------------------------------------------------------------- status on disk

    def status(self) -> dict[str, Any]:
        with self.lock:
            status: dict[str, Any] = {
                "phase": self.phase,
                "startedAt": rfc3339(self.started_at),
                "finishedAt": rfc3339(self.finished_at),
                "nodes": {nid: n.to_dict() for nid, n in self.nodes.items()},
            }
            if self.message:
                status["message"] = self.message
            outputs: dict[str, Any] = {}
            if self.output_params:
                outputs["parameters"] = [dict(p) for p in self.output_params]
            if self.output_artifacts:
                outputs["artifacts"] = [dict(a) for a in self.output_artifacts]
            if outputs:
                status["outputs"] = outputs
        return status

    def _mark_dirty(self) -> None:
        with self._dirty:
            self._dirty_flag = True
            self._dirty.notify()

    def _write_status(self) -> None:
        data = json.dumps(self.status(), indent=1, sort_keys=False)
        tmp = self.run_dir / f".status.json.{threading.get_ident()}.tmp"
        tmp.write_text(data)
        os.replace(tmp, self.run_dir / "status.json")

    def _status_writer(self) -> None:
        while True:
            with self._dirty:
                while not self._dirty_flag and not self._stop_writer:
                    self._dirty.wait()
                if self._stop_writer:
                    return
                self._dirty_flag = False
            with contextlib.suppress(OSError):
                self._write_status()
            # coalesce bursts of changes; this thread is off the critical path
            with self._dirty:
                self._dirty.wait(timeout=0.2)

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
            with self.lock:
                self.phase = phase
                self.message = message
                self.globals["workflow.status"] = phase
                self.finished_at = time.time()
        except BaseException:
            self._stop_daemons(None, everything=True)
            with self.lock:
                if self.phase == "Running":
                    self.phase = "Error"
                    self.finished_at = time.time()
            raise
        finally:
            with self._dirty:
                self._stop_writer = True
                self._dirty.notify()
            self._writer.join()
            self._write_status()
        return LocalRunResult(self.name, self.uid, self.phase, self.status(), self.run_dir)

    def _wait_daemon_node(self, node: Node) -> None:
        """A daemon entrypoint runs until it exits: the workflow has nothing else to wait for."""
        for daemon in list(self.daemons.values()):
            if daemon.node.id == node.id or (
                daemon.retry_parent is not None and daemon.retry_parent.id == node.id
            ):
                daemon.done.wait()

    def _exit_handler(self) -> Node | None:
        hook = (self.spec.get("hooks") or {}).get("exit")
        template = self.spec.get("onExit") or (hook or {}).get("template")
        if not template:
            return None
        arguments = substitute_obj((hook or {}).get("arguments") or {}, self._global_scope(), _none)
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

    # ---------------------------------------------------------------------------- template binding

    def _template(self, ref: str | dict[str, Any]) -> dict[str, Any] | None:
        if isinstance(ref, dict):
            return ref
        return self.templates.get(ref)

    def _process_args(
        self, tmpl_raw: Mapping[str, Any], arguments: Mapping[str, Any], local: Mapping[str, str]
    ) -> dict[str, Any]:
        """Bind arguments to inputs and substitute globals, locals and inputs (Argo's ``ProcessArgs``)."""
        tmpl = copy.deepcopy(dict(tmpl_raw))
        inputs = tmpl.get("inputs") or {}
        arg_params = {str(p.get("name")): p for p in arguments.get("parameters") or []}
        arg_arts = {str(a.get("name")): a for a in arguments.get("artifacts") or []}
        gscope = self._global_scope()
        params: list[dict[str, Any]] = []
        for p in inputs.get("parameters") or []:
            p = dict(p)
            value = p.get("value")
            if value is None and p.get("default") is not None:
                value = p["default"]
            supplied = arg_params.get(str(p.get("name")))
            if supplied is not None and supplied.get("value") is not None:
                value = supplied["value"]
            if value is None:
                raise WorkflowInputError(f"inputs.parameters.{p.get('name')} was not supplied")
            value = substitute(format_value(value), gscope, _none)
            enum = p.get("enum")
            if enum and value not in [format_value(e) for e in enum]:
                raise WorkflowInputError(
                    f"inputs.parameters.{p.get('name')}: value {value!r} is not one of "
                    f"{[format_value(e) for e in enum]}"
                )
            p["value"] = value
            params.append(p)
        arts: list[dict[str, Any]] = []
        for a in inputs.get("artifacts") or []:
            given = arg_arts.get(str(a.get("name")))
            if given is not None:
                merged = {k: v for k, v in given.items() if k not in ("from", "globalName")}
                merged["name"] = a["name"]
                for key in ("path", "mode", "recurseMode"):
                    if key in a:
                        merged[key] = a[key]
                    else:
                        merged.pop(key, None)
                if a.get("optional") or given.get("optional"):
                    merged["optional"] = True
                if "archive" in a and "archive" not in merged:
                    merged["archive"] = a["archive"]
                arts.append(merged)
            else:
                if not a.get("optional") and not has_location(a):
                    raise WorkflowInputError(f"inputs.artifacts.{a.get('name')} was not supplied")
                arts.append(dict(a))
        if params or arts:
            tmpl["inputs"] = {k: v for k, v in (("parameters", params), ("artifacts", arts)) if v}
        scope: dict[str, Any] = {**gscope, **local}
        tmpl = substitute_obj(tmpl, scope, _none)
        for p in (tmpl.get("inputs") or {}).get("parameters") or []:
            scope[f"inputs.parameters.{p['name']}"] = str(p["value"])
        scope["inputs.parameters"] = go_json((tmpl.get("inputs") or {}).get("parameters") or [])
        for a in (tmpl.get("inputs") or {}).get("artifacts") or []:
            if a.get("path"):
                scope[f"inputs.artifacts.{a['name']}.path"] = a["path"]
        for a in (tmpl.get("outputs") or {}).get("artifacts") or []:
            if a.get("path"):
                scope[f"outputs.artifacts.{a['name']}.path"] = a["path"]
        for p in (tmpl.get("outputs") or {}).get("parameters") or []:
            if (p.get("valueFrom") or {}).get("path"):
                scope[f"outputs.parameters.{p['name']}.path"] = p["valueFrom"]["path"]
        return dict(substitute_obj(tmpl, scope, _none))

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
            return self._run_pod(call, tmpl, retried, log_key)
        except (WorkflowInputError, ExpressionError, ArtifactError) as exc:
            with self.lock:
                existing = self.nodes.get(node_id(self.name, call.name))
            if existing is None:
                return self._error_node(call, str(exc))
            return self._set_phase(existing, "Error", str(exc))

    # ------------------------------------------------------------------------------------- retries

    def _execute_retry(self, call: Call, tmpl: dict[str, Any], policy: RetryPolicy) -> Node:
        rnode = self._create(
            call.name,
            "Retry",
            "Running",
            boundary_id=call.boundary_id,
            parents=call.parents,
            template_name=call.template_name,
            inputs=tmpl.get("inputs"),
            hooked=call.hooked,
        )
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
            attempt_tmpl = substitute_obj(tmpl, local, _none)
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
            stop = self._retry_stop_reason(policy, child, attempts, tmpl)
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
                threading.Event().wait(max(0.0, until - time.time()))
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

    # ------------------------------------------------------------------------------------------ pods

    def _allocate_ip(self) -> str:
        with self.lock:
            ip = str(ipaddress.IPv4Address(self._next_ip))
            self._next_ip += 1
            if self._next_ip > int(ipaddress.IPv4Address("127.255.255.254")):
                self._next_ip = int(ipaddress.IPv4Address("127.0.0.2"))
        return ip

    def _pod_env(self, ctr: Mapping[str, Any], node: Node, view: PathView, ip: str | None) -> dict[str, str]:
        env = dict(os.environ)
        env.update(self.extra_env)
        bin_dir = str(Path(sys.executable).parent)
        env["PATH"] = bin_dir + os.pathsep + env.get("PATH", os.defpath)
        env.update(
            {
                "ARGO_WORKFLOW_NAME": self.name,
                "ARGO_WORKFLOW_UID": self.uid,
                "ARGO_NODE_ID": node.id,
                "ARGO_POD_NAME": node.id,
                "ARGO_TEMPLATE": json.dumps({"name": node.template_name}),
                "ARGO_CONTAINER_NAME": "main",
            }
        )
        if ip:
            env["ARGO_POD_IP"] = ip
            env["POD_IP"] = ip
        for item in ctr.get("env") or []:
            name = str(item.get("name"))
            if "value" in item:
                value = format_value(item.get("value") if item.get("value") is not None else "")
            else:
                source = item.get("valueFrom") or {}
                if "fieldRef" in source:
                    path = str((source["fieldRef"] or {}).get("fieldPath", ""))
                    value = {
                        "status.podIP": ip or "127.0.0.1",
                        "metadata.name": node.id,
                        "metadata.namespace": self.globals["workflow.namespace"],
                        "spec.nodeName": "localhost",
                    }.get(path, "")
                else:
                    found = self.extra_env.get(name, os.environ.get(name))
                    if found is None:
                        ref = source.get("secretKeyRef") or source.get("configMapKeyRef") or {}
                        if ref.get("optional"):
                            continue
                        kind = "secretKeyRef" if "secretKeyRef" in source else "configMapKeyRef"
                        raise WorkflowInputError(
                            f"env {name}: valueFrom.{kind} {ref.get('name')}/{ref.get('key')} "
                            f"resolves locally from the environment variable {name}, which is "
                            "not set; pass it in env="
                        )
                    value = found
            env[name] = view.rewrite(value)
        return env

    def _run_pod(
        self, call: Call, tmpl: dict[str, Any], retried: bool, log_key: tuple[str, int] | None
    ) -> Node:
        slots = self.pod_slots
        if slots is not None:
            slots.acquire()
        released = False

        def release() -> None:
            nonlocal released
            if slots is not None and not released:
                released = True
                slots.release()

        try:
            node = self._create(
                call.name,
                "Pod",
                "Pending",
                boundary_id=call.boundary_id,
                parents=call.parents,
                template_name=call.template_name,
                inputs=tmpl.get("inputs"),
                hooked=call.hooked,
                retried=retried,
            )
            if self.deadline is not None and not call.on_exit and time.time() >= self.deadline:
                return self._set_phase(node, "Failed", "Step exceeded its deadline")
            keep_slot = self._run_pod_process(node, call, tmpl, log_key or (node.id, 0), release)
            if not keep_slot:
                release()
            return node
        except BaseException:
            release()
            raise

    def _run_pod_process(
        self,
        node: Node,
        call: Call,
        tmpl: dict[str, Any],
        log_key: tuple[str, int],
        release: Callable[[], None],
    ) -> bool:
        """Run the pod's process; return True when a daemon keeps running (and holds its slot)."""
        script = tmpl.get("script")
        ctr: dict[str, Any] = dict(script or tmpl.get("container") or {})
        inputs = tmpl.get("inputs") or {}
        outputs_spec = tmpl.get("outputs") or {}
        declared = [a.get("path") for a in inputs.get("artifacts") or []]
        declared += [a.get("path") for a in outputs_spec.get("artifacts") or []]
        declared += [(p.get("valueFrom") or {}).get("path") for p in outputs_spec.get("parameters") or []]
        if script is not None:
            declared.append(SCRIPT_PATH)
        node_dir = self.run_dir / "nodes" / node.id
        view = PathView(node_dir / "root", node_dir / "work", [str(p) for p in declared if p])
        view.prepare()
        node.log_key, node.attempt = log_key
        for art in inputs.get("artifacts") or []:
            if not art.get("path"):
                continue
            if not has_location(art):
                if art.get("optional"):
                    continue
                self._set_phase(node, "Error", f"inputs.artifacts.{art.get('name')} has no location")
                return False
            try:
                load_artifact(self.store, art, view.private(str(art["path"])))
            except ObjectNotFound as exc:
                if art.get("optional"):
                    continue
                self._set_phase(node, "Error", f"failed to load input artifact {art.get('name')!r}: {exc}")
                return False
            except ArtifactError as exc:
                self._set_phase(node, "Error", str(exc))
                return False
        argv = [format_value(a) for a in list(ctr.get("command") or []) + list(ctr.get("args") or [])]
        if script is not None:
            script_file = view.private(SCRIPT_PATH)
            script_file.parent.mkdir(parents=True, exist_ok=True)
            script_file.write_text(view.rewrite(str(ctr.get("source") or "")))
            script_file.chmod(0o755)
            argv.append(SCRIPT_PATH)
        argv = [view.rewrite(a) for a in argv]
        if argv and argv[0] in ("python", "python3"):
            argv[0] = sys.executable
        daemon = bool(tmpl.get("daemon"))
        ip = self._allocate_ip() if daemon else None
        if ip:
            with self.lock:
                node.pod_ip = ip
        env = self._pod_env(ctr, node, view, ip)
        cwd = view.private(str(ctr["workingDir"])) if ctr.get("workingDir") else view.workdir
        cwd.mkdir(parents=True, exist_ok=True)
        tmpl_deadline = self._pod_deadline(tmpl, node, call)
        limits = [d for d in (tmpl_deadline, None if call.on_exit else self.deadline) if d is not None]
        deadline = min(limits) if limits else None
        log_dir = self.run_dir / "logs" / log_key[0]
        try:
            proc = StepProcess(
                argv,
                env=env,
                cwd=cwd,
                log_path=log_dir / f"attempt-{log_key[1]}.log",
                stdout_path=log_dir / f"attempt-{log_key[1]}.stdout",
            )
        except OSError as exc:
            with self.lock:
                node.outputs = {"exitCode": "127"}
            self._set_phase(
                node,
                "Error",
                f"main: StartError: cannot run {argv[0] if argv else '<nothing>'}: {exc.strerror or exc}",
            )
            return False
        with self.lock:
            node.process_started_at = proc.started_at
        self._set_phase(node, "Running")
        if daemon:
            return self._daemonize(
                node,
                call,
                tmpl,
                proc,
                view,
                env,
                cwd,
                deadline,
                log_dir / f"attempt-{log_key[1]}",
                release,
                tmpl_deadline,
            )
        outcome = proc.wait(deadline)
        self._complete_pod(node, tmpl, view, outcome, log_dir / f"attempt-{log_key[1]}", tmpl_deadline)
        return False

    def _pod_deadline(self, tmpl: Mapping[str, Any], node: Node, call: Call) -> float | None:
        candidates: list[float] = []
        if tmpl.get("activeDeadlineSeconds") not in (None, ""):
            candidates.append(
                time.time()
                + parse_duration(
                    tmpl["activeDeadlineSeconds"], f"templates.{call.template_name}.activeDeadlineSeconds"
                )
            )
        if tmpl.get("timeout") not in (None, ""):
            candidates.append(
                node.started_at + parse_duration(tmpl["timeout"], f"templates.{call.template_name}.timeout")
            )
        return min(candidates) if candidates else None

    def _complete_pod(
        self,
        node: Node,
        tmpl: Mapping[str, Any],
        view: PathView,
        outcome: ProcessOutcome,
        log_base: Path,
        tmpl_deadline: float | None,
        stopped_ok: bool = False,
    ) -> None:
        stdout = (
            log_base.with_suffix(".stdout").read_bytes().decode("utf-8", errors="replace")
            if log_base.with_suffix(".stdout").exists()
            else ""
        )
        result = stdout[:-1] if stdout.endswith("\n") else stdout
        outputs: dict[str, Any] = {"result": result, "exitCode": str(outcome.exit_code)}
        succeeded = stopped_ok or (outcome.exit_code == 0 and outcome.stopped is None)
        error: str | None = None
        try:
            self._collect_outputs(node, tmpl, view, outputs, strict=succeeded and not stopped_ok)
        except (ArtifactError, WorkflowInputError, OSError) as exc:
            error = str(exc)
        with self.lock:
            node.outputs = outputs
            node.process_finished_at = outcome.finished_at
        if succeeded and error is None:
            self._add_global_outputs(outputs)
            self._set_phase(node, "Succeeded", "")
        elif succeeded:
            self._set_phase(node, "Error", error)
        elif outcome.stopped == "deadline":
            own = tmpl_deadline is not None and outcome.finished_at >= tmpl_deadline
            message = (
                "Pod was active on the node longer than the specified deadline"
                if own
                else "Step exceeded its deadline"
            )
            self._set_phase(node, "Failed", message)
        else:
            self._set_phase(node, "Failed", f"main: Error (exit code {outcome.exit_code})")

    def _collect_outputs(
        self, node: Node, tmpl: Mapping[str, Any], view: PathView, outputs: dict[str, Any], strict: bool
    ) -> None:
        spec = tmpl.get("outputs") or {}
        params: list[dict[str, Any]] = []
        for p in spec.get("parameters") or []:
            vf = p.get("valueFrom") or {}
            value: str | None = None
            if vf.get("path"):
                path = view.private(str(vf["path"]))
                try:
                    text = path.read_text(errors="replace") if path.is_file() else _read_dir_error(path)
                    value = text[:-1] if text.endswith("\n") else text
                except OSError as exc:
                    if vf.get("default") is None:
                        if strict:
                            raise WorkflowInputError(
                                f"failed to get output parameter {p.get('name')!r}: open "
                                f"{vf['path']}: {exc.strerror or exc}"
                            ) from None
                        continue
            if value is None and vf.get("default") is not None:
                value = format_value(vf["default"])
            if value is None and p.get("value") is not None:
                value = format_value(p["value"])
            if value is None:
                if strict:
                    raise WorkflowInputError(f"output parameter {p.get('name')!r} has no value")
                continue
            entry = {k: v for k, v in p.items() if k != "valueFrom"}
            entry["value"] = value
            if vf:
                entry["valueFrom"] = vf
            params.append(entry)
        if params:
            outputs["parameters"] = params
        arts: list[dict[str, Any]] = []
        for a in spec.get("artifacts") or []:
            if not a.get("path"):
                continue
            source = view.private(str(a["path"]))
            if not source.exists():
                if a.get("optional") or not strict:
                    continue
                raise ArtifactError(
                    f"failed to save output artifact {a.get('name')!r}: {a['path']}: no such file or "
                    "directory"
                )
            arts.append(save_artifact(self.store, a, source, f"{self.name}/{node.id}"))
        if arts:
            outputs["artifacts"] = arts

    def _daemonize(
        self,
        node: Node,
        call: Call,
        tmpl: Mapping[str, Any],
        proc: StepProcess,
        view: PathView,
        env: Mapping[str, str],
        cwd: Path,
        deadline: float | None,
        log_base: Path,
        release: Callable[[], None],
        tmpl_deadline: float | None = None,
    ) -> bool:
        ctr = tmpl.get("script") or tmpl.get("container") or {}

        def exited(timeout: float) -> bool:
            try:
                proc.proc.wait(timeout=timeout)
                return True
            except Exception:  # subprocess.TimeoutExpired
                return False

        ready = wait_ready(ctr.get("readinessProbe"), node.pod_ip or "127.0.0.1", env, cwd, exited)
        if not ready:
            outcome = proc.wait(deadline)
            self._complete_pod(node, tmpl, view, outcome, log_base, tmpl_deadline)
            return False
        done = threading.Event()
        daemon = _Daemon(proc, node, call.boundary_id, done)
        with self.lock:
            node.daemoned = True
            self.daemons[node.id] = daemon
        self._changed(node)

        def monitor() -> None:
            try:
                outcome = proc.wait(deadline)
                stopped = outcome.stopped == "stopped"
                with self.lock:
                    self.daemons.pop(node.id, None)
                    node.daemoned = False
                self._complete_pod(node, tmpl, view, outcome, log_base, tmpl_deadline, stopped_ok=stopped)
                if daemon.retry_parent is not None:
                    with self.lock:
                        daemon.retry_parent.daemoned = False
                        daemon.retry_parent.outputs = copy.deepcopy(node.outputs)
                    self._set_phase(daemon.retry_parent, node.phase, node.message)
            finally:
                release()
                done.set()

        threading.Thread(target=monitor, name=f"daemon-{node.id}", daemon=True).start()
        return True

    def _stop_daemons(self, boundary_id: str | None, everything: bool = False) -> None:
        with self.lock:
            targets = [d for d in self.daemons.values() if everything or d.boundary_id == boundary_id]
        for daemon in targets:
            daemon.proc.stop("stopped")
        for daemon in targets:
            daemon.done.wait()

    # ------------------------------------------------------------------------------ steps and dags

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
            with self.lock:
                found = scope.artifacts.get(key) or self.global_artifacts.get(key)
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

    def _prepare_calls(
        self, step: dict[str, Any], scope: Scope, base_name: str, where: str
    ) -> list[tuple[str, dict[str, Any], str | None]]:
        """Resolve references, evaluate ``when`` and expand loops: ``(node name, step, skip message)``."""
        merged: dict[str, Any] = {**self._global_scope(), **scope.params}
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

    def _run_exit_hook(
        self, hook: Mapping[str, Any], node: Node, call: Call, scope: Scope, ref_kind: str, step_name: str
    ) -> Node | None:
        local = scope.copy()
        with self.lock:
            last = self._last_attempt(node)
            for name in {step_name, step_name.split("(")[0]}:
                local.update(node_scope(f"{ref_kind}.{name}", node, last))
        merged = {**self._global_scope(), **local.params}
        if hook.get("expression") and not evaluate(str(hook["expression"]), expand_scope(merged)):
            return None
        arguments = substitute_obj(dict(hook.get("arguments") or {}), merged, _none)
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
        attempts = [self.nodes[c] for c in node.children if not self.nodes[c].hooked]
        return attempts[-1] if attempts else None

    def _finish_template(
        self, node: Node, tmpl: Mapping[str, Any], scope: Scope, failed: tuple[str, str] | None
    ) -> Node:
        self._stop_daemons(node.id)
        if failed is not None:
            return self._set_phase(node, failed[0], failed[1])
        try:
            outputs = self._template_outputs(tmpl, scope)
        except (WorkflowInputError, ExpressionError) as exc:
            return self._set_phase(node, "Error", str(exc))
        if outputs:
            with self.lock:
                node.outputs = outputs
            self._add_global_outputs(outputs)
        return self._set_phase(node, "Succeeded")

    def _template_outputs(self, tmpl: Mapping[str, Any], scope: Scope) -> dict[str, Any] | None:
        spec = tmpl.get("outputs") or {}
        if not spec.get("parameters") and not spec.get("artifacts"):
            return None
        merged = {**self._global_scope(), **scope.params}
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
            found = scope.artifacts.get(key) or self.global_artifacts.get(key)
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

    def _seed_scope(self, tmpl: Mapping[str, Any]) -> Scope:
        scope = Scope()
        inputs = tmpl.get("inputs") or {}
        for p in inputs.get("parameters") or []:
            scope.params[f"inputs.parameters.{p['name']}"] = str(p.get("value"))
        for a in inputs.get("artifacts") or []:
            scope.artifacts[f"inputs.artifacts.{a['name']}"] = a
        return scope

    def _run_steps(self, call: Call, tmpl: dict[str, Any], retried: bool) -> Node:
        node = self._create(
            call.name,
            "Steps",
            "Running",
            boundary_id=call.boundary_id,
            parents=call.parents,
            template_name=call.template_name,
            inputs=tmpl.get("inputs"),
            hooked=call.hooked,
            retried=retried,
        )
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
                if child.failed_or_error and not _continues_on(step, child.phase):
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

    def _child_thread(
        self,
        body: dict[str, Any],
        call: Call,
        scope: Scope,
        kind: str,
        box: list[Node],
        slots: Slots | None,
        events: queue.SimpleQueue[Any] | None,
    ) -> None:
        try:
            box.append(self._run_child(body, call, scope, kind))
        except BaseException as exc:  # keep the run alive; record the failure on the node
            with self.lock:
                existing = self.nodes.get(node_id(self.name, call.name))
            box.append(
                self._set_phase(existing, "Error", f"internal error: {exc}")
                if existing
                else self._error_node(call, f"internal error: {exc}")
            )
        finally:
            if slots is not None:
                slots.release()
            if events is not None:
                events.put(call.name)

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

    # ------------------------------------------------------------------------------------------ DAG

    def _depends_for(
        self, tmpl: Mapping[str, Any], tasks: Mapping[str, Mapping[str, Any]], where: str
    ) -> dict[str, Depends]:
        key = id(tmpl.get("dag"))
        cached = self._depends_cache.get(key)
        if cached is None or set(cached) != set(tasks):
            cached = {name: resolve_depends(task, tasks, where) for name, task in tasks.items()}
            self._depends_cache[key] = cached
        return cached

    def _run_dag(self, call: Call, tmpl: dict[str, Any], retried: bool) -> Node:
        node = self._create(
            call.name,
            "DAG",
            "Running",
            boundary_id=call.boundary_id,
            parents=call.parents,
            template_name=call.template_name,
            inputs=tmpl.get("inputs"),
            hooked=call.hooked,
            retried=retried,
        )
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
                if _continues_on(tasks[name], phase):
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
        if dep.logic:
            try:
                with self.lock:
                    results = {d: self._task_results(task_node[d]) for d in dep.dependencies}
                run = dep.evaluate(results)
            except ExpressionError as exc:
                task_node[name] = self._create(
                    node_name,
                    "Skipped",
                    "Error",
                    boundary_id=dag_node.id,
                    parents=parents,
                    template_name=task.get("template"),
                    message=str(exc),
                )
                return
            if not run:
                task_node[name] = self._create(
                    node_name,
                    "Skipped",
                    "Omitted",
                    boundary_id=dag_node.id,
                    parents=parents,
                    template_name=task.get("template"),
                    message="omitted: depends condition not met",
                )
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
            task_node[name] = self._create(
                node_name,
                "Skipped",
                "Error",
                boundary_id=dag_node.id,
                parents=parents,
                template_name=task.get("template"),
                message=str(exc),
            )
            return
        is_loop = len(calls) != 1 or calls[0][0] != node_name
        if len(calls) == 1 and calls[0][0] == node_name and calls[0][2] is not None:
            task_node[name] = self._create(
                node_name,
                "Skipped",
                "Skipped",
                boundary_id=dag_node.id,
                parents=parents,
                template_name=task.get("template"),
                message=calls[0][2],
            )
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


def _continues_on(step: Mapping[str, Any], phase: str) -> bool:
    continue_on = step.get("continueOn") or {}
    return bool(
        (phase == "Failed" and continue_on.get("failed")) or (phase == "Error" and continue_on.get("error"))
    )


def _seconds(node: Node) -> str:
    """A node's duration as Argo reports ``lastRetry.duration``: from timestamps kept to the second."""
    end = node.finished_at or time.time()
    return str(int(end) - int(node.started_at))


def _read_dir_error(path: Path) -> str:
    if path.is_dir():
        raise IsADirectoryError(21, "is a directory", str(path))
    raise FileNotFoundError(2, "no such file or directory", str(path))


def generate_name(prefix: str) -> str:
    """``prefix`` + 5 random ``[a-z0-9]``, like Kubernetes' generateName."""
    alphabet = string.ascii_lowercase + string.digits
    return prefix + "".join(random.choice(alphabet) for _ in range(5))


def new_uid() -> str:
    return str(uuid.uuid4())
