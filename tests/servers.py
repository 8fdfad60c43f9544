"""Real servers for tests, on loopback unless given another address: moto's S3 server and an MLflow
tracking server.

Each ``start_*`` function starts the server as a subprocess in its own process group, waits until
it answers HTTP, and returns a :class:`RunningServer`, which is also a context manager that stops
the whole process group on exit. A server also dies with the test process when that is killed and no
finalizer runs (the executor's :func:`argofl.pipelines.local.lifeline.popen`)::

    with start_moto_server() as s3:
        os.environ.update(s3.env)
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType

from argofl.pipelines.local import lifeline

__all__ = [
    "RunningServer",
    "ServerStartError",
    "empty_bucket",
    "free_port",
    "start_mlflow_server",
    "start_moto_server",
]

S3_TEST_ACCESS_KEY = "argofl-test-access"
S3_TEST_SECRET_KEY = "argofl-test-secret"  # a dummy credential: moto accepts any
_STDERR_TAIL_CHARS = 3000
# No telemetry, and no background job runner (seven huey processes and a /dev/shm directory per
# server): tests only need tracking and artifacts.
_MLFLOW_SERVER_ENV = {
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "DO_NOT_TRACK": "true",
    "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",
}


class ServerStartError(RuntimeError):
    """A test server did not come up; ``exited`` when it died (e.g. its port was taken meanwhile)."""

    def __init__(self, message: str, *, exited: bool = False) -> None:
        super().__init__(message)
        self.exited = exited


@dataclass
class RunningServer:
    """A started server process: its base URL, the environment that points clients at it."""

    name: str
    endpoint: str
    env: dict[str, str]
    process: subprocess.Popen[bytes]
    log_path: Path
    _cleanup_dir: Path | None = field(default=None, repr=False)
    _stopped: bool = field(default=False, repr=False)

    @property
    def uri(self) -> str:
        """The base URL (alias of :attr:`endpoint`)."""
        return self.endpoint

    def log_tail(self, chars: int = _STDERR_TAIL_CHARS) -> str:
        """The last ``chars`` characters the server wrote to stdout/stderr."""
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return text[-chars:]

    def stop(self, timeout: float = 10.0) -> None:
        """Terminate the server's process group (SIGTERM, then SIGKILL after ``timeout``); idempotent."""
        if self._stopped:
            return
        self._stopped = True
        _signal_group(self.process, signal.SIGTERM)
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            _signal_group(self.process, signal.SIGKILL)
            self.process.wait(timeout)
        # Workers (uvicorn under mlflow) may outlive the leader: the group id is still the leader's pid.
        _signal_group(self.process, signal.SIGKILL)
        lifeline.watchdog().forget(self.process.pid)
        if self._cleanup_dir is not None:
            shutil.rmtree(self._cleanup_dir, ignore_errors=True)

    def __enter__(self) -> RunningServer:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def _signal_group(process: subprocess.Popen[bytes], sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, sig)


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port on ``host`` that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def _venv_script(name: str) -> Path:
    script = Path(sys.executable).parent / name
    if not script.exists():
        raise ServerStartError(
            f"{name} not found at {script}: install the dev extras (pip install -e '.[dev]')"
        )
    return script


def _answers(url: str) -> bool:
    """Whether an HTTP server answers ``url`` (any status counts, a refused connection does not)."""
    try:
        with urllib.request.urlopen(url, timeout=2):
            return True
    except urllib.error.HTTPError:
        return True
    except (urllib.error.URLError, OSError):
        return False


def _start(
    name: str,
    argv: list[str],
    *,
    host: str,
    port: int,
    ready_path: str,
    timeout: float,
    log_dir: Path,
    env: dict[str, str],
    extra_env: dict[str, str] | None = None,
    cleanup_dir: Path | None = None,
) -> RunningServer:
    endpoint = f"http://{host}:{port}"
    log_path = log_dir / f"{name}.log"
    with open(log_path, "wb") as log:
        # A pytest killed by SIGTERM or SIGKILL runs no finalizer; its servers die with it all the same,
        # started as the executor starts a step: in their own process group, with a parent-death signal
        # (SIGKILL), and that group registered with a watchdog that kills it once pytest is gone (mlflow's
        # uvicorn worker has no parent-death signal). The signal fires when the forking *thread* ends:
        # pytest runs fixtures on its main thread, which would do, but lifeline.popen forks from its own
        # thread, which lives as long as the process, so a server started from a test's thread is safe.
        process = lifeline.popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            env={**os.environ, **(extra_env or {})},
        )
    server = RunningServer(name, endpoint, env, process, log_path, cleanup_dir)
    deadline = time.monotonic() + timeout
    try:
        while True:
            if process.poll() is not None:
                raise ServerStartError(
                    f"{name} exited with code {process.returncode} before answering on {endpoint}; "
                    f"output tail:\n{server.log_tail()}",
                    exited=True,
                )
            if _answers(endpoint + ready_path):
                return server
            if time.monotonic() > deadline:
                raise ServerStartError(
                    f"{name} did not answer {endpoint}{ready_path} within {timeout:.0f} s; "
                    f"output tail:\n{server.log_tail()}"
                )
            time.sleep(0.2)
    except BaseException:
        server.stop()
        raise


def _start_on_free_port(start: Callable[[int], RunningServer], host: str, attempts: int = 3) -> RunningServer:
    """Call ``start(port)`` with a fresh free port of ``host``, retrying when the server died (port race)."""
    for _ in range(attempts - 1):
        try:
            return start(free_port(host))
        except ServerStartError as exc:
            if not exc.exited:
                raise
    return start(free_port(host))


def start_moto_server(*, host: str = "127.0.0.1", timeout: float = 60.0) -> RunningServer:
    """Start ``moto_server`` on a free port of ``host`` (loopback by default; containers need an address
    they can reach, e.g. the Docker bridge's gateway); ``.env`` points argofl's S3 store at it."""
    script = _venv_script("moto_server")

    def start(port: int) -> RunningServer:
        log_dir = Path(tempfile.mkdtemp(prefix="argofl-moto-"))
        env = {
            "ARGOFL_S3_ENDPOINT": f"http://{host}:{port}",
            "ARGOFL_S3_ACCESS_KEY": S3_TEST_ACCESS_KEY,
            "ARGOFL_S3_SECRET_KEY": S3_TEST_SECRET_KEY,
        }
        return _start(
            "moto_server",
            [str(script), "-H", host, "-p", str(port)],
            host=host,
            port=port,
            ready_path="/",
            timeout=timeout,
            log_dir=log_dir,
            env=env,
            cleanup_dir=log_dir,
        )

    return _start_on_free_port(start, host)


def start_mlflow_server(tmp_path: Path, *, host: str = "127.0.0.1", timeout: float = 90.0) -> RunningServer:
    """Start an MLflow tracking server (SQLite backend, local artifacts under ``tmp_path``) on ``host``.

    ``.uri`` and ``.env["MLFLOW_TRACKING_URI"]`` point clients at it.
    """
    script = _venv_script("mlflow")
    tmp_path = Path(tmp_path)
    artifacts = tmp_path / "artifacts"
    artifacts.mkdir(parents=True, exist_ok=True)

    def start(port: int) -> RunningServer:
        argv = [
            str(script),
            "server",
            "--backend-store-uri",
            f"sqlite:///{tmp_path / 'mlflow.db'}",
            "--artifacts-destination",
            str(artifacts),
            "--host",
            host,
            "--port",
            str(port),
            "--workers",
            "1",
        ]
        return _start(
            "mlflow_server",
            argv,
            host=host,
            port=port,
            ready_path="/health",
            timeout=timeout,
            log_dir=tmp_path,
            env={"MLFLOW_TRACKING_URI": f"http://{host}:{port}"},
            extra_env=_MLFLOW_SERVER_ENV,
        )

    return _start_on_free_port(start, host)


def empty_bucket(server: RunningServer, bucket: str) -> None:
    """Delete every object (and the bucket) ``bucket`` holds on the S3 ``server``; best effort."""
    from minio import Minio
    from minio.deleteobjects import DeleteObject
    from minio.error import S3Error

    client = Minio(
        server.endpoint.removeprefix("http://"),
        access_key=server.env["ARGOFL_S3_ACCESS_KEY"],
        secret_key=server.env["ARGOFL_S3_SECRET_KEY"],
        secure=False,
    )
    try:
        if not client.bucket_exists(bucket):
            return
        names = [DeleteObject(o.object_name) for o in client.list_objects(bucket, recursive=True)]
        for error in client.remove_objects(bucket, names):
            raise RuntimeError(f"cannot delete {error.name} from s3://{bucket}: {error.message}")
        client.remove_bucket(bucket)
    except S3Error:
        pass  # tests may leave odd state behind (e.g. aborted uploads); the server is throwaway
