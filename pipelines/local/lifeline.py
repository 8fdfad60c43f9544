"""Step processes die with the executor, however it ends.

A step process is started from one long-lived thread (:func:`popen`) with a parent-death signal: Linux
sends SIGKILL to the child when the *thread* that forked it exits, so a short-lived node thread must not
fork it. Where util-linux's ``setpriv`` is installed the child sets the signal itself (``setpriv
--pdeathsig KILL``, then a ``/bin/sh`` guard that exits unless the executor is still its parent) and
``subprocess`` starts it with ``vfork``: copying a large executor's page tables for a ``preexec_fn``
(:func:`die_with_parent`, the fallback) took 30 ms per start with the GIL held, and seconds in a queue
of them on a loaded machine, eaten out of the pods' deadlines.

That covers the step's main process; what it started in turn (a grandchild in its process group) is
killed by a watchdog process (:class:`GroupWatchdog`) that holds the read end of a pipe the executor
writes the live process groups to: when the executor dies, even by SIGKILL, the pipe closes and the
watchdog SIGKILLs every group still listed.
On platforms without ``prctl`` only the watchdog applies.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import functools
import os
import shutil
import signal
import subprocess
import sys
import threading
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import Any

__all__ = ["WATCHDOG_ENV", "GroupWatchdog", "die_with_parent", "popen", "watchdog"]

_PR_SET_PDEATHSIG = 1
WATCHDOG_ENV = "ARGOFL_WATCHDOG_OF"
"""Set in the watchdog's environment to the executor's pid (tests find it by this)."""


def _load_prctl() -> Callable[..., int] | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        prctl: Callable[..., int] = ctypes.CDLL(None, use_errno=True).prctl
        return prctl
    except (OSError, AttributeError):
        return None


_PRCTL = _load_prctl()  # resolved here: the child between fork and exec only calls it


def die_with_parent(parent_pid: int) -> Callable[[], None]:
    """A ``preexec_fn`` that makes the child get SIGKILL when the forking thread of ``parent_pid`` ends."""

    def setup() -> None:
        if _PRCTL is not None:
            _PRCTL(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        if os.getppid() != parent_pid:  # the parent died before prctl took effect
            os.kill(os.getpid(), signal.SIGKILL)

    return setup


_SPAWNER = ThreadPoolExecutor(max_workers=1, thread_name_prefix="argofl-spawner")
"""Its one worker thread lives as long as this process: children's parent-death signal is tied to it."""


_GUARD = 'if [ "$PPID" = "$0" ]; then exec "$@"; fi; exit 137'
"""Run by ``/bin/sh -c`` after ``setpriv`` set the signal: ``$0`` is the executor's pid, ``$@`` the step."""


@functools.cache
def _setpriv() -> str | None:
    """util-linux's ``setpriv`` when it can set a parent-death signal (2.33 or later), and ``/bin/sh``."""
    found = shutil.which("setpriv") if sys.platform.startswith("linux") else None
    if found is None or not os.access("/bin/sh", os.X_OK):
        return None
    try:
        usage = subprocess.run([found, "--help"], capture_output=True, timeout=10, check=False).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    return found if b"--pdeathsig" in usage else None


def _check_executable(name: str, env: Mapping[str, str] | None, cwd: str | os.PathLike[str] | None) -> None:
    """Raise the ``OSError`` ``subprocess`` would raise for ``argv[0] = name`` (``/bin/sh`` searches the
    same ``PATH`` but words its errors differently); nothing when it would start.

    A relative path counts from ``cwd``; a bare name is searched in ``env``'s ``PATH``. The file must be
    a binary or start with ``#!``: ``/bin/sh`` would run any other text as a shell script."""
    if cwd is not None and not os.path.isdir(cwd):
        return  # Popen reports the working directory itself
    candidates = [name] if os.path.dirname(name) else [os.path.join(d, name) for d in os.get_exec_path(env)]
    failure = errno.ENOENT
    for candidate in candidates:
        path = os.path.join(cwd, candidate) if cwd is not None else candidate
        if not os.path.exists(path):
            continue
        if os.path.isdir(path) or not os.access(path, os.X_OK):
            failure = errno.EACCES
            continue
        try:
            with open(path, "rb") as f:
                magic = f.read(4)
        except OSError:
            return  # executable but unreadable: only a binary can be
        if magic == b"\x7fELF" or magic.startswith(b"#!"):
            return
        failure = errno.ENOEXEC
    raise OSError(failure, os.strerror(failure), name)


def popen(argv: list[str], **kwargs: Any) -> subprocess.Popen[bytes]:
    """``subprocess.Popen`` from the spawner thread, in a new session, dying with this process; the
    new process group is registered with :func:`watchdog`."""
    kwargs.setdefault("start_new_session", True)
    parent = os.getpid()
    setpriv = _setpriv() if argv and "executable" not in kwargs and not kwargs.get("shell") else None
    if setpriv is not None:
        _check_executable(argv[0], kwargs.get("env"), kwargs.get("cwd"))
        guard = [setpriv, "--pdeathsig", "KILL", "--", "/bin/sh", "-c", _GUARD, str(parent)]
        command, preexec = guard + list(argv), None
    else:
        command, preexec = list(argv), die_with_parent(parent)

    def start() -> subprocess.Popen[bytes]:
        return subprocess.Popen(command, preexec_fn=preexec, **kwargs)

    proc = _SPAWNER.submit(start).result()
    watchdog().watch(proc.pid)
    return proc


_WATCHDOG_CODE = """
import os, signal, sys
groups = set()
for line in sys.stdin:
    pgid = int(line[1:])
    if line[0] == "+":
        groups.add(pgid)
    else:
        groups.discard(pgid)
for pgid in groups:
    try:
        os.killpg(pgid, signal.SIGKILL)
    except OSError:
        pass
"""


class GroupWatchdog:
    """A process that SIGKILLs the registered process groups once this process is gone."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._proc: subprocess.Popen[bytes] | None = None

    def _pipe(self) -> Any:
        if self._proc is None or self._proc.poll() is not None:
            env = {**os.environ, WATCHDOG_ENV: str(os.getpid())}
            self._proc = subprocess.Popen(
                [sys.executable, "-S", "-c", _WATCHDOG_CODE],
                stdin=subprocess.PIPE,
                stdout=subprocess.DEVNULL,
                env=env,
                start_new_session=True,  # a Ctrl-C of the executor's terminal does not reach it
                close_fds=True,
            )
        return self._proc.stdin

    def _send(self, line: str) -> None:
        with self._lock, contextlib.suppress(OSError, ValueError):
            pipe = self._pipe()
            pipe.write(line.encode())
            pipe.flush()

    def watch(self, pgid: int) -> None:
        self._send(f"+{pgid}\n")

    def forget(self, pgid: int) -> None:
        """``pgid`` has ended (its members were killed): the watchdog must not signal it any more."""
        self._send(f"-{pgid}\n")


_WATCHDOG: GroupWatchdog | None = None
_WATCHDOG_LOCK = threading.Lock()


def watchdog() -> GroupWatchdog:
    """This process's watchdog (started on first use)."""
    global _WATCHDOG
    with _WATCHDOG_LOCK:
        if _WATCHDOG is None:
            _WATCHDOG = GroupWatchdog()
        return _WATCHDOG
