"""Fork server: ``argofl step …`` processes forked from an interpreter that has already imported them.

A fresh step process spends seconds importing Python, numpy, torch and MLflow before it does any work.
The fork server is one such interpreter, started once per executor process: it imports the step CLI and
the heavy libraries of the run's framework (:data:`PRELOAD` for torch, :data:`TENSORFLOW_PRELOAD` for
TensorFlow/Keras), then, per request, forks a child that becomes the step — its own
session and process group (like ``start_new_session``), stdin ``/dev/null``, stdout and stderr on the
descriptors the executor passed, the request's working directory, environment and ``argv``, default
signal dispositions — and runs ``argofl``'s ``main``. The child exits with ``main``'s exit code (an
uncaught ``KeyboardInterrupt`` by SIGINT, as Python does), and the server reports the status back, so the
executor waits on and kills a forked step exactly as it does a :class:`subprocess.Popen` (a
:class:`ForkedProcess` has the same ``pid``/``stdout``/``wait``/``poll``/``returncode``).

Only what the server can serve is forked (:func:`popen` runs everything else as a normal process):

* the command is ``argofl step …`` of this installation (``argofl`` found on the request's ``PATH`` is the
  script beside :data:`sys.executable`);
* every environment variable read when an interpreter or the preloaded libraries start
  (:func:`startup_environment`: ``PYTHON*``, ``LD_*``, ``LC_*``/``LANG``, ``TZ``, ``HOME``, the thread-count
  variables of OpenMP/MKL/OpenBLAS, ``CUDA_*``/``NVIDIA_*``, ``TORCH*``/``PYTORCH_*``, ``TF_*``,
  ``KERAS_*``, …) has the value the
  server started with; a step with, say, its own ``OMP_NUM_THREADS`` or ``CUDA_VISIBLE_DEVICES`` runs as a
  fresh process;
* ``ARGOFL_FORKSERVER`` is not ``0``/``false``/``off``/``no`` (the escape hatch; in the executor's
  environment or the step's).

Safety: the server never initialises CUDA, torch's intra-/inter-op thread pools or deterministic mode,
nor TensorFlow's runtime (each step's ``configure`` sets threads and determinism itself); it refuses to
serve (and every step runs as a normal process) if a preload started a Python thread, CUDA or
TensorFlow's eager context. Native threads that libraries start at
load and make fork-safe with their own ``pthread_atfork`` handlers (OpenBLAS's workers, the jemalloc
background thread of pyarrow, which ``import mlflow`` loads through pandas) are allowed, as they are under
``multiprocessing``'s fork start method. Forked children share the server's hash seed
and the preloaded module state; ``random`` and numpy's global generator are reseeded and ``tempfile``
forgets its cached directory in each child. The ``weakref.finalize`` callbacks of preloaded objects
(torch's operator libraries) belong to the server: a step's exit runs only its own.

A second server, forked from the first once that is ready, imports :data:`IDLE_PRELOAD` (what only
``finalize`` needs: TorchDynamo for the model's ``pt2`` export, seconds) in a thread of ``SCHED_IDLE``
priority, which runs only when a core has nothing else to do (a run's evaluations leave one idle). Once
done it forks the :data:`IDLE_STEPS`, which the first server passes on to it; until then the first forks
them. Its forked steps run at normal priority (a thread's policy is its own) and die with it; it dies
with the first server.

Lifetime: the server dies with the executor (``PR_SET_PDEATHSIG`` to the long-lived thread that started
it, and the end of its control socket), and each forked step dies with the server (its own
``PR_SET_PDEATHSIG``). ``argofl run`` starts it first thing (:func:`prestart`); a request made while it is
still importing waits for it (:data:`STARTING_WAIT_S`), and runs as a normal process if it fails.
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import errno
import json
import os
import selectors
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import IO, Any

from argofl.steps.switches import is_off

__all__ = [
    "DISABLE_VARIABLE",
    "IDLE_PRELOAD",
    "IDLE_STEPS",
    "PRELOAD",
    "PRELOADS",
    "TENSORFLOW_IDLE_PRELOAD",
    "TENSORFLOW_PRELOAD",
    "ForkServer",
    "ForkedProcess",
    "default_server",
    "framework_of",
    "popen",
    "preloads_for",
    "prestart",
    "prestart_steps",
    "startup_environment",
    "steps_environment",
]

DISABLE_VARIABLE = "ARGOFL_FORKSERVER"
"""Set to ``0`` (or ``false``/``off``/``no``) to run every step as a fresh process."""

_TRACKING = (
    "minio",
    "mlflow",
    "mlflow.tracking",
    "mlflow.entities",
    "mlflow.store.tracking.sqlalchemy_store",
)
_STEPS = (
    "argofl.pipelines.cli",
    "argofl.steps.cli",
    "argofl.steps.step_init",
    "argofl.steps.step_distribute",
    "argofl.steps.step_train",
    "argofl.steps.step_aggregate",
    "argofl.steps.step_evaluate",
    "argofl.steps.step_finalize",
    "argofl.steps.tracking",
)
_MODEL_LOGGING = (
    # the installed-packages map MLflow builds to check a logged model's requirements (~0.3 s)
    "mlflow.utils.requirements_utils:_init_modules_to_packages_map",
    # the pyfunc loader MLflow checks the logged model with, GitPython for its source tags
    "mlflow.pyfunc",
    "git",
)

PRELOAD = (
    "numpy",
    "safetensors.numpy",
    "torch",
    *_TRACKING,
    "argofl.steps.frameworks.torch_backend",
    *_STEPS,
)
"""Modules the server of a torch run imports before forking, or ``module:function`` to call once imported
(what is not installed, or fails, is skipped: the step then pays for it itself)."""

IDLE_PRELOAD = (
    "mlflow.pytorch",  # finalize logs the model with it
    "torch.export._trace",  # which mlflow.pytorch saves the model with (imports TorchDynamo: ~2 s)
    *_MODEL_LOGGING,
    # the parts of torch.export that load lazily when the model is logged (~0.1 s)
    "torch._inductor.ir",
    "torch._inductor.sizevars",
    "sympy.combinatorics",
)
"""What only :data:`IDLE_STEPS` need: imported by a second server, forked from the first once it is ready,
in a thread of idle scheduling priority (it takes only CPU time nothing else wants); it serves those steps
once done. Preloading them in the first server would delay every run's first step and make every fork
of every step dearer (page tables)."""

TENSORFLOW_PRELOAD = (
    "numpy",
    "safetensors.numpy",
    "argofl.steps.frameworks.keras_backend",  # TensorFlow and Keras (~4 s), as the backend imports them
    *_TRACKING,
    *_STEPS,
)
""":data:`PRELOAD` for a TensorFlow/Keras run: TensorFlow instead of torch, which its steps never import.
Importing TensorFlow starts no runtime (no eager context, no thread pool); the native threads it leaves
(SciPy's OpenBLAS workers, pyarrow's jemalloc) are of the fork-safe kinds described above."""

TENSORFLOW_IDLE_PRELOAD = ("mlflow.tensorflow", *_MODEL_LOGGING)
""":data:`IDLE_PRELOAD` for a TensorFlow/Keras run: ``finalize`` logs the model with ``mlflow.tensorflow``."""

PRELOADS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "torch": (PRELOAD, IDLE_PRELOAD),
    "tensorflow": (TENSORFLOW_PRELOAD, TENSORFLOW_IDLE_PRELOAD),
}
"""The server's preload and idle preload by the run's ``framework`` parameter (torch's for any other)."""

IDLE_STEPS = ("finalize",)
"""``argofl step NAME`` commands the second server forks once it is ready (the first one until then)."""

_STARTUP_PREFIXES = (
    "PYTHON",
    "LD_",
    "LC_",
    "OMP_",
    "MKL_",
    "OPENBLAS_",
    "GOTO",
    "VECLIB_",
    "KMP_",
    "NUMEXPR_",
    "CUDA_",
    "NVIDIA_",
    "TORCH",
    "PYTORCH_",
    "MALLOC_",
    "JE_",
    "ARROW_",
    "TF_",
    "KERAS_",
)
_STARTUP_NAMES = frozenset(
    {"LANG", "LANGUAGE", "TZ", "HOME", "MLFLOW_CONFIGURE_LOGGING", "MLFLOW_LOGGING_LEVEL"}
)
_PR_SET_PDEATHSIG = 1
_RESET_SIGNALS = (
    signal.SIGINT,
    signal.SIGCHLD,
    signal.SIGTERM,
    signal.SIGHUP,
    signal.SIGQUIT,
    signal.SIGUSR1,
    signal.SIGUSR2,
)
"""What a forked step sets as a fresh process has it: default, or ignored where the executor ignores it."""


def startup_environment(env: Mapping[str, str]) -> dict[str, str]:
    """The variables of ``env`` that an interpreter or a preloaded library reads when it starts."""
    return {k: v for k, v in env.items() if k in _STARTUP_NAMES or k.startswith(_STARTUP_PREFIXES)}


def _set_parent_death_signal(sig: int) -> None:
    """Ask Linux to send ``sig`` to this process when the thread that created it ends."""
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(_PR_SET_PDEATHSIG, sig, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_PDEATHSIG) failed")


# ------------------------------------------------------------------------------------- executor side


class ForkedProcess:
    """A step forked by the server: the part of :class:`subprocess.Popen` the executor uses."""

    def __init__(
        self, args: list[str], pid: int, channel: socket.socket, stdout: IO[bytes], status: bytes = b""
    ) -> None:
        """``status``: what of the step's ``exit C`` line was read with its ``pid N`` line."""
        self.args = args
        self._status = status
        self.pid = pid
        self.stdout: IO[bytes] | None = stdout
        self.returncode: int | None = None
        self._channel = channel
        self._done = threading.Event()
        threading.Thread(target=self._await_status, name=f"forked-{pid}", daemon=True).start()

    def _await_status(self) -> None:
        data = self._status
        try:
            while not data.endswith(b"\n"):
                chunk = self._channel.recv(64)
                if not chunk:
                    break
                data += chunk
        except OSError:
            pass
        finally:
            self._channel.close()
        word, _, value = data.decode("ascii", "replace").strip().partition(" ")
        # no status: the server died, and its children with it (PR_SET_PDEATHSIG = SIGKILL)
        self.returncode = int(value) if word == "exit" else -signal.SIGKILL
        self._done.set()

    def poll(self) -> int | None:
        return self.returncode if self._done.is_set() else None

    def wait(self, timeout: float | None = None) -> int:
        if not self._done.wait(timeout):
            raise subprocess.TimeoutExpired(self.args, timeout or 0.0)
        return self.returncode if self.returncode is not None else -signal.SIGKILL

    def send_signal(self, sig: int) -> None:
        if not self._done.is_set():
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, sig)

    def terminate(self) -> None:
        self.send_signal(signal.SIGTERM)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)


class ForkServer:
    """The executor's handle on one server process; :meth:`spawn` forks a step from it."""

    def __init__(
        self,
        env: Mapping[str, str],
        *,
        script: Path | None = None,
        entry: str = "argofl.pipelines.cli:main",
        preload: Sequence[str] = PRELOAD,
        idle_preload: Sequence[str] = IDLE_PRELOAD,
        idle_steps: Sequence[str] = IDLE_STEPS,
    ) -> None:
        """Start a server with environment ``env`` that serves ``<script> step …`` by calling ``entry``
        (``module:function``, given ``argv[1:]``) after importing ``preload``; ``<script> step NAME …``
        for NAME in ``idle_steps`` is forked, once it is ready, from a second server that imports
        ``idle_preload`` too, at idle priority (no second server when either is empty)."""
        self.env = dict(env)
        self.startup = startup_environment(env)
        self.script = script or _argofl_script()
        self.entry = entry
        self.preload = tuple(preload)
        self.idle = {"modules": list(idle_preload), "steps": list(idle_steps)}
        self.forked = 0  # steps forked so far (tests and benchmarks read it)
        self.pid: int | None = None  # the server process
        self.failure: str | None = None
        self._ready = threading.Event()
        self._finished = threading.Event()
        self._settled = threading.Event()  # ready or finished
        self._lock = threading.Lock()
        self._control: socket.socket | None = None  # set while serving
        self._socket: socket.socket | None = None  # our end of the control socket, from the start
        self._closing = False
        self._gave_up = False  # a wait for the server's start timed out: requests no longer wait
        # the thread that starts the server lives as long as the server may: PR_SET_PDEATHSIG fires
        # when the creating thread (not the process) ends
        self._keeper = threading.Thread(target=self._keep, name="argofl-forkserver", daemon=True)
        self._keeper.start()

    @property
    def ready(self) -> bool:
        return self._ready.is_set() and not self._finished.is_set()

    def wait_ready(self, timeout: float | None = None) -> bool:
        """Block until the server serves (True) or has failed or ``timeout`` passed (False)."""
        self._settled.wait(timeout)
        return self.ready

    def await_start(self, timeout: float) -> None:
        """Wait for a server that is still importing: a fresh process would import the same modules, on
        the core the server needs. Once a wait has timed out, later calls do not wait."""
        if self._settled.is_set() or self._gave_up:
            return
        if not self._settled.wait(timeout):
            self._gave_up = True

    def _keep(self) -> None:
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        log = tempfile.TemporaryFile()  # noqa: SIM115 - the server's own stderr (import warnings, a crash)
        with self._lock:
            self._socket = ours
        code = (
            "import os, sys; sys.path[0] = os.path.dirname(sys.argv[1]); "
            "from argofl.pipelines.local.forkserver import _serve; "
            "_serve(int(sys.argv[2]), int(sys.argv[3]), sys.argv[1], sys.argv[4], sys.argv[5], sys.argv[6])"
        )
        try:
            if self._closing:  # close() came first (it shuts the socket down when it comes later)
                raise OSError(errno.ECANCELED, "closed before it started")
            proc = subprocess.Popen(
                [
                    sys.executable,
                    "-c",
                    code,
                    str(self.script),
                    str(theirs.fileno()),
                    str(os.getpid()),
                    self.entry,
                    json.dumps(self.preload),
                    json.dumps(self.idle),
                ],
                env=self.env,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=log,
                pass_fds=(theirs.fileno(),),
                start_new_session=True,
            )
        except OSError as exc:
            self.failure = f"cannot start: {exc}"
            self._finished.set()
            self._settled.set()
            ours.close()
            theirs.close()
            log.close()
            return
        theirs.close()
        self.pid = proc.pid
        try:
            try:
                hello = ours.recv(4096)
            except OSError:
                hello = b""
            with self._lock:
                serving = hello == b"ready" and not self._closing
                if serving:
                    self._control = ours
            if serving:
                self._ready.set()
                self._settled.set()
                # nothing more comes from the server: this returns when it dies or close() shuts it
                with contextlib.suppress(OSError):
                    ours.recv(1)
            elif not self._closing:
                self.failure = hello.decode(errors="replace") or "exited while importing"
        finally:
            self._finished.set()
            self._settled.set()
            with self._lock:
                self._control = self._socket = None
                ours.close()  # the server sees the end of its control socket and exits
                importing = self._closing and not self._ready.is_set()
            if not importing:  # one still importing would see it only when done (seconds): killed
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.wait(timeout=10)
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            log.seek(0)
            lines = log.read().decode(errors="replace").strip().splitlines()
            log.close()
            if self.failure and lines:
                self.failure += ": " + lines[-1]

    def close(self) -> None:
        """Stop the server (its running children get SIGKILL) and wait for it."""
        with self._lock:
            self._closing = True
            if self._socket is not None:
                with contextlib.suppress(OSError):
                    self._socket.shutdown(socket.SHUT_RDWR)
        self._keeper.join(timeout=15)

    def serves(self, argv: Sequence[str], env: Mapping[str, str]) -> bool:
        """Whether ``argv`` with ``env`` can be forked from this server (it may still be starting)."""
        if len(argv) < 2 or argv[1] != "step" or _disabled(env):
            return False
        found = argv[0] if os.sep in argv[0] else shutil.which(argv[0], path=env.get("PATH", os.defpath))
        if found is None or os.path.realpath(found) != os.path.realpath(self.script):
            return False
        return startup_environment(env) == self.startup

    def spawn(
        self, argv: Sequence[str], *, env: Mapping[str, str], cwd: str, stderr: int
    ) -> ForkedProcess | None:
        """Fork ``argv``; None when the server is not serving (the caller starts a normal process)."""
        if not self.ready:
            return None
        if not os.path.isdir(cwd):
            raise FileNotFoundError(2, f"no such directory: {cwd}", cwd)
        channel, remote = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        read_end, write_end = os.pipe()
        # what a fresh process would inherit: the signals ignored here right now
        ignored = [int(sig) for sig in _RESET_SIGNALS if signal.getsignal(sig) == signal.SIG_IGN]
        request = json.dumps({"argv": list(argv), "env": dict(env), "cwd": cwd, "ignored": ignored}).encode()
        try:
            with self._lock:
                if self._control is None:
                    return None
                socket.send_fds(self._control, [request], [remote.fileno(), write_end, stderr])
        except OSError:
            channel.close()
            os.close(read_end)
            return None
        finally:
            remote.close()
            os.close(write_end)
        reply = b""
        while b"\n" not in reply:
            chunk = channel.recv(256)
            if not chunk:
                break
            reply += chunk
        # a step that has already ended sent its "exit C" line too: that is the status reader's
        line, _, status = reply.partition(b"\n")
        word, _, value = line.decode("ascii", "replace").strip().partition(" ")
        if word != "pid":
            channel.close()
            os.close(read_end)
            raise OSError(0, f"fork server refused: {reply.decode(errors='replace').strip() or 'no reply'}")
        self.forked += 1
        stdout = os.fdopen(read_end, "rb", buffering=0)
        return ForkedProcess(list(argv), int(value), channel, stdout, status=status)


def _argofl_script() -> Path:
    return Path(sys.executable).parent / "argofl"


def _disabled(env: Mapping[str, str]) -> bool:
    return is_off(DISABLE_VARIABLE) or is_off(DISABLE_VARIABLE, env)


STARTING_WAIT_S = 120.0
"""How long a step requested while the server is still importing waits for it before running as a fresh
process (a server that fails stops the wait at once)."""


def framework_of(values: Mapping[str, object]) -> str:
    """The ``framework`` that a run's parameters, or a config's top-level mapping, name: ``torch`` when
    they name none (or not as text)."""
    framework = values.get("framework", "torch")
    return framework if isinstance(framework, str) else "torch"


def preloads_for(framework: str) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """The server's preload and idle preload for a run whose ``framework`` parameter is ``framework``."""
    return PRELOADS.get(framework, PRELOADS["torch"])


def prestart(env: Mapping[str, str], framework: str = "torch") -> None:
    """Start this process's server for steps with environment ``env`` now (when steps may be forked), so
    that it imports while the caller compiles and prepares the run. A server started earlier with another
    startup environment (an earlier run's, from another directory) or for another ``framework`` serves
    none of them, or imports each step's framework again: it is replaced."""
    if _disabled(env):
        return
    global _default
    preload = preloads_for(framework)[0]
    with _default_lock:
        stale = _default
        if stale is not None and stale.startup == startup_environment(env) and stale.preload == preload:
            stale = None
        if stale is not None:
            _default = None
    if stale is not None:
        stale.close()
    default_server(env, framework)


def steps_environment(extra: Mapping[str, str]) -> dict[str, str]:
    """The environment the local executor gives a host-process step before its template's variables:
    this process's, the run's ``extra`` variables, this installation's scripts first on ``PATH``."""
    env = {**os.environ, **extra}
    env["PATH"] = str(Path(sys.executable).parent) + os.pathsep + env.get("PATH", os.defpath)
    return env


def prestart_steps(extra: Mapping[str, str], framework: str = "torch") -> None:
    """:func:`prestart` for the steps of a ``framework`` run with ``extra`` variables
    (:func:`steps_environment`)."""
    prestart(steps_environment(extra), framework)


_default: ForkServer | None = None
_default_lock = threading.Lock()


def default_server(env: Mapping[str, str] | None = None, framework: str = "torch") -> ForkServer | None:
    """This process's fork server, started (with ``env``, preloading for ``framework``) on the first call
    that passes ``env``."""
    global _default
    with _default_lock:
        if _default is None and env is not None and sys.platform.startswith("linux"):
            if not _argofl_script().exists():
                return None
            preload, idle_preload = preloads_for(framework)
            _default = ForkServer(env, preload=preload, idle_preload=idle_preload)
            atexit.register(_default.close)
        return _default


def shutdown() -> None:
    """Stop this process's fork server (a later request starts a new one)."""
    global _default
    with _default_lock:
        server, _default = _default, None
    if server is not None:
        server.close()


def popen(
    argv: Sequence[str],
    *,
    env: Mapping[str, str],
    cwd: str,
    stderr: int | IO[Any],
    fallback: Callable[..., Any] = subprocess.Popen,
    **kwargs: Any,
) -> Any:
    """Fork ``argv`` from the fork server when it can serve it, else ``fallback(argv, …, **kwargs)``.

    ``kwargs`` are :class:`subprocess.Popen`'s (the executor passes ``stdin=DEVNULL``, ``stdout=PIPE``,
    ``start_new_session=True``, ``close_fds=True``: what a forked step gets too).
    """
    argv = list(argv)
    if len(argv) >= 2 and argv[1] == "step" and not _disabled(env):
        server = default_server(env)
        if server is not None and server.serves(argv, env):
            server.await_start(STARTING_WAIT_S)
            fd = stderr if isinstance(stderr, int) else stderr.fileno()
            forked = server.spawn(argv, env=env, cwd=cwd, stderr=fd)
            if forked is not None:
                return forked
    return fallback(argv, env=dict(env), cwd=cwd, stderr=stderr, **kwargs)


# --------------------------------------------------------------------------------------- server side


def _serve(control_fd: int, executor_pid: int, script: str, entry: str, preload: str, idle: str) -> None:
    """The server process: preload, start the idle server, then fork one child per request until the
    control socket ends."""
    _set_parent_death_signal(signal.SIGKILL)
    control = socket.socket(fileno=control_fd)
    if os.getppid() != executor_pid:
        os._exit(1)
    _import_all([str(m) for m in json.loads(preload)])
    problem = _unsafe_to_fork()
    if problem:
        control.send(problem.encode())
        os._exit(1)
    _settle()
    second = json.loads(idle)
    modules, steps = [str(m) for m in second["modules"]], frozenset(str(n) for n in second["steps"])
    helper = _start_idle_server(control, modules, (script, entry)) if modules and steps else None
    control.send(b"ready")
    _loop(control, (script, entry), helper, steps)


def _settle() -> None:
    """Done importing: the children leave the server's finalizers alone and share its objects' pages."""
    _disown_finalizers()
    import gc

    # no gc.collect() first: it found nothing after the imports and took 0.2 s before the first step
    gc.freeze()  # fewer copy-on-write pages in the children


def _start_idle_server(control: socket.socket, modules: list[str], serving: tuple[str, str]) -> socket.socket:
    """Fork the second server; our end of the socket it is sent its requests on (it says ``ready`` there
    once it has imported ``modules``, or closes it)."""
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    server_pid = os.getpid()
    pid = os.fork()
    if pid != 0:
        theirs.close()
        return ours
    try:  # the second server
        ours.close()
        control.close()
        _set_parent_death_signal(signal.SIGKILL)
        if os.getppid() != server_pid:
            os._exit(1)
        _import_idly(modules)
        if _unsafe_to_fork():
            os._exit(0)  # the first server sees the socket end and forks every step itself
        _settle()
        theirs.send(b"ready")
        _loop(theirs, serving, None, frozenset())
    finally:
        os._exit(1)  # _loop exits by itself


def _import_idly(modules: list[str]) -> None:
    """Import ``modules`` in a thread of idle scheduling priority: it runs only on CPU time that nothing
    else wants. The thread has ended on return; this thread's priority, which forked steps inherit, is
    unchanged."""

    def work() -> None:
        with contextlib.suppress(AttributeError, OSError):  # SCHED_IDLE is Linux's
            os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))
        _import_all(modules)

    importer = threading.Thread(target=work, name="argofl-idle-preload")
    importer.start()
    importer.join()


def _loop(
    control: socket.socket,
    serving: tuple[str, str],
    helper: socket.socket | None,
    helper_steps: frozenset[str],
) -> None:
    """Serve requests from ``control``: fork each, or pass those for ``helper_steps`` on to ``helper`` once
    it is ready; when ``control`` ends, kill what was forked and exit."""
    wake_r, wake_w = os.pipe()
    os.set_blocking(wake_w, False)
    signal.set_wakeup_fd(wake_w)
    signal.signal(signal.SIGCHLD, lambda *_: None)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    channels: dict[int, socket.socket] = {}
    selector = selectors.DefaultSelector()
    selector.register(control, selectors.EVENT_READ, "control")
    selector.register(wake_r, selectors.EVENT_READ, "child")
    server_fds = [control.fileno(), wake_r, wake_w]
    if helper is not None:
        selector.register(helper, selectors.EVENT_READ, "helper")
        server_fds.append(helper.fileno())
    helper_ready = False
    while True:
        for key, _ in selector.select():
            if key.data == "child":
                with contextlib.suppress(BlockingIOError, InterruptedError):
                    os.read(wake_r, 4096)
                _reap(channels)
                continue
            if key.data == "helper" and helper is not None:
                with contextlib.suppress(InterruptedError):
                    helper_ready = _helper_says_ready(helper)
                    if not helper_ready:  # it ended (or refused): fork its steps here
                        selector.unregister(helper)
                        helper.close()
                        helper = None
                continue
            try:
                message, fds, _, _ = socket.recv_fds(control, 1 << 20, 3)
            except InterruptedError:
                continue
            if not message:  # the executor closed the control socket or died: stop everything
                for pid in channels:
                    with contextlib.suppress(OSError):
                        os.killpg(pid, signal.SIGKILL)
                os._exit(0)
            if helper is not None and helper_ready and _step_name(message) in helper_steps:
                try:
                    socket.send_fds(helper, [message], fds)
                except OSError:  # it has just ended: fork the step here
                    pass
                else:
                    for fd in fds:
                        os.close(fd)
                    continue
            _fork_step(message, fds, channels, server_fds, selector, serving)
        _reap(channels)


def _helper_says_ready(helper: socket.socket) -> bool:
    try:
        return helper.recv(64) == b"ready"
    except OSError:
        return False


def _step_name(message: bytes) -> str:
    """``NAME`` of a request for ``argofl step NAME …`` (``""`` for anything else)."""
    try:
        argv = json.loads(message)["argv"]
        return str(argv[2]) if len(argv) > 2 and argv[1] == "step" else ""
    except (ValueError, KeyError, TypeError, IndexError):
        return ""


def _import_all(modules: Sequence[str]) -> None:
    """Import ``modules`` (``module:function`` also calls it); what fails is skipped."""
    import importlib

    for name in modules:
        module, _, function = name.partition(":")
        try:
            loaded = importlib.import_module(module)
            if function:
                getattr(loaded, function)()
        except Exception:  # a warm-up that fails is only a missed saving
            continue


def _unsafe_to_fork() -> str:
    """A non-empty reason when forking from here would be unsafe."""
    if threading.active_count() != 1:
        names = sorted(t.name for t in threading.enumerate())
        return f"refused: importing started Python threads {names}"
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_initialized():
        return "refused: importing initialised CUDA"
    if _tensorflow_started():
        return "refused: importing started TensorFlow's runtime"
    sys.stdout.flush()
    sys.stderr.flush()
    return ""


def _tensorflow_started() -> bool:
    """Whether TensorFlow's eager context (its devices and thread pools) exists in this process."""
    if "tensorflow" not in sys.modules:
        return False
    try:
        from tensorflow.python.eager import context
    except ImportError:
        return False
    started = getattr(context.context_safe(), "_initialized", False)
    return bool(started)


def _disown_finalizers() -> None:
    """Keep the ``weakref.finalize`` callbacks of what the server imported from running when a step
    exits: their objects are the server's (torch's operator libraries: ~30 ms of dispatcher clean-up in
    every step; a temporary directory would be deleted by the first step). A step's own run as usual."""
    import weakref

    for finalizer in list(getattr(weakref.finalize, "_registry", {})):
        finalizer.atexit = False


def _reap(channels: dict[int, socket.socket]) -> None:
    while channels:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return
        channel = channels.pop(pid, None)
        if channel is None:
            continue
        code = os.waitstatus_to_exitcode(status)  # -N for signal N, as Popen.returncode
        with contextlib.suppress(OSError):
            channel.sendall(f"exit {code}\n".encode())
        channel.close()


def _fork_step(
    message: bytes,
    fds: list[int],
    channels: dict[int, socket.socket],
    server_fds: list[int],
    selector: selectors.BaseSelector,
    serving: tuple[str, str],
) -> None:
    if len(fds) != 3:
        for fd in fds:
            os.close(fd)
        return
    channel = socket.socket(fileno=fds[0])
    stdout_fd, stderr_fd = fds[1], fds[2]
    try:
        request = json.loads(message)
        argv, env, cwd = list(request["argv"]), dict(request["env"]), str(request["cwd"])
        ignored = {int(sig) for sig in request.get("ignored", [])}
    except (ValueError, KeyError, TypeError) as exc:
        with contextlib.suppress(OSError):
            channel.sendall(f"error bad request: {exc}\n".encode())
        channel.close()
        os.close(stdout_fd)
        os.close(stderr_fd)
        return
    server_pid = os.getpid()
    pid = os.fork()
    if pid == 0:  # the step
        code = 1
        try:
            selector.close()
            for other in channels.values():
                other.close()
            _become_step(server_pid, channel, stdout_fd, stderr_fd, server_fds, env, cwd, ignored)
            sys.argv = [serving[0], *argv[1:]]
            code = _run_main(serving[1], argv[1:])
        except BaseException:  # setting up the step failed (a Popen would not have started it)
            with contextlib.suppress(BaseException):
                import traceback

                traceback.print_exc()
                sys.stderr.flush()
            code = 127
        finally:
            os._exit(code)
    os.close(stdout_fd)
    os.close(stderr_fd)
    channels[pid] = channel
    with contextlib.suppress(OSError):
        channel.sendall(f"pid {pid}\n".encode())


def _become_step(
    server_pid: int,
    channel: socket.socket,
    stdout_fd: int,
    stderr_fd: int,
    server_fds: list[int],
    env: dict[str, str],
    cwd: str,
    ignored: set[int],
) -> None:
    """In the child: what a fresh ``Popen(start_new_session=True, stdin=DEVNULL, …)`` process has, the
    signals the executor ignores (``ignored``) ignored too, as ``exec`` keeps them."""
    os.setsid()
    _set_parent_death_signal(signal.SIGKILL)
    if os.getppid() != server_pid:
        os._exit(128 + signal.SIGKILL)
    signal.set_wakeup_fd(-1)
    for sig in _RESET_SIGNALS:
        if sig in ignored:
            signal.signal(sig, signal.SIG_IGN)
        elif sig == signal.SIGINT:
            signal.signal(sig, signal.default_int_handler)  # Python's own, unless it started ignored
        else:
            signal.signal(sig, signal.SIG_DFL)
    signal.pthread_sigmask(signal.SIG_SETMASK, set())
    channel.close()
    for fd in server_fds:
        with contextlib.suppress(OSError):
            os.close(fd)
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)
    os.dup2(stdout_fd, 1)
    os.dup2(stderr_fd, 2)
    for fd in {devnull, stdout_fd, stderr_fd} - {0, 1, 2}:
        os.close(fd)
    os.chdir(cwd)
    os.environ.clear()
    os.environ.update(env)
    import tempfile

    tempfile.tempdir = None
    numpy_random = sys.modules.get("numpy.random")
    if numpy_random is not None:
        numpy_random.seed()  # a fresh process's global generator is seeded from the OS


def _run_main(entry: str, args: list[str]) -> int:
    """Call ``entry`` (``module:function``) with ``args`` and shut down as the interpreter would; the
    exit code."""
    import importlib
    import traceback

    code = 0
    interrupted = False
    try:
        module, _, function = entry.partition(":")
        code = _exit_code(getattr(importlib.import_module(module), function)(args))  # sys.exit(main())
    except SystemExit as exc:
        code = _exit_code(exc.code)
    except KeyboardInterrupt:
        traceback.print_exc()
        interrupted = True
    except BaseException:
        traceback.print_exc()
        code = 1
    shutdown_threads = getattr(threading, "_shutdown", None)
    if shutdown_threads is not None:
        with contextlib.suppress(BaseException):
            shutdown_threads()
    with contextlib.suppress(BaseException):
        atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except BaseException:
            code = code or 120
    if interrupted:  # as CPython does: end by SIGINT
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        os.kill(os.getpid(), signal.SIGINT)
    return code


def _exit_code(value: object) -> int:
    if value is None:
        return 0
    if isinstance(value, int):
        return value & 0xFF
    with contextlib.suppress(BaseException):
        print(value, file=sys.stderr)
    return 1
