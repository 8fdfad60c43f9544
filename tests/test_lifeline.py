"""lifeline.popen: processes start without forking the executor's interpreter, carry a SIGKILL
parent-death signal, keep their argv, and fail to start exactly as ``subprocess.Popen`` would."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from argofl.pipelines.local import lifeline

needs_setpriv = pytest.mark.skipif(
    lifeline._setpriv() is None, reason="util-linux setpriv with --pdeathsig is not installed"
)


def _output(argv: list[str], **kwargs: object) -> tuple[int, str]:
    proc = lifeline.popen(argv, stdout=subprocess.PIPE, **kwargs)
    out, _ = proc.communicate(timeout=30)
    lifeline.watchdog().forget(proc.pid)
    return proc.returncode, out.decode()


@needs_setpriv
def test_starting_a_process_does_not_fork_the_interpreter() -> None:
    # a preexec_fn made subprocess fork this whole interpreter (30 ms with the GIL held in a large
    # executor); Python runs its at-fork hooks exactly then
    forks: list[int] = []
    os.register_at_fork(before=lambda: forks.append(1))
    code, out = _output(["echo", "started"])
    assert (code, out) == (0, "started\n")
    assert forks == []


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="parent-death signals are Linux's")
def test_the_process_gets_sigkill_when_the_executor_dies() -> None:
    read_signal = (
        "import ctypes; s = ctypes.c_int(); "
        "ctypes.CDLL(None).prctl(2, ctypes.byref(s), 0, 0, 0); print(s.value)"  # PR_GET_PDEATHSIG
    )
    assert _output([sys.executable, "-c", read_signal]) == (0, f"{int(signal.SIGKILL)}\n")


def test_the_process_keeps_its_argv_env_and_cwd(tmp_path: Path) -> None:
    code, out = _output(
        ["sh", "-c", 'printf "%s|%s|%s" "$0" "$STEP_VALUE" "$PWD"', "named"],
        env={"PATH": os.environ["PATH"], "STEP_VALUE": "v1"},
        cwd=tmp_path,
    )
    assert (code, out) == (0, f"named|v1|{tmp_path}")
    code, out = _output(["cat", "/proc/self/cmdline"])
    assert out.split("\0")[0] == "cat"


@needs_setpriv
def test_the_guard_runs_nothing_once_the_executor_is_gone(tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    other_parent = subprocess.run(["/bin/sh", "-c", lifeline._GUARD, "1", "touch", str(marker)], check=False)
    assert other_parent.returncode == 137
    assert not marker.exists()
    own_parent = subprocess.run(
        ["/bin/sh", "-c", lifeline._GUARD, str(os.getpid()), "touch", str(marker)], check=False
    )
    assert own_parent.returncode == 0
    assert marker.exists()


def _popen_error(argv: list[str], cwd: Path) -> tuple[type[OSError], int | None, str | None] | None:
    try:
        proc = subprocess.Popen(argv, cwd=cwd, stdout=subprocess.DEVNULL)
    except OSError as exc:
        return type(exc), exc.errno, exc.strerror
    proc.wait()
    return None


def _files(tmp_path: Path) -> None:
    (tmp_path / "plain-text").write_text("echo this is no program\n")
    (tmp_path / "plain-text").chmod(0o755)
    (tmp_path / "not-executable").write_text("#!/bin/sh\necho no\n")
    (tmp_path / "a-directory").mkdir()
    (tmp_path / "script").write_text("#!/bin/sh\necho script ran\n")
    (tmp_path / "script").chmod(0o755)


@pytest.mark.parametrize(
    "argv0", ["no-such-command-argofl", "./missing", "./plain-text", "./not-executable", "./a-directory"]
)
def test_start_errors_are_the_ones_popen_raises(tmp_path: Path, argv0: str) -> None:
    _files(tmp_path)
    expected = _popen_error([argv0], tmp_path)
    assert expected is not None
    with pytest.raises(expected[0]) as raised:
        _output([argv0], cwd=tmp_path)
    assert (raised.value.errno, raised.value.strerror, raised.value.filename) == (*expected[1:], argv0)


def test_a_script_with_a_shebang_starts_as_with_popen(tmp_path: Path) -> None:
    _files(tmp_path)
    assert _popen_error(["./script"], tmp_path) is None
    assert _output(["./script"], cwd=tmp_path) == (0, "script ran\n")
