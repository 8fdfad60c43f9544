"""Workflow-wide state the runners share: globals, global outputs, deadlines, daemons and running pods.

:class:`WorkflowState` holds the ``workflow.*`` variables and the workflow's global outputs, the run's
phase and ``status.json`` (:mod:`.status_file`), its :class:`~.graph.NodeGraph` (whose lock also guards
this state), the registry of running daemon pods, which are stopped when their boundary (or the
workflow) finishes, and every running pod, so that :meth:`WorkflowState.interrupt` can stop the whole run,
as ``argo stop`` does. The runners (:mod:`.pods`, :mod:`.step_groups`, :mod:`.dag`) receive it.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any, Protocol

from argofl.pipelines.local.addresses import AddressPool
from argofl.pipelines.local.containers import DockerRuntime
from argofl.pipelines.local.expressions import go_json
from argofl.pipelines.local.graph import Call, NodeGraph
from argofl.pipelines.local.model import Node, Phase, rfc3339
from argofl.pipelines.local.process import StepProcess
from argofl.pipelines.local.refs import KeyRefs
from argofl.pipelines.local.slots import Slots
from argofl.pipelines.local.status_file import StatusFile
from argofl.pipelines.local.templating import NONE, substitute
from argofl.steps.store import Store

__all__ = ["EXIT_HANDLER_GRACE_SECONDS", "Daemon", "RunningPod", "WorkflowState"]

EXIT_HANDLER_GRACE_SECONDS = 60.0
"""After an interrupt, how long the exit handler may run before it is stopped too."""


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


@dataclass(frozen=True)
class RunOptions:
    """What one workflow run is given: the Workflow, where it runs, and the shared services
    (store, environment, progress callback, key references, container runtime)."""

    name: str
    uid: str
    metadata: Mapping[str, Any]
    spec: Mapping[str, Any]
    templates: Mapping[str, dict[str, Any]]
    parameters: list[dict[str, Any]]
    run_dir: Path
    store: Store
    env: Mapping[str, str] | None
    on_node: Callable[[dict[str, Any]], None] | None
    parallelism: int | None
    key_refs: KeyRefs | None = None
    containers: DockerRuntime | None = None


class WorkflowState:
    """The state of one workflow run, shared by the runners that execute it."""

    def __init__(self, options: RunOptions) -> None:
        self.options = options
        name, spec, run_dir, parallelism = options.name, options.spec, options.run_dir, options.parallelism
        self.name = name
        self.uid = options.uid
        self.metadata = options.metadata
        self.spec = spec
        self.templates = options.templates
        self.parameters = options.parameters
        self.run_dir = run_dir
        self.store = options.store
        self.extra_env = dict(options.env or {})
        self.status_file = StatusFile(run_dir, self.status)
        self.graph = NodeGraph(name, on_node=options.on_node, on_dirty=self.status_file.mark_dirty)
        self.lock = self.graph.lock
        self.key_refs: KeyRefs = options.key_refs or MappingProxyType({})  # --secrets (:mod:`.refs`)
        self.containers = options.containers  # --runtime docker: pods are containers (:mod:`.containers`)
        self.started_at = time.time()
        self.finished_at: float | None = None
        self.phase: Phase = Phase.RUNNING
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
        self.interrupt_event = threading.Event()
        self.exit_grace: threading.Timer | None = None
        self.addresses = AddressPool()
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
        g["workflow.status"] = Phase.RUNNING
        # parameter values may themselves use workflow.* variables
        for p in self.parameters:
            value = substitute(str(p["value"]), g, NONE)
            p["value"] = value
            g[f"workflow.parameters.{p['name']}"] = value

    def global_scope(self) -> dict[str, Any]:
        with self.lock:
            scope: dict[str, Any] = dict(self.globals)
        scope["workflow.duration"] = f"{time.time() - self.started_at:f}"
        return scope

    def add_global_outputs(self, outputs: Mapping[str, Any] | None) -> None:
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

    # ------------------------------------------------------------------------------------- status

    def status(self) -> dict[str, Any]:
        """The workflow's status in Argo's shape (``status.json``)."""
        with self.lock:
            status: dict[str, Any] = {
                "phase": str(self.phase),
                "startedAt": rfc3339(self.started_at),
                "finishedAt": rfc3339(self.finished_at),
                "nodes": {nid: n.to_dict() for nid, n in self.graph.nodes.items()},
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

    # ------------------------------------------------------------------------------------- daemons

    def wait_daemon_node(self, node: Node) -> None:
        """A daemon entrypoint runs until it exits: the workflow has nothing else to wait for."""
        for daemon in list(self.daemons.values()):
            if daemon.node.id == node.id or (
                daemon.retry_parent is not None and daemon.retry_parent.id == node.id
            ):
                daemon.done.wait()

    def stop_daemons(self, boundary_id: str | None, everything: bool = False) -> None:
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
        self.interrupt_event.set()
        if first and not hard:
            self.exit_grace = threading.Timer(
                EXIT_HANDLER_GRACE_SECONDS, self.interrupt, args=(message,), kwargs={"hard": True}
            )
            self.exit_grace.daemon = True
            self.exit_grace.start()
        threads = [
            threading.Thread(target=pod.stop, args=("interrupted",), name="interrupt", daemon=True)
            for pod in targets
        ]
        for thread in threads:
            thread.start()
        return threads

    def stopping(self, call: Call) -> str | None:
        """The interrupt message when ``call`` must not start anything new, else None."""
        with self.lock:
            if self.interrupted is not None and (self.hard_stopped or not call.on_exit):
                return self.interrupted
        return None

    def pod_started(self, node: Node, pod: RunningPod, call: Call) -> None:
        """Register a running pod; one started while an interrupt was under way is stopped at once."""
        with self.lock:
            self.pods[node.id] = (pod, call.on_exit)
        if self.stopping(call) is not None:
            pod.stop("interrupted")

    def pod_ended(self, node: Node) -> None:
        with self.lock:
            self.pods.pop(node.id, None)
