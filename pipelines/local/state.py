"""Workflow-wide state shared by every part of the executor: globals, nodes, ``status.json`` and daemons.

:class:`WorkflowState` is the base class of :class:`~pipelines.local.engine.Engine` and of the runners it
is assembled from (:mod:`.binding`, :mod:`.pods`, :mod:`.children`, :mod:`.step_groups`, :mod:`.dag`). It
holds the ``workflow.*`` variables and the workflow's global outputs, creates nodes and moves their phases
under one lock — each change is reported to ``on_node`` and wakes a background thread that rewrites
``status.json`` atomically, coalescing bursts — and keeps the registry of running daemon pods, which are
stopped when their boundary (or the workflow) finishes. It also keeps every running pod, so that
:meth:`WorkflowState.interrupt` can stop the whole run, as ``argo stop`` does. :class:`Call` is one
template invocation.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from argofl.pipelines.local.addresses import AddressPool
from argofl.pipelines.local.errors import LocalExecutorError
from argofl.pipelines.local.expressions import go_json
from argofl.pipelines.local.model import FULFILLED, Node, node_id, rfc3339
from argofl.pipelines.local.process import StepProcess
from argofl.pipelines.local.slots import Slots
from argofl.pipelines.local.templating import NONE, substitute
from argofl.steps.store import Store

__all__ = ["EXIT_HANDLER_GRACE_SECONDS", "Call", "Daemon", "RunningPod", "WorkflowState"]

EXIT_HANDLER_GRACE_SECONDS = 60.0
"""After an interrupt, how long the exit handler may run before it is stopped too."""


_LOOP_CHILD = re.compile(r"^(.*)\((\d+):[^()]*\)$")
"""A loop child's node name, ``<loop node name>(<index>:<item>)`` (the item has no parentheses)."""


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


class RunningPod(Protocol):
    """What the executor needs of a running pod, whatever runs it: a way to stop it."""

    def stop(self, reason: str) -> None:
        """Stop every process of the pod (TERM, then KILL after a grace); ``reason`` is recorded."""


@dataclass
class Daemon:
    """A running daemon pod: its process, node and boundary; ``done`` is set once it has exited."""

    proc: StepProcess
    node: Node
    boundary_id: str | None
    done: threading.Event
    retry_parent: Node | None = None


class WorkflowState(ABC):
    """The state of one workflow run; :class:`~pipelines.local.engine.Engine` adds the behaviour."""

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
        self.daemons: dict[str, Daemon] = {}
        self.pods: dict[str, tuple[RunningPod, bool]] = {}  # node id -> (pod, runs the exit handler)
        self.interrupted: str | None = None  # the message nodes end with after interrupt()
        self.hard_stopped = False  # a second interrupt: the exit handler is stopped too
        self._interrupt_event = threading.Event()
        self._exit_grace: threading.Timer | None = None
        self.addresses = AddressPool()
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
            value = substitute(str(p["value"]), g, NONE)
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

    def _create_for_call(
        self, call: Call, type_: str, phase: str, tmpl: Mapping[str, Any], *, retried: bool = False
    ) -> Node:
        """The node of a template call (its name, boundary, parents, template and inputs)."""
        return self._create(
            call.name,
            type_,
            phase,
            boundary_id=call.boundary_id,
            parents=call.parents,
            template_name=call.template_name,
            inputs=tmpl.get("inputs"),
            hooked=call.hooked,
            retried=retried,
        )

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
        """Make ``child_id`` a child of ``parent_id``. Loop children are created by concurrent threads;
        they are kept in index order, as Argo's controller creates them."""
        with self.lock:
            parent = self.nodes.get(parent_id)
            if parent is None or child_id in parent.children:
                return
            position = len(parent.children)
            loop = _LOOP_CHILD.match(self.nodes[child_id].name)
            if loop is not None:
                base, index = loop.group(1), int(loop.group(2))
                for i, sibling_id in enumerate(parent.children):
                    sibling = _LOOP_CHILD.match(self.nodes[sibling_id].name)
                    if sibling is not None and sibling.group(1) == base and int(sibling.group(2)) > index:
                        position = i
                        break
            parent.children.insert(position, child_id)

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

    # ------------------------------------------------------------------------------------- daemons

    def _wait_daemon_node(self, node: Node) -> None:
        """A daemon entrypoint runs until it exits: the workflow has nothing else to wait for."""
        for daemon in list(self.daemons.values()):
            if daemon.node.id == node.id or (
                daemon.retry_parent is not None and daemon.retry_parent.id == node.id
            ):
                daemon.done.wait()

    def _stop_daemons(self, boundary_id: str | None, everything: bool = False) -> None:
        with self.lock:
            targets = [d for d in self.daemons.values() if everything or d.boundary_id == boundary_id]
        for daemon in targets:
            daemon.proc.stop("stopped")
        for daemon in targets:
            daemon.done.wait()

    # ---------------------------------------------------------------------------------- interrupts

    def interrupt(self, message: str, *, hard: bool = False) -> list[threading.Thread]:
        """Stop the run as ``argo stop`` does: every running pod is stopped and no new pod starts (its node
        fails with ``message``); the exit handler still runs, for at most :data:`EXIT_HANDLER_GRACE_SECONDS`.
        ``hard`` (or the grace running out) stops the exit handler too. Safe to call from any thread;
        returns the threads stopping the pods."""
        with self.lock:
            first = self.interrupted is None
            if first:
                self.interrupted = message
            if hard:
                self.hard_stopped = True
            targets = [pod for pod, on_exit in self.pods.values() if hard or not on_exit]
        self._interrupt_event.set()
        if first and not hard:
            self._exit_grace = threading.Timer(
                EXIT_HANDLER_GRACE_SECONDS, self.interrupt, args=(message,), kwargs={"hard": True}
            )
            self._exit_grace.daemon = True
            self._exit_grace.start()
        threads = [
            threading.Thread(target=pod.stop, args=("interrupted",), name="interrupt", daemon=True)
            for pod in targets
        ]
        for thread in threads:
            thread.start()
        return threads

    def _stopping(self, call: Call) -> str | None:
        """The interrupt message when ``call`` must not start anything new, else None."""
        with self.lock:
            if self.interrupted is not None and (self.hard_stopped or not call.on_exit):
                return self.interrupted
        return None

    def _pod_started(self, node: Node, pod: RunningPod, call: Call) -> None:
        """Register a running pod; one started while an interrupt was under way is stopped at once."""
        with self.lock:
            self.pods[node.id] = (pod, call.on_exit)
        if self._stopping(call) is not None:
            pod.stop("interrupted")

    def _pod_ended(self, node: Node) -> None:
        with self.lock:
            self.pods.pop(node.id, None)

    def _finalize_nodes(self, message: str) -> None:
        """Every node still pending or running ends in Error with ``message`` (the run is over)."""
        with self.lock:
            open_nodes = [n for n in self.nodes.values() if n.phase not in FULFILLED]
        for node in open_nodes:
            self._set_phase(node, "Error", message)

    # ------------------------------------------------------------------------------ template dispatch

    @abstractmethod
    def execute(self, call: Call, *, retried: bool = False) -> Node:
        """Run one template invocation to completion (a daemon: until it is ready) and return its node."""
