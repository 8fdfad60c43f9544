"""The Docker runtime of the local executor: each pod runs as a container of its template's image.

:class:`DockerRuntime` turns a container/script template into ``docker create`` arguments — command and
args, the environment, ``workingDir``, the pod's and container's ``securityContext`` (user and group,
``runAsNonRoot``, read-only root filesystem, capabilities, ``allowPrivilegeEscalation``, seccomp),
``emptyDir`` volumes (a fresh host directory per pod, mode 0777 as the kubelet makes them), resource
limits (cpu, memory; ``nvidia.com/gpu`` through Docker's GPU support) — and runs it with ``docker start
-a`` (:class:`ContainerProcess`, so logs and deadlines work as for host processes). Input artifacts and a
script's source are bind-mounted at their declared paths; declared outputs are copied out of the stopped
container (``docker cp``) before they are collected. Every pod joins one network per workflow, with a
fixed address (``{{tasks.X.ip}}``, ``status.podIP``).

Everything the run creates carries the label ``argofl.run=<workflow name>`` and is removed by
:meth:`DockerRuntime.close`; a detached reaper (:mod:`pipelines.local.reaper`) removes it too when the
executor dies without closing (SIGKILL).
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import os
import random
import re
import subprocess
import sys
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from argofl.pipelines.local.errors import WorkflowInputError
from argofl.pipelines.local.process import TERM_GRACE_SECONDS, ProcessOutcome, StepProcess
from argofl.pipelines.local.reaper import remove_network

__all__ = [
    "RUN_LABEL",
    "ContainerOutcome",
    "ContainerProcess",
    "ContainerStartError",
    "DockerOptions",
    "DockerRuntime",
    "exec_in_container",
    "parse_image_map",
]

RUN_LABEL = "argofl.run"
DOCKER_TIMEOUT = 120.0
_QUANTITY = re.compile(r"^([0-9.]+)(Ki|Mi|Gi|Ti|Pi|Ei|k|K|M|G|T|P|E|m)?$")
_BINARY = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "Pi": 2**50, "Ei": 2**60}
_DECIMAL = {"k": 10**3, "K": 10**3, "M": 10**6, "G": 10**9, "T": 10**12, "P": 10**15, "E": 10**18}


class ContainerStartError(Exception):
    """A pod that cannot become a container (image missing, runAsNonRoot as root ...): one line."""


@dataclass(frozen=True)
class DockerOptions:
    """How pods become containers: ``image_map`` replaces images, ``binds`` are host paths mounted at the
    same path in every container, ``ignore_gpu`` drops GPU requests the engine cannot serve."""

    image_map: Mapping[str, str] = field(default_factory=dict)
    binds: tuple[str, ...] = ()
    ignore_gpu: bool = False
    docker: str = "docker"


def parse_image_map(values: Sequence[str]) -> dict[str, str]:
    """``FROM=TO`` items (``--image-map``) as a mapping (``*=TO``: every image not mapped otherwise);
    a bad item is one line naming it."""
    out: dict[str, str] = {}
    for value in values:
        source, sep, target = value.partition("=")
        if not sep or not source.strip() or not target.strip():
            raise WorkflowInputError(f"--image-map {value!r}: expected FROM=TO (an image name on each side)")
        out[source.strip()] = target.strip()
    return out


@dataclass
class ContainerOutcome(ProcessOutcome):
    """A container's end: adds the reason Kubernetes would give (``OOMKilled``, ``Error``)."""

    reason: str = "Error"


class ContainerProcess(StepProcess):
    """``docker start -a`` of a created container: its output, exit and stop are the container's."""

    def __init__(
        self,
        runtime: DockerRuntime,
        container: str,
        *,
        outputs: Sequence[tuple[str, Path]],
        log_path: Path,
        stdout_path: Path,
    ) -> None:
        self.runtime = runtime
        self.container = container
        self.outputs = list(outputs)
        self._outcome: ContainerOutcome | None = None
        self._wait_lock = threading.Lock()
        super().__init__(
            [runtime.docker, "start", "--attach", container],
            env=os.environ,
            cwd=Path.cwd(),
            log_path=log_path,
            stdout_path=stdout_path,
        )

    def stop(self, reason: str, grace: float = TERM_GRACE_SECONDS) -> None:
        """SIGTERM the container, SIGKILL it after ``grace`` seconds (as the kubelet does)."""
        with self._lock:
            if self._stop_reason is None:
                self._stop_reason = reason
        self.runtime.docker_quiet("kill", "--signal", "TERM", self.container)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(timeout=grace)
        self.runtime.docker_quiet("kill", self.container)

    def wait(self, deadline: float | None = None) -> ContainerOutcome:
        """Wait for the container to exit (stopping it at ``deadline``), then copy its outputs out."""
        with self._wait_lock:
            if self._outcome is not None:
                return self._outcome
            base = super().wait(deadline)
            self.runtime.docker_quiet("wait", self.container)
            state = self.runtime.inspect(self.container).get("State") or {}
            exit_code = int(state.get("ExitCode", base.exit_code))
            reason = "OOMKilled" if state.get("OOMKilled") else "Error"
            for inside, host in self.outputs:
                self.runtime.copy_out(self.container, inside, host)
            self.runtime.docker_quiet("rm", "--force", "--volumes", self.container)
            self._outcome = ContainerOutcome(
                exit_code, base.stopped, base.started_at, base.finished_at, reason
            )
            return self._outcome


class DockerRuntime:
    """Creates, runs and removes the containers and the network of one workflow run."""

    def __init__(self, options: DockerOptions, run_name: str, run_dir: Path) -> None:
        self.options = options
        self.docker = options.docker
        self.run_name = run_name
        self.run_dir = run_dir
        self.label = f"{RUN_LABEL}={run_name}"
        self.network = f"argofl-{run_name}"[:60]
        self._lock = threading.Lock()
        self._subnet: ipaddress.IPv4Network | None = None
        self._next_host = 0
        self._reaper: subprocess.Popen[bytes] | None = None
        self._reaper_pipe: int | None = None
        self._gpu: bool | None = None
        self._images: dict[str, dict[str, Any]] = {}

    # ---------------------------------------------------------------------------------- docker CLI

    def _docker(self, *args: str, check: bool = True, timeout: float = DOCKER_TIMEOUT) -> str:
        try:
            done = subprocess.run(
                [self.docker, *args], capture_output=True, text=True, check=False, timeout=timeout
            )
        except FileNotFoundError:
            raise WorkflowInputError(
                f"--runtime docker: no {self.docker!r} command; install Docker (apt-get install docker.io) "
                "or use --runtime process"
            ) from None
        if check and done.returncode != 0:
            detail = (done.stderr.strip().splitlines() or [f"exit {done.returncode}"])[-1]
            raise ContainerStartError(f"docker {args[0]}: {detail}")
        return done.stdout

    def docker_quiet(self, *args: str) -> None:
        """Run a docker command whose failure does not matter (the thing is already gone)."""
        with contextlib.suppress(subprocess.TimeoutExpired, OSError):
            subprocess.run([self.docker, *args], capture_output=True, check=False, timeout=DOCKER_TIMEOUT)

    def inspect(self, name: str) -> dict[str, Any]:
        try:
            data = json.loads(self._docker("inspect", name))
        except (ContainerStartError, ValueError):
            return {}
        return data[0] if data else {}

    def copy_out(self, container: str, inside: str, host: Path) -> None:
        """``docker cp`` ``inside`` of the (stopped) container to ``host``; a missing path copies nothing."""
        host.parent.mkdir(parents=True, exist_ok=True)
        if host.is_dir():
            # docker cp copies a directory *into* an existing one; give it a fresh place
            with contextlib.suppress(OSError):
                host.rmdir()
        self.docker_quiet("cp", f"{container}:{inside}", str(host))

    # -------------------------------------------------------------------------------- the run

    def open(self) -> None:
        """Check the engine, start the reaper and create the workflow's network."""
        probe = (
            subprocess.run(
                [self.docker, "info", "--format", "{{json .Runtimes}}"],
                capture_output=True,
                text=True,
                check=False,
                timeout=DOCKER_TIMEOUT,
            )
            if _which(self.docker)
            else None
        )
        if probe is None:
            raise WorkflowInputError(
                f"--runtime docker: no {self.docker!r} command; install Docker (apt-get install docker.io) "
                "or use --runtime process"
            )
        if probe.returncode != 0:
            detail = (probe.stderr.strip().splitlines() or ["no answer"])[-1]
            raise WorkflowInputError(
                f"--runtime docker: no Docker engine answers ({detail}); start one (sudo dockerd &, or "
                "systemctl start docker) or use --runtime process"
            )
        self._gpu = "nvidia" in probe.stdout
        self._start_reaper()
        self._create_network()

    def close(self) -> None:
        """Remove every container and the network of this run (idempotent)."""
        ids = self._docker("ps", "--all", "--quiet", "--filter", f"label={self.label}", check=False).split()
        if ids:
            self.docker_quiet("rm", "--force", "--volumes", *ids)
        with contextlib.suppress(subprocess.TimeoutExpired, OSError):
            remove_network(self.docker, self.network, DOCKER_TIMEOUT)
        if self._reaper_pipe is not None:
            with contextlib.suppress(OSError):
                os.close(self._reaper_pipe)
            self._reaper_pipe = None
        if self._reaper is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                self._reaper.wait(timeout=DOCKER_TIMEOUT)
            self._reaper = None

    def _start_reaper(self) -> None:
        """A detached process that removes the run's containers once this process is gone.

        It blocks reading a pipe whose only writer is this process: the pipe closes when :meth:`close`
        runs or when this process dies in any way (SIGKILL included), so nothing polls.
        """
        read_end, write_end = os.pipe()
        try:
            self._reaper = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "argofl.pipelines.local.reaper",
                    self.docker,
                    self.label,
                    self.network,
                ],
                stdin=read_end,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                start_new_session=True,
                close_fds=True,
                cwd=str(Path(__file__).resolve().parents[2]),
            )
        finally:
            os.close(read_end)
        self._reaper_pipe = write_end

    def _create_network(self) -> None:
        """A bridge network with a /24 of its own: pods get fixed addresses from its upper half."""
        rng = random.Random()
        last = ""
        for _ in range(64):
            subnet = ipaddress.IPv4Network(f"10.{rng.randrange(200, 255)}.{rng.randrange(256)}.0/24")
            dynamic = ipaddress.IPv4Network(f"{subnet.network_address}/25")
            done = subprocess.run(
                [
                    self.docker,
                    "network",
                    "create",
                    "--label",
                    self.label,
                    "--subnet",
                    str(subnet),
                    "--ip-range",
                    str(dynamic),
                    self.network,
                ],
                capture_output=True,
                text=True,
                check=False,
                timeout=DOCKER_TIMEOUT,
            )
            if done.returncode == 0:
                self._subnet = subnet
                return
            last = done.stderr.strip()
            if "overlap" not in last and "already exists" not in last:
                break
        raise WorkflowInputError(f"--runtime docker: cannot create the network {self.network}: {last}")

    def allocate_ip(self) -> str:
        """The next fixed address of the upper half of the run's subnet (.128-.254, reused cyclically)."""
        if self._subnet is None:
            raise ContainerStartError("the run's network was not created")
        with self._lock:
            host = 128 + self._next_host % 127
            self._next_host += 1
        return str(self._subnet.network_address + host)

    # ------------------------------------------------------------------------------ containers

    def image(self, name: str) -> str:
        """``name`` after ``--image-map``; a missing image is one line on how to get it."""
        mapping = self.options.image_map
        image = mapping.get(name) or mapping.get("*") or name
        if image in self._images:
            return image
        info = self.inspect_image(image)
        if not info:
            mapped = f" (mapped from {name})" if image != name else ""
            hint = "build it (make images)" if image.startswith("argofl/") else f"docker pull {image}"
            raise ContainerStartError(
                f"image {image}{mapped} is not present in the local Docker engine: {hint}, or map it "
                f"to a local image with --image-map {name}=IMAGE"
            )
        self._images[image] = info
        return image

    def inspect_image(self, image: str) -> dict[str, Any]:
        try:
            data = json.loads(self._docker("image", "inspect", image))
        except (ContainerStartError, ValueError):
            return {}
        return data[0] if data else {}

    def create(
        self,
        *,
        node_id: str,
        spec: Mapping[str, Any],
        tmpl: Mapping[str, Any],
        ctr: Mapping[str, Any],
        argv: Sequence[str],
        env: Mapping[str, str],
        ip: str,
        mounts: Sequence[tuple[Path, str, bool]],
        volumes_dir: Path,
    ) -> str:
        """``docker create`` the pod's main container; returns its id."""
        image = self.image(str(ctr.get("image") or ""))
        args = [
            "create",
            "--label",
            self.label,
            "--name",
            f"{self.run_name}-{node_id}"[-120:].lstrip("-.") or node_id,
            "--hostname",
            node_id[-63:].strip("-.") or "pod",
            "--network",
            self.network,
            "--ip",
            ip,
        ]
        for key, value in env.items():
            args += ["--env", f"{key}={value}"]
        if ctr.get("workingDir"):
            args += ["--workdir", str(ctr["workingDir"])]
        args += self._security_args(spec, tmpl, ctr, image)
        args += self._resource_args(ctr)
        args += self._volume_args(spec, tmpl, ctr, volumes_dir)
        for bind in self.options.binds:
            args += ["--mount", f"type=bind,source={bind},target={bind}"]
        for source, target, read_only in mounts:
            args += [
                "--mount",
                f"type=bind,source={source},target={target}" + (",readonly" if read_only else ""),
            ]
        command = list(argv)
        if command:
            args += ["--entrypoint", command[0], image, *command[1:]]
        else:
            args.append(image)
        return self._docker(*args).strip()

    def _security_args(
        self, spec: Mapping[str, Any], tmpl: Mapping[str, Any], ctr: Mapping[str, Any], image: str
    ) -> list[str]:
        pod = {**(spec.get("securityContext") or {}), **(tmpl.get("securityContext") or {})}
        own = ctr.get("securityContext") or {}
        merged = {**pod, **own}
        args: list[str] = []
        user = merged.get("runAsUser")
        group = merged.get("runAsGroup")
        image_user = str((self._images.get(image, {}).get("Config") or {}).get("User") or "")
        if user is not None:
            args += ["--user", f"{int(user)}" + (f":{int(group)}" if group is not None else "")]
        elif group is not None:
            uid = image_user.split(":")[0] or "0"
            args += ["--user", f"{uid}:{int(group)}"]
        if merged.get("runAsNonRoot"):
            effective = str(user) if user is not None else image_user.split(":")[0]
            if not effective.isdigit():
                raise ContainerStartError(
                    f"container has runAsNonRoot and image {image} has non-numeric user "
                    f"({effective or 'root'}), cannot verify user is non-root"
                )
            if int(effective) == 0:
                raise ContainerStartError(f"container has runAsNonRoot and image {image} will run as root")
        if pod.get("fsGroup") is not None:
            args += ["--group-add", str(int(pod["fsGroup"]))]
        for extra in pod.get("supplementalGroups") or []:
            args += ["--group-add", str(int(extra))]
        if merged.get("readOnlyRootFilesystem"):
            args.append("--read-only")
        if merged.get("privileged"):
            args.append("--privileged")
        if merged.get("allowPrivilegeEscalation") is False:
            args += ["--security-opt", "no-new-privileges"]
        caps = merged.get("capabilities") or {}
        for cap in caps.get("drop") or []:
            args += ["--cap-drop", str(cap)]
        for cap in caps.get("add") or []:
            args += ["--cap-add", str(cap)]
        seccomp = (merged.get("seccompProfile") or {}).get("type")
        if seccomp == "Unconfined":
            args += ["--security-opt", "seccomp=unconfined"]
        return args

    def _resource_args(self, ctr: Mapping[str, Any]) -> list[str]:
        limits = (ctr.get("resources") or {}).get("limits") or {}
        requests = (ctr.get("resources") or {}).get("requests") or {}
        args: list[str] = []
        if limits.get("cpu") not in (None, ""):
            args += ["--cpus", f"{_quantity(limits['cpu'], 'resources.limits.cpu'):g}"]
        if limits.get("memory") not in (None, ""):
            memory = int(_quantity(limits["memory"], "resources.limits.memory"))
            args += ["--memory", str(memory), "--memory-swap", str(memory)]
        gpus = limits.get("nvidia.com/gpu") or requests.get("nvidia.com/gpu")
        if gpus not in (None, "", 0, "0"):
            if self._gpu:
                args += ["--gpus", str(int(str(gpus)))]
            elif not self.options.ignore_gpu:
                raise ContainerStartError(
                    f"the pod requests nvidia.com/gpu: {gpus}, but this Docker engine has no GPU runtime "
                    "(install the NVIDIA Container Toolkit), or pass --ignore-gpu to run it without"
                )
        return args

    def _volume_args(
        self, spec: Mapping[str, Any], tmpl: Mapping[str, Any], ctr: Mapping[str, Any], volumes_dir: Path
    ) -> list[str]:
        volumes = {
            str(v.get("name")): v for v in [*(spec.get("volumes") or []), *(tmpl.get("volumes") or [])]
        }
        args: list[str] = []
        for mount in ctr.get("volumeMounts") or []:
            name = str(mount.get("name"))
            volume = volumes.get(name)
            if volume is None or "emptyDir" not in volume:
                raise ContainerStartError(
                    f"volumeMounts {name}: only emptyDir volumes run in containers locally"
                )
            source = volumes_dir / name
            if mount.get("subPath"):
                source = source / str(mount["subPath"])
            source.mkdir(parents=True, exist_ok=True)
            source.chmod(0o777)  # as the kubelet makes an emptyDir
            target = str(PurePosixPath(str(mount.get("mountPath"))))
            args += [
                "--mount",
                f"type=bind,source={source},target={target}" + (",readonly" if mount.get("readOnly") else ""),
            ]
        return args


def _quantity(value: Any, where: str) -> float:
    """A Kubernetes quantity (``500m``, ``2Gi``, ``1.5``) as a number."""
    match = _QUANTITY.match(str(value).strip())
    if not match:
        raise ContainerStartError(f"{where}: {value!r} is not a Kubernetes quantity (like 500m, 2Gi, 1)")
    number, suffix = float(match.group(1)), match.group(2)
    if suffix == "m":
        return number / 1000
    if suffix in _BINARY:
        return number * _BINARY[suffix]
    if suffix in _DECIMAL:
        return number * _DECIMAL[suffix]
    return number


def _which(command: str) -> bool:
    from shutil import which

    return which(command) is not None


def wait_started(runtime: DockerRuntime, container: str, timeout: float = 10.0) -> None:
    """Block until ``container`` is running or has exited (``docker start -a`` has no started signal)."""
    end = time.monotonic() + timeout
    delay = 0.02
    while time.monotonic() < end:
        state = runtime.inspect(container).get("State") or {}
        if state.get("Running") or state.get("FinishedAt", "0001").split("-")[0] != "0001":
            return
        time.sleep(delay)
        delay = min(delay * 2, 0.5)


def exec_in_container(tmpl: Mapping[str, Any], docker: str, container: str) -> dict[str, Any]:
    """``tmpl`` with an ``exec`` readiness probe run inside ``container`` (``docker exec``)."""
    key = "script" if tmpl.get("script") is not None else "container"
    ctr = dict(tmpl.get(key) or {})
    probe = ctr.get("readinessProbe")
    if not probe or "exec" not in probe:
        return dict(tmpl)
    command = list((probe.get("exec") or {}).get("command") or [])
    ctr["readinessProbe"] = {**probe, "exec": {"command": [docker, "exec", container, *command]}}
    return {**tmpl, key: ctr}
