"""The fork server: a forked step is indistinguishable from a fresh process (exit codes, stdout/stderr,
env, cwd, signals, deadlines), dies with the executor, and a tiny FedAvg run writes the same bytes."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from click.testing import CliRunner

from argofl.pipelines.local import forkserver, run_workflow

PROBE = """
import json, os, signal, subprocess, sys, tempfile, threading, time


def main(args):
    action = args[1]
    if action == "report":
        with open("written-here.txt", "w") as f:
            f.write("x")
        print("to stderr", file=sys.stderr)
        names = ("SIGINT", "SIGTERM", "SIGCHLD", "SIGPIPE", "SIGHUP", "SIGUSR1")
        print(json.dumps({
            "argv": [os.path.basename(sys.argv[0]), *sys.argv[1:]],
            "cwd": os.getcwd(),
            "cwd_file": os.path.exists(os.path.join(os.getcwd(), "written-here.txt")),
            "probe_var": os.environ.get("PROBE_VAR"),
            "env_keys": sorted(os.environ),
            "tempdir": tempfile.gettempdir(),
            "stdin": sys.stdin.read(),
            "own_group": os.getpgid(0) == os.getpid(),
            "own_session": os.getsid(0) == os.getpid(),
            "signals": {n: str(signal.getsignal(getattr(signal, n))) for n in names},
            "blocked": sorted(signal.pthread_sigmask(signal.SIG_BLOCK, [])),
            "threads": threading.active_count(),
            "stdout_tty": sys.stdout.isatty(),
            "stderr_line_buffering": sys.stderr.line_buffering,
        }))
        return 0
    if action == "exit":
        print("out")
        print("err", file=sys.stderr)
        return int(args[2])
    if action == "raise":
        raise RuntimeError("boom")
    if action == "interrupt":
        raise KeyboardInterrupt
    if action == "message":
        sys.exit("bye")
    if action == "finalizer":
        import weakref

        class Owned:
            pass

        mine = Owned()
        weakref.finalize(mine, print, "step finalizer ran", flush=True)
        sys.modules["_probe_keep"] = mine  # alive until the step exits
        return 0
    if action == "where":  # which server forked it, and what that server had imported
        print(json.dumps({"ppid": os.getppid(), "slow_module": "probe_slow" in sys.modules,
                          "policy": os.sched_getscheduler(0), "own_session": os.getsid(0) == os.getpid()}))
        return 0
    if action == "sleep":
        child = subprocess.Popen(["sleep", "60"])
        print(child.pid, flush=True)
        time.sleep(60)
    return 5
"""


@pytest.fixture
def probe(tmp_path: Path) -> Path:
    """An executable ``probe`` script whose ``main`` lives in ``probe_main.py`` beside it."""
    directory = tmp_path / "probe-bin"
    directory.mkdir()
    (directory / "probe_main.py").write_text(textwrap.dedent(PROBE))
    script = directory / "probe"
    script.write_text(
        f"#!{sys.executable}\nimport sys\nfrom probe_main import main\nsys.exit(main(sys.argv[1:]))\n"
    )
    script.chmod(0o755)
    return script


@pytest.fixture
def server(probe: Path) -> Iterator[forkserver.ForkServer]:
    fs = forkserver.ForkServer(
        dict(os.environ), script=probe, entry="probe_main:main", preload=("json",), idle_preload=()
    )
    assert fs.wait_ready(60), fs.failure
    yield fs
    fs.close()


def _run(how: Any, argv: list[str], env: dict[str, str], cwd: Path, tmp: Path) -> tuple[int, bytes, bytes]:
    """Run ``argv`` with ``how`` (``subprocess.Popen`` or a fork server) as the executor does."""
    err_path = tmp / f"err-{time.monotonic_ns()}"
    with open(err_path, "wb") as err:
        if how is subprocess.Popen:
            proc: Any = subprocess.Popen(
                argv,
                env=env,
                cwd=str(cwd),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=err,
                start_new_session=True,
                close_fds=True,
            )
        else:
            proc = how.spawn(argv, env=env, cwd=str(cwd), stderr=err.fileno())
            assert isinstance(proc, forkserver.ForkedProcess)
        out = proc.stdout.read()
        code = proc.wait(timeout=60)
    return code, out, err_path.read_bytes()


@pytest.mark.parametrize(
    "action",
    [["report"], ["exit", "0"], ["exit", "3"], ["raise"], ["interrupt"], ["message"]],
    ids=lambda a: "-".join(a),
)
def test_forked_step_matches_a_fresh_process(
    server: forkserver.ForkServer, probe: Path, tmp_path: Path, action: list[str]
) -> None:
    env = {**os.environ, "PROBE_VAR": f"value-{action[0]}", "TMPDIR": str(tmp_path)}
    env.pop("PYTEST_CURRENT_TEST", None)
    results: list[tuple[int, bytes, list[bytes]]] = []
    for how in (subprocess.Popen, server):
        cwd = tmp_path / f"cwd-{len(results)}"
        cwd.mkdir()
        code, out, err = _run(how, [str(probe), "step", *action], env, cwd, tmp_path)
        if action == ["report"]:
            report = json.loads(out)
            assert report["cwd"] == str(cwd)
            report["cwd"] = "<cwd>"
            out = json.dumps(report).encode()
        # tracebacks differ in their frames, not in what they report
        results.append((code, out, err.splitlines()[-1:]))
    assert server.forked == 1
    assert results[0] == results[1]
    code, out, last_err = results[0]
    expected = {"report": 0, "raise": 1, "interrupt": -signal.SIGINT, "message": 1}
    assert code == (int(action[1]) if action[0] == "exit" else expected[action[0]])
    if action == ["report"]:
        report = json.loads(out)
        assert report["probe_var"] == "value-report"
        assert report["tempdir"] == str(tmp_path)
        assert report["stdin"] == ""
        assert report["own_group"]
        assert report["own_session"]
        assert report["cwd_file"]
        assert last_err == [b"to stderr"]
    if action[0] == "exit":
        assert (out, last_err) == (b"out\n", [b"err"])


def test_signals_the_executor_ignores_are_ignored_in_a_forked_step_too(
    server: forkserver.ForkServer, probe: Path, tmp_path: Path
) -> None:
    # a fresh process keeps what its parent ignores (a background job of a script ignores SIGINT; nohup,
    # SIGHUP); a forked step got Python's SIGINT handler and SIG_DFL whatever the executor ignored
    env = {**os.environ, "TMPDIR": str(tmp_path)}
    env.pop("PYTEST_CURRENT_TEST", None)
    before = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGHUP)}
    reports = []
    try:
        for sig in before:
            signal.signal(sig, signal.SIG_IGN)
        for how in (subprocess.Popen, server):
            code, out, _ = _run(how, [str(probe), "step", "report"], env, tmp_path, tmp_path)
            assert code == 0
            reports.append(json.loads(out)["signals"])
    finally:
        for sig, handler in before.items():
            signal.signal(sig, handler)
    assert server.forked == 1
    assert reports[0]["SIGINT"] == reports[0]["SIGHUP"] == str(signal.SIG_IGN)
    assert reports[1] == reports[0]


def test_startup_environment_or_the_escape_hatch_run_a_normal_process(
    server: forkserver.ForkServer, probe: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    env = dict(os.environ)
    assert server.serves([str(probe), "step", "report"], env)
    assert not server.serves([str(probe), "run", "x"], env)
    assert not server.serves(["/bin/echo", "step"], env)
    assert not server.serves([str(probe), "step"], {**env, "OMP_NUM_THREADS": "7"})
    assert not server.serves([str(probe), "step"], {**env, "CUDA_VISIBLE_DEVICES": "3"})
    assert not server.serves([str(probe), "step"], {**env, forkserver.DISABLE_VARIABLE: "0"})
    monkeypatch.setattr(forkserver, "_default", server)
    calls: list[list[str]] = []

    def fallback(argv: list[str], **_: Any) -> str:
        calls.append(argv)
        return "fresh"

    monkeypatch.setenv(forkserver.DISABLE_VARIABLE, "off")
    assert (
        forkserver.popen([str(probe), "step", "exit", "0"], env=env, cwd="/", stderr=2, fallback=fallback)
        == "fresh"
    )
    assert calls == [[str(probe), "step", "exit", "0"]]
    assert server.forked == 0


def test_executor_kills_a_forked_step_and_its_group_at_the_deadline(
    server: forkserver.ForkServer, probe: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(forkserver, "_default", server)
    wf = {
        "apiVersion": "argoproj.io/v1alpha1",
        "kind": "Workflow",
        "metadata": {"generateName": "fork-"},
        "spec": {
            "entrypoint": "main",
            "templates": [
                {
                    "name": "main",
                    "steps": [
                        [{"name": "sleeper", "template": "sleep"}, {"name": "failer", "template": "fail"}]
                    ],
                },
                {
                    "name": "sleep",
                    "activeDeadlineSeconds": 5,
                    "container": {"image": "x", "command": [str(probe), "step", "sleep"]},
                },
                {"name": "fail", "container": {"image": "x", "command": [str(probe), "step", "exit", "3"]}},
            ],
        },
    }
    result = run_workflow(wf, runs_dir=tmp_path / "runs")
    nodes = {n["displayName"]: n for n in result.status["nodes"].values()}
    assert server.forked == 2
    sleeper, failer = nodes["sleeper"], nodes["failer"]
    assert sleeper["phase"] == "Failed"
    assert sleeper["message"] == "Pod was active on the node longer than the specified deadline"
    grandchild = int(sleeper["outputs"]["result"])
    _wait_gone(grandchild)
    assert not _alive(grandchild), f"{grandchild}, started by the timed-out step, is still running"
    assert failer["phase"] == "Failed"
    assert failer["outputs"]["exitCode"] == "3"
    assert failer["outputs"]["result"] == "out"
    log = (result.run_dir / "logs" / failer["id"] / "attempt-0.log").read_text()
    # both streams reach the log (their interleaving is the two pipes', as with a fresh process)
    assert "out" in log
    assert "err" in log


def test_forked_steps_and_the_server_die_with_the_executor(probe: Path, tmp_path: Path) -> None:
    executor = textwrap.dedent(
        f"""
        import os, signal, subprocess
        from argofl.pipelines.local import forkserver
        fs = forkserver.ForkServer(dict(os.environ), script={str(probe)!r}, entry="probe_main:main",
                                   preload=("json",), idle_preload=("decimal",), idle_steps=("where",))
        assert fs.wait_ready(60), fs.failure
        err = open({str(tmp_path / "err")!r}, "wb")
        step = fs.spawn([{str(probe)!r}, "step", "sleep"], env=dict(os.environ), cwd="/", stderr=err.fileno())
        grandchild = step.stdout.readline().decode().strip()
        def parent(p):
            return open(f"/proc/{{p}}/stat").read().rsplit(")", 1)[1].split()[1]
        server = [p for p in os.listdir("/proc") if p.isdigit() and parent(p) == str(os.getpid())]
        # and the second server, also a child of the first (the step is the first's other child)
        server += [p for p in os.listdir("/proc")
                   if p.isdigit() and parent(p) in server and p != str(step.pid)]
        print(step.pid, grandchild, *server, flush=True)
        os.kill(os.getpid(), signal.SIGKILL)
        """
    )
    proc = subprocess.run([sys.executable, "-c", executor], capture_output=True, text=True, timeout=120)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    step_pid, grandchild, *servers = (int(p) for p in proc.stdout.split())
    with contextlib.suppress(ProcessLookupError):
        os.kill(grandchild, signal.SIGKILL)  # orphaned with its step's group, like any step's child
    assert len(servers) == 2, f"expected the fork server and its second server, found {servers}"
    for pid in [step_pid, *servers]:
        _wait_gone(pid)
        assert not _alive(pid), f"process {pid} outlived the executor"


def test_preloading_leaves_cuda_threads_and_determinism_to_each_step() -> None:
    """What the real server imports starts no Python thread, no CUDA, no deterministic mode."""
    code = (
        "import json, sys, threading\n"
        "from argofl.pipelines.local import forkserver\n"
        "forkserver._import_all(forkserver.PRELOAD + forkserver.IDLE_PRELOAD)\n"
        "problem = forkserver._unsafe_to_fork()\n"
        "import torch\n"
        "print(json.dumps({'problem': problem, 'threads': threading.active_count(),\n"
        "    'cuda': torch.cuda.is_initialized(),\n"
        "    'deterministic': torch.are_deterministic_algorithms_enabled(),\n"
        "    'loaded': all(m in sys.modules\n"
        "                  for m in ('torch', 'mlflow', 'argofl.steps.cli', 'torch.export'))}))\n"
    )
    assert _report(code) == {
        "problem": "",
        "threads": 1,
        "cuda": False,
        "deterministic": False,
        "loaded": True,
    }


def _report(code: str) -> dict[str, Any]:
    """The JSON object the last line of ``python -c code`` prints."""
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return dict(json.loads(proc.stdout.strip().splitlines()[-1]))


def test_a_tensorflow_run_s_preload_starts_no_runtime_and_no_torch() -> None:
    """A TensorFlow/Keras run's server imports TensorFlow, Keras and MLflow's TensorFlow flavour, but starts
    no Python thread and not TensorFlow's runtime (eager context, thread pools), and leaves torch alone."""
    code = (
        "import json, sys, threading\n"
        "from argofl.pipelines.local import forkserver\n"
        "preload, idle = forkserver.preloads_for('tensorflow')\n"
        "forkserver._import_all(preload + idle)\n"
        "problem = forkserver._unsafe_to_fork()\n"
        "from tensorflow.python.eager import context\n"
        "print(json.dumps({'problem': problem, 'threads': threading.active_count(),\n"
        "    'runtime': bool(getattr(context.context_safe(), '_initialized', False)),\n"
        "    'torch': 'torch' in sys.modules,\n"
        "    'loaded': all(m in sys.modules for m in ('tensorflow', 'keras', 'mlflow', 'mlflow.tensorflow',\n"
        "                  'argofl.steps.cli', 'argofl.steps.frameworks.keras_backend'))}))\n"
    )
    assert _report(code) == {"problem": "", "threads": 1, "runtime": False, "torch": False, "loaded": True}


def test_no_step_is_forked_once_tensorflow_s_runtime_has_started() -> None:
    """Forking after TensorFlow has created its eager context (devices, thread pools) is unsafe: a preload
    that did so makes the server refuse, and every step runs as a fresh process."""
    code = (
        "import json\n"
        "from argofl.pipelines.local import forkserver\n"
        "forkserver._import_all(['tensorflow'])\n"
        "before = forkserver._unsafe_to_fork()\n"
        "import tensorflow as tf\n"
        "tf.constant(1.0) + 1.0\n"
        "print(json.dumps({'before': before, 'after': forkserver._unsafe_to_fork()}))\n"
    )
    assert _report(code) == {"before": "", "after": "refused: importing started TensorFlow's runtime"}


def test_steps_run_as_normal_processes_once_the_server_is_gone(
    server: forkserver.ForkServer, probe: Path, tmp_path: Path
) -> None:
    assert server.pid is not None
    os.kill(server.pid, signal.SIGKILL)
    end = time.monotonic() + 10
    while server.ready and time.monotonic() < end:  # until the executor has seen the server end
        time.sleep(0.05)
    assert not server.ready
    assert (
        server.spawn([str(probe), "step", "exit", "0"], env=dict(os.environ), cwd=str(tmp_path), stderr=2)
        is None
    )


@pytest.mark.slow
def test_tiny_fedavg_writes_the_same_bytes_with_and_without_the_fork_server(
    tmp_path: Path, fmnist_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from argofl.pipelines.cli import cli

    config = tmp_path / "fork-fedavg.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "experiment": "fork-fedavg",
                "data_limit": 300,
                "clients": 3,
                "min_clients": 2,
                "rounds": 2,
                "seed": 5,
            }
        )
    )
    blobs: dict[str, list[bytes]] = {}
    for mode in ("fresh", "forked"):
        monkeypatch.setenv(forkserver.DISABLE_VARIABLE, "0" if mode == "fresh" else "1")
        before = 0
        if mode == "forked":
            from argofl.pipelines.local_params import user_code_env

            path = f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"
            env = {**os.environ, "PATH": path, **user_code_env()}  # what argofl run gives its steps
            forkserver.shutdown()  # one an earlier test started with another environment would not serve
            server = forkserver.default_server(env)
            assert server is not None
            assert server.wait_ready(180), server.failure
            before = server.forked
        runs = tmp_path / mode
        result = CliRunner().invoke(
            cli, ["run", str(config), "--runs-dir", str(runs), "-p", f"data-dir={fmnist_dir}"]
        )
        assert result.exit_code == 0, result.output
        if mode == "forked":
            assert server is not None
            assert server.forked > before
        found = sorted(runs.rglob("round-*/global.safetensors"))
        assert len(found) == 3  # rounds 0, 1, 2 in the store (plus no exported copies under this name)
        blobs[mode] = [p.read_bytes() for p in found]
    assert blobs["fresh"] == blobs["forked"]


def _alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def _wait_gone(pid: int, seconds: float = 10.0) -> None:
    """Give a process that has been sent SIGKILL the moment it takes to die (a bounded wait)."""
    end = time.monotonic() + seconds
    while _alive(pid) and time.monotonic() < end:
        time.sleep(0.05)


SERVER_OBJECT = """
import os, weakref


class Resource:
    pass


RESOURCE = Resource()
MARKER = os.path.join(os.path.dirname(__file__), "server-finalizer-ran")
weakref.finalize(RESOURCE, lambda: open(MARKER, "a").write(f"{os.getpid()}\\n"))
"""


def test_a_step_leaves_the_servers_finalizers_to_the_server(probe: Path, tmp_path: Path) -> None:
    """An object the server created at preload (torch's operator libraries, a temporary directory) is
    not finalized by each step that exits; what the step creates is."""
    (probe.parent / "server_object.py").write_text(textwrap.dedent(SERVER_OBJECT))
    fs = forkserver.ForkServer(
        dict(os.environ), script=probe, entry="probe_main:main", preload=("json", "server_object")
    )
    try:
        assert fs.wait_ready(60), fs.failure
        code, out, _ = _run(fs, [str(probe), "step", "finalizer"], dict(os.environ), tmp_path, tmp_path)
        assert fs.forked == 1
    finally:
        fs.close()
    assert (code, out) == (0, b"step finalizer ran\n")
    assert not (probe.parent / "server-finalizer-ran").exists()


def test_argofl_run_forks_every_step_including_the_first(
    tmp_path: Path, fmnist_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``argofl run`` starts the server before compiling, and init (requested while the server still
    imports) waits for it instead of importing torch and MLflow again as a fresh process."""
    from argofl.pipelines.cli import cli

    monkeypatch.delenv(forkserver.DISABLE_VARIABLE, raising=False)
    forkserver.shutdown()  # this test needs the server `argofl run` starts, not an earlier one
    config = tmp_path / "first-fedavg.yaml"
    config.write_text(
        yaml.safe_dump({"experiment": "first-fedavg", "data_limit": 200, "clients": 2, "rounds": 1})
    )
    runs = tmp_path / "runs"
    result = CliRunner().invoke(
        cli, ["run", str(config), "--runs-dir", str(runs), "-p", f"data-dir={fmnist_dir}"]
    )
    assert result.exit_code == 0, result.output
    server = forkserver.default_server()
    assert server is not None
    status = json.loads(next(runs.glob("workflows/*/status.json")).read_text())
    pods = [n["displayName"] for n in status["nodes"].values() if n.get("type") == "Pod"]
    assert any(p.startswith("init") for p in pods)
    assert server.forked == len(pods), f"{server.forked} of {len(pods)} pods forked: {pods}"


def _where(server: forkserver.ForkServer, probe: Path, tmp_path: Path) -> dict[str, Any]:
    code, out, err = _run(server, [str(probe), "step", "where"], dict(os.environ), tmp_path, tmp_path)
    assert code == 0, err
    return dict(json.loads(out))


def test_idle_steps_fork_from_the_second_server_once_it_has_imported(probe: Path, tmp_path: Path) -> None:
    """``where`` stands for finalize: the first server forks it until the second one has imported the
    slow module, at idle priority, then the second one does; other steps stay with the first."""
    release = tmp_path / "release"
    (probe.parent / "probe_slow.py").write_text(
        f"import os, time\nwhile not os.path.exists({str(release)!r}):\n    time.sleep(0.02)\n"
        f"open({str(tmp_path / 'policy')!r}, 'w').write(str(os.sched_getscheduler(0)))\n"
    )
    fs = forkserver.ForkServer(
        dict(os.environ),
        script=probe,
        entry="probe_main:main",
        preload=("json",),
        idle_preload=("probe_slow",),
        idle_steps=("where",),
    )
    try:
        assert fs.wait_ready(60), fs.failure
        early = _where(fs, probe, tmp_path)  # the second server is still importing
        assert early["ppid"] == fs.pid
        assert not early["slow_module"]
        release.touch()
        end = time.monotonic() + 60
        late = early
        while late["ppid"] == fs.pid and time.monotonic() < end:
            time.sleep(0.05)
            late = _where(fs, probe, tmp_path)
        assert late["ppid"] != fs.pid, "the second server never took over"
        assert late["slow_module"]
        assert late["own_session"]
        assert (tmp_path / "policy").read_text() == str(os.SCHED_IDLE)  # imported at idle priority
        assert late["policy"] == os.SCHED_OTHER  # which was the importing thread's only
        helper = late["ppid"]
        code, out, _ = _run(fs, [str(probe), "step", "report"], dict(os.environ), tmp_path, tmp_path)
        assert code == 0
        assert json.loads(out)["own_group"]
        assert _parent(helper) == fs.pid
    finally:
        fs.close()
    _wait_gone(helper)
    assert not _alive(helper), "the second server outlived the first"


def _parent(pid: int) -> int:
    return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])


def test_a_run_started_with_another_environment_gets_a_server_for_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each run prestarts the server with its steps' environment. A server an earlier run of this process
    started with another one (another directory on PYTHONPATH: the user's code) would serve none of the
    new run's steps, which would all import torch and MLflow again as fresh processes."""
    monkeypatch.delenv(forkserver.DISABLE_VARIABLE, raising=False)
    forkserver.shutdown()
    first, second = (
        {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}", **extra}
        for extra in ({"PYTHONPATH": str(tmp_path / "a")}, {"PYTHONPATH": str(tmp_path / "b")})
    )
    argv = [str(Path(sys.executable).parent / "argofl"), "step", "train", "--help"]
    try:
        forkserver.prestart(first)
        old = forkserver.default_server()
        assert old is not None
        assert old.serves(argv, first)
        forkserver.prestart(second)
        new = forkserver.default_server()
        assert new is not None
        assert new.serves(argv, second)
        assert new is not old
        forkserver.prestart(second)  # the same environment again: the same server
        assert forkserver.default_server() is new
        forkserver.prestart(second, "tensorflow")  # a TensorFlow run: a server that imports TensorFlow
        keras = forkserver.default_server()
        assert keras is not None
        assert keras is not new
        assert (keras.preload, keras.idle["modules"]) == (
            forkserver.TENSORFLOW_PRELOAD,
            list(forkserver.TENSORFLOW_IDLE_PRELOAD),
        )
        assert new.wait_ready(0) is False  # the torch one was stopped
        forkserver.prestart(second, "tensorflow")
        assert forkserver.default_server() is keras
    finally:
        forkserver.shutdown()


class _LateReader:
    """The executor's end of a step's channel, first read only once the step has ended."""

    def __init__(self, channel: socket.socket) -> None:
        self._channel = channel
        self._first = True

    def recv(self, size: int) -> bytes:
        if self._first:
            self._first = False
            time.sleep(1.0)  # the step ("exit 3") is done by now: pid and exit lines arrive together
        return self._channel.recv(size)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._channel, name)


def test_a_step_that_ends_before_the_executor_reads_its_pid_reports_its_exit_code(
    server: forkserver.ForkServer, probe: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The server sends ``pid N`` at the fork and ``exit C`` when the step ends; on a loaded machine both
    can be waiting when the executor first reads. It took them for one reply (``int('N\\nexit C')``:
    ValueError), and the node failed whatever the step did."""
    pair = socket.socketpair

    def late_pair(*args: Any, **kwargs: Any) -> tuple[Any, socket.socket]:
        ours, theirs = pair(*args, **kwargs)
        return _LateReader(ours), theirs

    monkeypatch.setattr(forkserver.socket, "socketpair", late_pair)
    code, _, _ = _run(server, [str(probe), "step", "exit", "3"], dict(os.environ), tmp_path, tmp_path)
    assert code == 3


@pytest.mark.slow
def test_a_keras_run_forks_every_step_from_a_tensorflow_server_with_the_same_bytes(
    tmp_path: Path, fmnist_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``argofl run`` of a TensorFlow config starts a server that has imported TensorFlow (not torch), forks
    every step from it, and writes the same checkpoints as fresh processes (each importing TensorFlow)."""
    from argofl.pipelines.cli import cli

    config = tmp_path / "fork-keras.yaml"
    settings = {"experiment": "fork-keras", "framework": "tensorflow", "data_limit": 200, "clients": 2}
    config.write_text(yaml.safe_dump({**settings, "min_clients": 2, "rounds": 1, "seed": 3}))
    blobs: dict[str, list[bytes]] = {}
    for mode in ("fresh", "forked"):
        monkeypatch.setenv(forkserver.DISABLE_VARIABLE, "0" if mode == "fresh" else "1")
        forkserver.shutdown()  # the one `argofl run` starts, not an earlier test's
        runs = tmp_path / mode
        result = CliRunner().invoke(
            cli, ["run", str(config), "--runs-dir", str(runs), "-p", f"data-dir={fmnist_dir}"]
        )
        assert result.exit_code == 0, result.output
        server = forkserver.default_server()
        if mode == "forked":
            assert server is not None
            assert server.preload == forkserver.TENSORFLOW_PRELOAD
            status = json.loads(next(runs.glob("workflows/*/status.json")).read_text())
            pods = [n["displayName"] for n in status["nodes"].values() if n.get("type") == "Pod"]
            assert server.forked == len(pods), f"{server.forked} of {len(pods)} pods forked: {pods}"
        else:
            assert server is None
        found = sorted(runs.rglob("round-*/global.safetensors"))
        assert len(found) == 2
        blobs[mode] = [p.read_bytes() for p in found]
    forkserver.shutdown()
    assert blobs["fresh"] == blobs["forked"]
