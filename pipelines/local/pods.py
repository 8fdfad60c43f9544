"""Container and script templates: each runs as one host process (a "pod"), see :mod:`.process`.

:class:`PodRunner` takes a pod slot (workflow ``parallelism``), gives the node a private view of its
declared paths (:mod:`.sandbox`), loads input artifacts, builds ``argv`` (a script's ``source`` is written
to :data:`SCRIPT_PATH` and appended), the environment and the working directory, and runs the process under
the template's ``activeDeadlineSeconds``/``timeout`` and the workflow's deadline. When it exits, output
parameters and artifacts are collected from the node's files and the phase is set the way Argo reports it.
A ``daemon`` template returns once its ``readinessProbe`` passes and keeps running (and holding its slot)
until it exits or its boundary finishes.

With a :class:`~.containers.DockerRuntime` in ``WorkflowState.containers`` (``--runtime docker``) each pod
is a container of its image instead (:meth:`PodRunner._run_container`); phases, logs and status are the
same. What the stages of one pod share travels in a :class:`Pod`.

Local approximations of the process runtime: the image is ignored and ``python``/``python3`` run the
current interpreter; a daemon gets a loopback address of its own as its pod IP (:mod:`.addresses`).
Both runtimes: ``env[].valueFrom.fieldRef`` knows ``status.podIP``, ``metadata.name``,
``metadata.namespace`` and ``spec.nodeName`` (``localhost``); ``secretKeyRef``/``configMapKeyRef`` read
the Secrets/ConfigMaps of a ``--secrets`` file (:mod:`.refs`), else the environment variable of the same
name (``env=`` first, then this process's environment).
"""

from __future__ import annotations

import copy
import json
import os
import sys
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from argofl.pipelines.local import forkserver
from argofl.pipelines.local.artifacts import ArtifactError, has_location, load_artifact, save_artifact
from argofl.pipelines.local.containers import (
    ContainerOutcome,
    ContainerProcess,
    ContainerStartError,
    exec_in_container,
)
from argofl.pipelines.local.errors import LocalExecutorError, WorkflowInputError
from argofl.pipelines.local.expressions import format_value
from argofl.pipelines.local.graph import Call, LogKey
from argofl.pipelines.local.model import Node, Phase
from argofl.pipelines.local.probes import wait_ready
from argofl.pipelines.local.process import ProcessOutcome, StepProcess
from argofl.pipelines.local.retry import parse_duration
from argofl.pipelines.local.sandbox import PathView
from argofl.pipelines.local.state import Daemon, WorkflowState
from argofl.steps.store import ObjectNotFound

__all__ = ["SCRIPT_PATH", "Pod", "PodRunner"]

SCRIPT_PATH = "/argo/staging/script"


@dataclass
class Pod:
    """One pod being run: its node and call, its bound template, its files and logs, and its slot."""

    node: Node
    call: Call
    tmpl: dict[str, Any]
    view: PathView
    log_base: Path  # logs/<owner>/attempt-<n>: ``.log`` (stdout and stderr) and ``.stdout``
    release: Callable[[], None]  # give the pod slot back (a daemon does once it has exited)
    tmpl_deadline: float | None = None  # the template's activeDeadlineSeconds/timeout, once started
    deadline: float | None = None  # the earlier of that and the workflow's deadline


class PodRunner:
    """Runs container and script templates as host processes, or as containers with ``state.containers``."""

    def __init__(self, state: WorkflowState) -> None:
        self.state = state
        self.graph = state.graph

    def _pod_env(self, ctr: Mapping[str, Any], node: Node, view: PathView, ip: str | None) -> dict[str, str]:
        """A host process's environment: this process's, ``env=``, and the template's (paths rewritten)."""
        env = forkserver.steps_environment(self.state.extra_env)
        env.update(self._template_env(ctr, node, ip, view.rewrite))
        return env

    def _template_env(
        self, ctr: Mapping[str, Any], node: Node, ip: str | None, rewrite: Callable[[str], str]
    ) -> dict[str, str]:
        """The variables Argo sets and the template's ``env`` (``valueFrom`` resolved locally)."""
        env: dict[str, str] = {}
        env.update(
            {
                "ARGO_WORKFLOW_NAME": self.state.name,
                "ARGO_WORKFLOW_UID": self.state.uid,
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
                        "metadata.namespace": self.state.globals["workflow.namespace"],
                        "spec.nodeName": "localhost",
                    }.get(path, "")
                else:
                    ref = source.get("secretKeyRef") or source.get("configMapKeyRef") or {}
                    kind = "Secret" if "secretKeyRef" in source else "ConfigMap"
                    found = self.state.key_refs.get((kind, str(ref.get("name"))), {}).get(str(ref.get("key")))
                    if found is None:
                        found = self.state.extra_env.get(name, os.environ.get(name))
                    if found is None:
                        if ref.get("optional"):
                            continue
                        raise WorkflowInputError(
                            f"env {name}: valueFrom.{kind[0].lower() + kind[1:]}KeyRef "
                            f"{ref.get('name')}/{ref.get('key')} is neither in a --secrets file nor set as "
                            f"the environment variable {name}; pass one of them"
                        )
                    value = found
            env[name] = rewrite(value)
        return env

    def run(self, call: Call, tmpl: dict[str, Any], retried: bool, log_key: LogKey | None = None) -> Node:
        slots = self.state.pod_slots
        if slots is not None:
            slots.acquire()
        released = False

        def release() -> None:
            nonlocal released
            if slots is not None and not released:
                released = True
                slots.release()

        keep_slot = False
        try:
            node = self.graph.create_for_call(call, "Pod", Phase.PENDING, tmpl, retried=retried)
            if self.state.deadline is not None and not call.on_exit and time.time() >= self.state.deadline:
                return self.graph.set_phase(node, Phase.FAILED, "Step exceeded its deadline")
            stopping = self.state.stopping(call)
            if stopping is not None:
                return self.graph.set_phase(node, Phase.FAILED, stopping)
            keep_slot = self._run_pod_process(node, call, tmpl, log_key or (node.id, 0), release)
            return node
        finally:
            if not keep_slot:  # a daemon that keeps running releases it when it ends
                release()

    def _run_pod_process(
        self, node: Node, call: Call, tmpl: dict[str, Any], log_key: LogKey, release: Callable[[], None]
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
        node_dir = self.state.run_dir / "nodes" / node.id
        view = PathView(node_dir / "root", node_dir / "work", [str(p) for p in declared if p])
        view.prepare()
        node.log_key, node.attempt = log_key
        log_dir = self.state.run_dir / "logs" / log_key[0]
        pod = Pod(node, call, tmpl, view, log_dir / f"attempt-{log_key[1]}", release)
        for art in inputs.get("artifacts") or []:
            if not art.get("path"):
                continue
            if not has_location(art):
                if art.get("optional"):
                    continue
                self.graph.set_phase(node, Phase.ERROR, f"inputs.artifacts.{art.get('name')} has no location")
                return False
            try:
                load_artifact(self.state.store, art, view.private(str(art["path"])))
            except ObjectNotFound as exc:
                if art.get("optional"):
                    continue
                self.graph.set_phase(
                    node, Phase.ERROR, f"failed to load input artifact {art.get('name')!r}: {exc}"
                )
                return False
            except ArtifactError as exc:
                self.graph.set_phase(node, Phase.ERROR, str(exc))
                return False
        argv = [format_value(a) for a in list(ctr.get("command") or []) + list(ctr.get("args") or [])]
        if self.state.containers is not None:
            return self._run_container(pod, ctr, argv)
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
        ip = self.state.addresses.allocate() if daemon else None
        if ip:
            with self.graph.lock:
                node.pod_ip = ip
        env = self._pod_env(ctr, node, view, ip)
        cwd = view.private(str(ctr["workingDir"])) if ctr.get("workingDir") else view.workdir
        cwd.mkdir(parents=True, exist_ok=True)
        self._set_deadlines(pod)
        try:
            proc = StepProcess(
                argv,
                env=env,
                cwd=cwd,
                log_path=pod.log_base.with_suffix(".log"),
                stdout_path=pod.log_base.with_suffix(".stdout"),
            )
        except OSError as exc:
            with self.graph.lock:
                node.outputs = {"exitCode": "127"}
            self.graph.set_phase(
                node,
                Phase.ERROR,
                f"main: StartError: cannot run {argv[0] if argv else '<nothing>'}: {exc.strerror or exc}",
            )
            return False
        with self.graph.lock:
            node.process_started_at = proc.started_at
        self.graph.set_phase(node, Phase.RUNNING)
        self.state.pod_started(node, proc, call)
        if daemon:
            return self._daemonize(pod, proc, env, cwd, ctr.get("readinessProbe"))
        self._complete_pod(pod, proc.wait(pod.deadline))
        return False

    def _run_container(self, pod: Pod, ctr: dict[str, Any], argv: list[str]) -> bool:
        """The Docker runtime's :meth:`_run_pod_process` (:mod:`.containers`): the same phases and status."""
        runtime = self.state.containers
        if runtime is None:
            raise LocalExecutorError("no container runtime")
        node, tmpl, view = pod.node, pod.tmpl, pod.view
        inputs = tmpl.get("inputs") or {}
        outputs_spec = tmpl.get("outputs") or {}
        mounts: list[tuple[Path, str, bool]] = []
        for art in inputs.get("artifacts") or []:
            source = view.private(str(art["path"])) if art.get("path") else None
            if source is not None and source.exists():
                mounts.append((source, str(art["path"]), False))
        if tmpl.get("script") is not None:
            script_file = view.private(SCRIPT_PATH)
            script_file.parent.mkdir(parents=True, exist_ok=True)
            script_file.write_text(str(ctr.get("source") or ""))
            script_file.chmod(0o755)
            mounts.append((script_file, SCRIPT_PATH, True))
            argv.append(SCRIPT_PATH)
        outputs = [str(a["path"]) for a in outputs_spec.get("artifacts") or [] if a.get("path")]
        outputs += [
            str((p.get("valueFrom") or {})["path"])
            for p in outputs_spec.get("parameters") or []
            if (p.get("valueFrom") or {}).get("path")
        ]
        daemon = bool(tmpl.get("daemon"))
        try:
            ip = runtime.allocate_ip()
            if daemon:
                with self.graph.lock:
                    node.pod_ip = ip
            env = dict(self.state.extra_env)
            env.update(self._template_env(ctr, node, ip, str))
            container = runtime.create(
                node_id=node.id,
                spec=self.state.spec,
                tmpl=tmpl,
                ctr=ctr,
                argv=argv,
                env=env,
                ip=ip,
                mounts=mounts,
                volumes_dir=self.state.run_dir / "nodes" / node.id / "volumes",
            )
            proc = ContainerProcess(
                runtime,
                container,
                outputs=[(path, view.private(path)) for path in outputs],
                log_path=pod.log_base.with_suffix(".log"),
                stdout_path=pod.log_base.with_suffix(".stdout"),
            )
        except ContainerStartError as exc:
            with self.graph.lock:
                node.outputs = {"exitCode": "128"}
            self.graph.set_phase(node, Phase.ERROR, f"main: StartError: {exc}")
            return False
        self._set_deadlines(pod)
        with self.graph.lock:
            node.process_started_at = proc.started_at
        self.graph.set_phase(node, Phase.RUNNING)
        self.state.pod_started(node, proc, pod.call)
        if daemon:
            probed = exec_in_container(tmpl, runtime.docker, container)
            cwd = view.workdir
            cwd.mkdir(parents=True, exist_ok=True)
            probe = (probed.get("script") or probed.get("container") or {}).get("readinessProbe")
            return self._daemonize(pod, proc, env, cwd, probe)
        self._complete_pod(pod, proc.wait(pod.deadline))
        return False

    def _set_deadlines(self, pod: Pod) -> None:
        """The pod's deadlines, counted from now (its start): the template's and the workflow's."""
        pod.tmpl_deadline = self._pod_deadline(pod.tmpl, pod.node, pod.call)
        workflow = None if pod.call.on_exit else self.state.deadline
        limits = [d for d in (pod.tmpl_deadline, workflow) if d is not None]
        pod.deadline = min(limits) if limits else None

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

    def _complete_pod(self, pod: Pod, outcome: ProcessOutcome, stopped_ok: bool = False) -> None:
        node, tmpl, view, log_base = pod.node, pod.tmpl, pod.view, pod.log_base
        self.state.pod_ended(node)
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
        with self.graph.lock:
            node.outputs = outputs
            node.process_finished_at = outcome.finished_at
        if succeeded and error is None:
            self.state.add_global_outputs(outputs)
            self.graph.set_phase(node, Phase.SUCCEEDED, "")
        elif succeeded:
            self.graph.set_phase(node, Phase.ERROR, error)
        elif outcome.stopped == "interrupted":
            self.graph.set_phase(node, Phase.FAILED, self.state.interrupted or "stopped")
        elif outcome.stopped == "deadline":
            own = pod.tmpl_deadline is not None and outcome.finished_at >= pod.tmpl_deadline
            message = (
                "Pod was active on the node longer than the specified deadline"
                if own
                else "Step exceeded its deadline"
            )
            self.graph.set_phase(node, Phase.FAILED, message)
        else:
            reason = outcome.reason if isinstance(outcome, ContainerOutcome) else "Error"
            message = f"main: {reason} (exit code {outcome.exit_code})"
            error_line = termination_message(log_base.with_suffix(".log"))
            self.graph.set_phase(node, Phase.FAILED, f"{message}: {error_line}" if error_line else message)

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
            arts.append(save_artifact(self.state.store, a, source, f"{self.state.name}/{node.id}"))
        if arts:
            outputs["artifacts"] = arts

    def _daemonize(
        self, pod: Pod, proc: StepProcess, env: Mapping[str, str], cwd: Path, probe: Mapping[str, Any] | None
    ) -> bool:
        """Wait for the daemon's ``readinessProbe``; once ready, a monitor thread completes the pod when
        it exits. True when the daemon keeps running (and holds its slot)."""
        node = pod.node

        def exited(timeout: float) -> bool:
            try:
                proc.proc.wait(timeout=timeout)
                return True
            except Exception:  # subprocess.TimeoutExpired
                return False

        ready = wait_ready(probe, node.pod_ip or "127.0.0.1", env, cwd, exited)
        if not ready:
            self._complete_pod(pod, proc.wait(pod.deadline))
            return False
        done = threading.Event()
        daemon = Daemon(proc, node, pod.call.boundary_id, done)
        with self.graph.lock:
            node.daemoned = True
            self.state.daemons[node.id] = daemon
        self.graph.changed(node)

        def monitor() -> None:
            try:
                outcome = proc.wait(pod.deadline)
                stopped = outcome.stopped == "stopped"
                with self.graph.lock:
                    self.state.daemons.pop(node.id, None)
                    node.daemoned = False
                self._complete_pod(pod, outcome, stopped_ok=stopped)
                if daemon.retry_parent is not None:
                    with self.graph.lock:
                        daemon.retry_parent.daemoned = False
                        daemon.retry_parent.outputs = copy.deepcopy(node.outputs)
                    self.graph.set_phase(daemon.retry_parent, node.phase, node.message)
            finally:
                pod.release()
                done.set()

        threading.Thread(target=monitor, name=f"daemon-{node.id}", daemon=True).start()
        return True


def _read_dir_error(path: Path) -> str:
    if path.is_dir():
        raise IsADirectoryError(21, "is a directory", str(path))
    raise FileNotFoundError(2, "no such file or directory", str(path))


_TAIL_BYTES = 64 * 1024


def termination_message(log_path: Path) -> str:
    """The last ``error: …`` line of a failed step's log: what an argofl step writes to Kubernetes'
    termination log, which Argo appends to the node's message (``main: Error (exit code 2): …``)."""
    try:
        with open(log_path, "rb") as log:
            log.seek(max(0, log.seek(0, os.SEEK_END) - _TAIL_BYTES))
            tail = log.read().decode("utf-8", errors="replace")
    except OSError:
        return ""
    lines = [line.strip() for line in tail.splitlines() if line.startswith("error: ")]
    return lines[-1][:1024] if lines else ""
