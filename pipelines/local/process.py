"""Host processes for pod nodes: one process group each, logs on disk, deadlines that kill the group.

The main process runs in its own session (``start_new_session``), so ``killpg`` reaches every process
it started; the group dies with the executor (:mod:`.lifeline`). Stdout goes to ``<key>.stdout`` (for
``outputs.result``) and, with stderr, to ``<key>.log``.
When the main process exits, whatever is left of its group is killed, as a container's processes die
with it. Waiting blocks on the process itself; there is no polling.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from argofl.pipelines.local import forkserver, lifeline

__all__ = ["ProcessOutcome", "StepProcess"]

TERM_GRACE_SECONDS = 2.0


@dataclass
class ProcessOutcome:
    """How a process ended: its exit code (128+N for signal N) and why it was stopped, if it was."""

    exit_code: int
    stopped: str | None  # "deadline", "stopped", "interrupted" or None when it exited on its own
    started_at: float
    finished_at: float


class StepProcess:
    """A running step process writing ``log_path`` (stdout+stderr) and ``stdout_path`` (stdout)."""

    def __init__(
        self, argv: Sequence[str], *, env: Mapping[str, str], cwd: Path, log_path: Path, stdout_path: Path
    ) -> None:
        log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log = open(log_path, "ab", buffering=0)  # noqa: SIM115 - closed in _pump
        self._stdout = open(stdout_path, "wb", buffering=0)  # noqa: SIM115
        self._stop_reason: str | None = None
        self._lock = threading.Lock()
        self.started_at = time.time()
        try:
            # forked from the preloaded server when it serves argv, else a fresh process that dies with us
            self.proc = forkserver.popen(
                list(argv),
                env=dict(env),
                cwd=str(cwd),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=self._log,
                start_new_session=True,
                close_fds=True,
                fallback=lifeline.popen,
            )
            lifeline.watchdog().watch(self.proc.pid)  # its group, also for a forked step
        except BaseException:
            self._log.close()
            self._stdout.close()
            raise
        self._pump_thread = threading.Thread(target=self._pump, name=f"pump-{self.proc.pid}", daemon=True)
        self._pump_thread.start()

    @property
    def pid(self) -> int:
        return self.proc.pid

    def _pump(self) -> None:
        out = self.proc.stdout
        try:
            if out is None:
                return
            while True:
                chunk = os.read(out.fileno(), 65536)
                if not chunk:
                    break
                self._stdout.write(chunk)
                self._log.write(chunk)
        finally:
            self._stdout.close()
            self._log.close()
            if out is not None:
                out.close()

    def _signal_group(self, sig: int) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, sig)

    def stop(self, reason: str, grace: float = TERM_GRACE_SECONDS) -> None:
        """SIGTERM the whole group, then SIGKILL it after ``grace`` seconds; ``reason`` is recorded."""
        with self._lock:
            if self._stop_reason is None:
                self._stop_reason = reason
        self._signal_group(signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(timeout=grace)
        self._signal_group(signal.SIGKILL)

    def wait(self, deadline: float | None = None) -> ProcessOutcome:
        """Wait for the process to exit, stopping its group at ``deadline`` (epoch seconds)."""
        while True:
            timeout = None if deadline is None else max(0.0, deadline - time.time())
            try:
                self.proc.wait(timeout=timeout)
                break
            except subprocess.TimeoutExpired:
                self.stop("deadline")
        finished = time.time()
        # the container is gone: so are the processes it left behind
        self._signal_group(signal.SIGKILL)
        lifeline.watchdog().forget(self.proc.pid)
        self._pump_thread.join(timeout=5.0)
        code = self.proc.returncode
        exit_code = 128 - code if code < 0 else code
        return ProcessOutcome(exit_code, self._stop_reason, self.started_at, finished)

    def running(self) -> bool:
        return self.proc.poll() is None
