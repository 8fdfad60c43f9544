"""The installed distribution: one top-level package, ``argofl``, that cannot collide with users' code.

The repository keeps its ``pipelines/`` and ``steps/`` folders; the wheel installs them as
``argofl.pipelines`` and ``argofl.steps``. The test builds the wheel, installs it into a fresh virtual
environment next to unrelated top-level ``steps`` and ``pipelines`` packages (as other distributions or
a user's own code would provide), and runs the console script and real steps there.
"""

from __future__ import annotations

import json
import subprocess
import sys
import sysconfig
import venv
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def fresh_venv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A new venv holding only the argofl wheel (deps reach it through a .pth to this environment)."""
    root = tmp_path_factory.mktemp("packaging")
    wheels = root / "wheels"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            str(wheels),
            ".",
        ],
        cwd=REPO,
        check=True,
        capture_output=True,
    )
    [wheel] = wheels.glob("argofl-*.whl")
    env_dir = root / "venv"
    venv.EnvBuilder(with_pip=True).create(env_dir)
    python = env_dir / "bin" / "python"
    subprocess.run(
        [str(python), "-m", "pip", "install", "-q", "--no-deps", "--no-index", str(wheel)],
        check=True,
        capture_output=True,
    )
    site = Path(
        subprocess.run(
            [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
            check=True,
            capture_output=True,
            text=True,
        ).stdout.strip()
    )
    for name in ("steps", "pipelines"):  # somebody else's packages with the generic names
        (site / name).mkdir()
        (site / name / "__init__.py").write_text(f"OWNER = 'not argofl: {name}'\n")
    # the dependencies: this environment's package directories (not its own argofl, a finder hook)
    dependencies = [p for p in sys.path if p.endswith("site-packages")] or [sysconfig.get_paths()["purelib"]]
    (site / "zz_dependencies.pth").write_text("\n".join(dependencies) + "\n")
    return env_dir


def test_the_wheel_installs_one_argofl_package_only(fresh_venv: Path) -> None:
    python = fresh_venv / "bin" / "python"
    code = (
        "import json, steps, pipelines, argofl.steps.store as store, argofl.pipelines.cli as cli;"
        "print(json.dumps([steps.OWNER, pipelines.OWNER, store.__name__, cli.__name__, store.__file__]))"
    )
    out = subprocess.run(
        [str(python), "-c", code], check=True, capture_output=True, text=True, cwd=fresh_venv
    )
    *names, store_file = json.loads(out.stdout)
    assert names == [
        "not argofl: steps",
        "not argofl: pipelines",
        "argofl.steps.store",
        "argofl.pipelines.cli",
    ]
    assert Path(store_file).is_relative_to(fresh_venv), f"argofl imported from {store_file}, not the wheel"


@pytest.mark.slow
def test_the_console_script_and_real_steps_run_beside_foreign_steps_packages(
    fresh_venv: Path, tmp_path: Path
) -> None:
    argofl = fresh_venv / "bin" / "argofl"
    help_text = subprocess.run([str(argofl), "--help"], check=True, capture_output=True, text=True).stdout
    assert "Usage: argofl" in help_text
    env = {
        "PATH": f"{fresh_venv / 'bin'}:/usr/bin:/bin",
        "HOME": str(tmp_path),
        "ARGOFL_STORE": (tmp_path / "store").as_uri(),
        "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlflow.db'}",
    }
    params = ["experiment=pkg", "framework=torch", "model=mlp", "clients=3", "min-clients=2", "rounds=1"]
    init = subprocess.run(
        [str(argofl), "step", "init", "--run-key", "pkg/run-1", "--workflow-name", "run-1"]
        + [arg for p in params for arg in ("--param", p)],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=300,
    )
    assert init.returncode == 0, init.stderr[-2000:]
    assert (tmp_path / "store" / "pkg" / "run-1" / "round-0000" / "global.json").is_file()
    distribute = subprocess.run(
        [str(argofl), "step", "distribute", "--run-key", "pkg/run-1", "--round", "1"],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=300,
    )
    assert distribute.returncode == 0, distribute.stderr[-2000:]
    groups = json.loads(distribute.stdout)
    assert len(groups) == 3  # fraction 1.0: every client, one per pod
    assert all(label.startswith("round 1 / client ") for label in groups)
