"""A stop signal at any moment of ``argofl run`` / ``argofl local run`` stops it: before the run starts
(while the commands are imported, the workflow compiled, the fork server started) nothing starts and the
command exits 128+N with one line; after the run, it exits 128+N once the results are written.

The signals are delivered at known points: in-process with ``signal.raise_signal`` from a patched
function (synchronous: the handler runs before it returns), or to a subprocess held at its first write
to stdout (a full pipe) once its fork server exists, so it cannot have started the run yet."""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import signal
import subprocess
import threading
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from argofl.pipelines import cli as cli_module
from argofl.pipelines import commands, stop_signals
from argofl.pipelines.cli import main
from argofl.pipelines.local import cli as local_cli
from argofl.pipelines.local.signals import StopOnSignals
from tests.processes import ARGOFL, ROOT, argofl_env, processes_with_env, wait_for

CONFIG = ROOT / "configs" / "fedavg-fmnist-torch.yaml"

OK_WORKFLOW: dict[str, Any] = {
    "apiVersion": "argoproj.io/v1alpha1",
    "kind": "Workflow",
    "metadata": {"generateName": "ok-"},
    "spec": {
        "entrypoint": "main",
        "templates": [{"name": "main", "container": {"image": "x", "command": ["true"]}}],
    },
}


def _signal_when_loading(monkeypatch: pytest.MonkeyPatch, command: str) -> None:
    """SIGINT this process as the CLI loads ``command``'s module (as a Ctrl-C during its imports)."""
    original = cli_module.LazyGroup.get_command

    def get_command(self: Any, ctx: Any, cmd_name: str) -> Any:
        if cmd_name == command:
            signal.raise_signal(signal.SIGINT)
        return original(self, ctx, cmd_name)

    monkeypatch.setattr(cli_module.LazyGroup, "get_command", get_command)


def _exit_code(args: list[str]) -> int | str | None:
    with pytest.raises(SystemExit) as exited:
        main(args)
    return exited.value.code


def test_a_sigint_while_argofl_run_imports_its_command_starts_nothing_and_exits_130(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture[str]
) -> None:
    started: list[str] = []
    monkeypatch.setattr(commands, "prestart_steps", lambda framework: started.append("fork server"))
    monkeypatch.setattr(commands, "_run_locally", lambda *a, **k: started.append("run"))
    _signal_when_loading(monkeypatch, "run")
    code = _exit_code(["run", str(CONFIG), "--runs-dir", str(tmp_path / "runs")])
    err = capfd.readouterr().err
    assert code == 128 + signal.SIGINT, err
    assert err.splitlines() == ["argofl: SIGINT: stopping; the run will not start"]
    assert started == []
    assert not (tmp_path / "runs").exists()
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # main gave the handlers back


@pytest.mark.parametrize("when", ["check_services", "containers_for"], ids=["checks", "after-mkdir"])
def test_a_sigint_during_argofl_run_start_up_leaves_no_runs_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture[str], when: str
) -> None:
    """A Ctrl-C while the run was checked (or once its runs directory was made) refused to start the run
    but left the empty --runs-dir behind."""
    started: list[str] = []
    monkeypatch.setattr(commands, "prestart_steps", lambda framework: started.append("fork server"))
    monkeypatch.setattr(commands, "_run_locally", lambda *a, **k: started.append("run"))
    original = getattr(commands, when)

    def interrupted(*args: Any, **kwargs: Any) -> Any:
        signal.raise_signal(signal.SIGINT)
        return original(*args, **kwargs)

    monkeypatch.setattr(commands, when, interrupted)
    runs = tmp_path / "new" / "runs"
    code = _exit_code(["run", str(CONFIG), "--runs-dir", str(runs)])
    err = capfd.readouterr().err
    assert code == 128 + signal.SIGINT, err
    assert err.splitlines() == ["argofl: SIGINT: stopping; the run will not start"]
    assert started == ["fork server"]
    assert not (tmp_path / "new").exists()


def test_a_sigint_while_argofl_local_run_imports_its_command_starts_nothing_and_exits_130(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "ok.yaml").write_text(yaml.safe_dump(OK_WORKFLOW))
    _signal_when_loading(monkeypatch, "local")
    code = _exit_code(["local", "run", str(tmp_path / "ok.yaml"), "--runs-dir", str(tmp_path / "runs")])
    err = capfd.readouterr().err
    assert code == 128 + signal.SIGINT, err
    assert err.splitlines() == ["argofl: SIGINT: stopping; the run will not start"]
    assert not (tmp_path / "runs").exists()


def test_a_sigint_after_the_run_lets_argofl_local_run_report_it_then_exits_130(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "ok.yaml").write_text(yaml.safe_dump(OK_WORKFLOW))
    render = local_cli.render_status

    def render_after_a_sigint(*args: Any) -> str:
        signal.raise_signal(signal.SIGINT)
        return render(*args)

    monkeypatch.setattr(local_cli, "render_status", render_after_a_sigint)
    code = _exit_code(["local", "run", str(tmp_path / "ok.yaml"), "--runs-dir", str(tmp_path / "runs")])
    out, err = capfd.readouterr()
    assert code == 128 + signal.SIGINT, err
    assert "argofl: SIGINT: stopping; exiting once its results are written" in err.splitlines()
    assert "Succeeded" in out  # the status was still printed
    (status,) = (tmp_path / "runs").glob("*/status.json")
    assert json.loads(status.read_text())["phase"] == "Succeeded"


def test_a_stop_pending_when_the_executor_takes_the_signals_over_interrupts_the_run_at_once() -> None:
    calls: list[tuple[str, bool]] = []
    done = threading.Event()

    def interrupt(message: str, *, hard: bool = False) -> None:
        calls.append((message, hard))
        done.set()

    with stop_signals.guard_stops() as stops:
        signal.raise_signal(signal.SIGTERM)
        assert stops.pending == signal.SIGTERM
        with StopOnSignals(interrupt) as signals:
            assert done.wait(10)
        assert signals.signum == signal.SIGTERM
    assert calls == [("stopped: executor interrupted (SIGTERM)", False)]
    assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL


def test_an_ignored_sighup_stays_ignored_and_an_ignored_sigint_is_handled() -> None:
    """``nohup argofl run`` outlives its terminal; a background job (SIGINT ignored) still stops on it."""
    before = {sig: signal.signal(sig, signal.SIG_IGN) for sig in (signal.SIGHUP, signal.SIGINT)}
    try:
        with stop_signals.guard_stops():
            assert signal.getsignal(signal.SIGHUP) == signal.SIG_IGN
            assert signal.getsignal(signal.SIGINT) != signal.SIG_IGN
        assert signal.getsignal(signal.SIGINT) == signal.SIG_IGN  # given back
    finally:
        for sig, handler in before.items():
            signal.signal(sig, handler)


# ------------------------------------------------------------------------ argofl run, as a process


def _full_pipe() -> tuple[int, int]:
    """A pipe whose buffer is full: the first write to its write end blocks until the read end is read."""
    read_end, write_end = os.pipe()
    fcntl.fcntl(write_end, fcntl.F_SETPIPE_SZ, 4096)
    os.set_blocking(write_end, False)
    with contextlib.suppress(BlockingIOError):
        while True:
            os.write(write_end, b"x" * 4096)
    os.set_blocking(write_end, True)
    return read_end, write_end


def _fork_servers(mark: str) -> list[int]:
    def serves(pid: int) -> bool:
        with contextlib.suppress(OSError):
            return b"forkserver import _serve" in Path(f"/proc/{pid}/cmdline").read_bytes()
        return False

    return [pid for pid in processes_with_env("ARGOFL_TEST_MARK", mark) if serves(pid)]


def _drain(read_end: int, into: list[bytes]) -> Callable[[], None]:
    def drain() -> None:
        while chunk := os.read(read_end, 65536):
            into.append(chunk)

    return drain


@pytest.mark.parametrize(
    ("sig", "ignored"),
    [(signal.SIGINT, False), (signal.SIGINT, True), (signal.SIGTERM, False)],
    ids=["SIGINT", "SIGINT-ignored-as-in-a-background-job", "SIGTERM"],
)
def test_a_stop_signal_during_argofl_run_start_up_starts_nothing_and_leaves_no_process(
    tmp_path: Path, sig: signal.Signals, ignored: bool
) -> None:
    mark = uuid.uuid4().hex
    env = {**argofl_env(), "ARGOFL_TEST_MARK": mark}
    env.pop("ARGOFL_FORKSERVER", None)
    args = [*ARGOFL, "run", str(CONFIG), "--runs-dir", str(tmp_path / "runs"), "-p", "rounds=1"]
    if ignored:  # as a background job of a non-interactive shell starts: SIGINT ignored
        args = ["sh", "-c", "trap '' INT; exec \"$@\"", "sh", *args]
    read_end, write_end = _full_pipe()
    try:
        proc = subprocess.Popen(args, env=env, stdout=write_end, stderr=subprocess.PIPE, cwd=tmp_path)
    finally:
        os.close(write_end)
    chunks: list[bytes] = []
    drain = threading.Thread(target=_drain(read_end, chunks), daemon=True)
    try:
        # its fork server is up: argofl passed its imports, and it cannot write its first line yet
        wait_for(lambda: _fork_servers(mark) or proc.poll() is not None, "argofl run's fork server")
        assert proc.poll() is None, proc.communicate()[1].decode()
        proc.send_signal(sig)
        drain.start()
        err = proc.communicate(timeout=120)[1].decode()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        drain.join(timeout=30)
        os.close(read_end)
    assert proc.returncode == 128 + sig, err
    assert err.splitlines() == [f"argofl: {sig.name}: stopping; the run will not start"]
    assert not (tmp_path / "runs").exists()
    wait_for(lambda: not processes_with_env("ARGOFL_TEST_MARK", mark), "argofl's processes to exit")
