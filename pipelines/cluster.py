"""Talking to an Argo server: the one place the hera ``WorkflowsService`` is built, plus plain-dict helpers
for workflow manifests (parameters, resubmission) and for the Argo-shaped ``status`` of a workflow
(rounds, finished steps), shared by ``argofl submit``, ``status``, ``watch`` and ``resubmit``.

The status helpers read the same shape the local executor writes to ``runs/workflows/<run>/status.json``:
``status.nodes`` maps node ids to nodes with ``type`` (Pod, Retry, DAG, StepGroup, TaskGroup, Steps),
``templateName``, ``phase``, ``boundaryID``, ``children``, ``inputs``/``outputs.parameters``.
"""

from __future__ import annotations

import copy
import json
import os
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar

from argofl.steps.errors import ArgoflError
from argofl.steps.labels import LabelError, parse_round

if TYPE_CHECKING:
    import requests
    from hera.workflows import WorkflowsService

__all__ = [
    "DEFAULT_NAMESPACE",
    "ClusterError",
    "ClusterTarget",
    "RoundView",
    "finished_steps",
    "format_number",
    "last_completed_round",
    "make_service",
    "merge_children",
    "normalize_host",
    "outputs_of",
    "parameters_of",
    "resubmission_manifest",
    "resume_problem",
    "round_views",
    "set_parameters",
    "step_line",
    "step_of",
    "workflow_url",
]

DEFAULT_NAMESPACE = "argofl"
CONNECT_TIMEOUT_S = 10.0
READ_TIMEOUT_S = 60.0
DONE_PHASES = ("Succeeded", "Failed", "Error")
_STEP_TEMPLATES = ("init", "distribute", "train", "aggregate", "evaluate", "finalize", "finish")
T = TypeVar("T")


class ClusterError(ArgoflError, RuntimeError):
    """The Argo server could not be reached, refused a request or answered unexpectedly (one line)."""


# --------------------------------------------------------------------------------------------- client


def normalize_host(value: str, *, secure: bool = True) -> str:
    """``host:port`` (as ``argo`` takes in ``ARGO_SERVER``) or a URL → a base URL without trailing ``/``."""
    host = value.strip()
    if not host:
        raise ValueError("empty Argo server address")
    if "://" not in host:
        host = f"{'https' if secure else 'http'}://{host}"
    scheme = host.split("://", 1)[0].lower()
    if scheme not in ("http", "https"):
        raise ValueError(f"Argo server {value!r}: expected host:port or an http(s):// URL")
    return host.rstrip("/")


def workflow_url(host: str, namespace: str, name: str) -> str:
    """The Argo UI page of a workflow."""
    return f"{host.rstrip('/')}/workflows/{namespace}/{name}"


def _session() -> requests.Session:
    import requests

    class TimeoutSession(requests.Session):
        """Every request gets a timeout (hera passes none) and the last response is kept for errors."""

        last_response: requests.Response | None = None

        def request(self, method: Any, url: Any, *args: Any, **kwargs: Any) -> requests.Response:
            kwargs.setdefault("timeout", (CONNECT_TIMEOUT_S, READ_TIMEOUT_S))
            self.last_response = None
            response = super().request(method, url, *args, **kwargs)
            self.last_response = response
            return response

    return TimeoutSession()


def make_service(host: str, token: str | None, namespace: str, verify: bool) -> WorkflowsService:
    """A hera ``WorkflowsService`` for ``host`` (a base URL); ``token`` is sent as ``Bearer``."""
    from hera.workflows import WorkflowsService

    token = (token or "").strip() or None  # hera adds "Bearer " unless the token already has a scheme
    return WorkflowsService(
        host=host.rstrip("/") + "/",  # hera urljoin()s relative API paths onto the host
        token=token,
        namespace=namespace,
        verify_ssl=verify,
        session=_session(),
    )


@dataclass
class ClusterTarget:
    """Where the Argo server is; builds the service on first use and turns failures into ClusterError."""

    host: str
    namespace: str = DEFAULT_NAMESPACE
    token: str | None = None
    verify: bool = True
    _service: WorkflowsService | None = field(default=None, repr=False)

    @property
    def service(self) -> WorkflowsService:
        if self._service is None:
            self._service = make_service(self.host, self.token, self.namespace, self.verify)
        return self._service

    def url(self, name: str) -> str:
        return workflow_url(self.host, self.namespace, name)

    def create(self, manifest: Mapping[str, Any]) -> dict[str, Any]:
        """Create the workflow ``manifest`` in the namespace; return the created workflow as a dict."""
        from hera.workflows.models import Workflow, WorkflowCreateRequest

        request = WorkflowCreateRequest(workflow=Workflow.model_validate(dict(manifest)))
        created = self._call(
            "create the workflow", lambda: self.service.create_workflow(req=request, namespace=self.namespace)
        )
        return _plain(created)

    def get(self, name: str) -> dict[str, Any]:
        """The workflow ``name`` (manifest and status) as a dict."""
        workflow = self._call(
            f"to return workflow {name}",
            lambda: self.service.get_workflow(name=name, namespace=self.namespace),
            name=name,
        )
        return _plain(workflow)

    def apply_template(self, manifest: Mapping[str, Any]) -> str:
        """Create the WorkflowTemplate ``manifest``, or update the one of that name; return
        "created" or "updated" (e.g. a config's blocks of rounds, ``<config>-rounds``)."""
        from hera.workflows.models import (
            WorkflowTemplate,
            WorkflowTemplateCreateRequest,
            WorkflowTemplateUpdateRequest,
        )

        name = str(manifest["metadata"]["name"])
        body = {k: v for k, v in manifest.items() if k != "status"}
        existing = self._call(f"to return workflow template {name}", lambda: self._template_or_none(name))
        if existing is None:
            request = WorkflowTemplateCreateRequest(template=WorkflowTemplate.model_validate(body))
            self._call(
                f"create workflow template {name}",
                lambda: self.service.create_workflow_template(req=request, namespace=self.namespace),
            )
            return "created"
        version = (existing.get("metadata") or {}).get("resourceVersion")
        body = {**body, "metadata": {**body["metadata"], "resourceVersion": version}}
        update = WorkflowTemplateUpdateRequest(name=name, template=WorkflowTemplate.model_validate(body))
        self._call(
            f"update workflow template {name}",
            lambda: self.service.update_workflow_template(name, req=update, namespace=self.namespace),
        )
        return "updated"

    def _template_or_none(self, name: str) -> dict[str, Any] | None:
        from hera.exceptions import HeraException

        try:
            return _plain(self.service.get_workflow_template(name=name, namespace=self.namespace))
        except (HeraException, KeyError, ValueError):
            response = getattr(self.service.session, "last_response", None)
            if response is not None and response.status_code == 404:
                return None
            raise

    def children(self, name: str) -> list[dict[str, Any]]:
        """The Workflows that workflow ``name`` created (label ``argofl.io/parent``), in creation order:
        the blocks of rounds of an experiment compiled with ``cluster.rounds_per_workflow``."""
        from argofl.pipelines.blocks import PARENT_LABEL

        listed = self._call(
            f"to list the child workflows of {name}",
            lambda: self.service.list_workflows(
                namespace=self.namespace, label_selector=f"{PARENT_LABEL}={name}"
            ),
        )
        items = _plain(listed).get("items") or []
        return sorted(items, key=lambda w: str((w.get("metadata") or {}).get("creationTimestamp") or ""))

    def get_with_children(self, name: str) -> dict[str, Any]:
        """The workflow ``name`` with its children's nodes merged into its status (:func:`merge_children`)."""
        workflow = self.get(name)
        if "rounds-per-workflow" not in parameters_of(workflow):
            return workflow
        return merge_children(workflow, self.children(name))

    def _call(self, action: str, call: Callable[[], T], *, name: str | None = None) -> T:
        import pydantic
        import requests
        from hera.exceptions import HeraException

        try:
            return call()
        except requests.exceptions.SSLError as exc:
            raise ClusterError(
                f"cannot reach Argo server at {self.host}: TLS error ({_reason(exc)}); "
                "use --no-verify or ARGO_INSECURE_SKIP_VERIFY=true for a self-signed certificate"
            ) from None
        except requests.exceptions.Timeout:
            raise ClusterError(
                f"cannot reach Argo server at {self.host}: no answer within {READ_TIMEOUT_S:.0f}s"
            ) from None
        except requests.exceptions.RequestException as exc:
            raise ClusterError(f"cannot reach Argo server at {self.host}: {_reason(exc)}") from None
        except (HeraException, KeyError, ValueError, pydantic.ValidationError) as exc:
            response = getattr(self.service.session, "last_response", None)
            if response is None or response.ok:
                raise ClusterError(
                    f"Argo server at {self.host} gave an unexpected answer when asked to {action}: "
                    f"{_one_line(str(exc))}"
                ) from None
            code = response.status_code
            if code == 404 and name is not None:
                raise ClusterError(
                    f"workflow {name} not found in namespace {self.namespace} at {self.host}"
                ) from None
            hint = " (check --token / ARGO_TOKEN)" if code == 401 else ""
            raise ClusterError(
                f"Argo server refused to {action.removeprefix('to ')}: {code} {response.reason}: "
                f"{_error_message(response)}{hint}"
            ) from None


def _plain(model: Any) -> dict[str, Any]:
    data: dict[str, Any] = model.model_dump(mode="json", by_alias=True, exclude_none=True)
    return data


def _reason(exc: BaseException) -> str:
    text = str(exc)
    errno = re.search(r"\[Errno -?\d+\] ([^'\")\]]+)", text)
    if errno:
        return errno.group(1).strip()
    if "CERTIFICATE_VERIFY_FAILED" in text:
        return "certificate verify failed"
    return _one_line(text) or type(exc).__name__


def _error_message(response: requests.Response) -> str:
    try:
        body = response.json()
    except ValueError:
        return _one_line(response.text) or "(no message)"
    if isinstance(body, dict) and body.get("message"):
        return _one_line(str(body["message"]))
    return _one_line(json.dumps(body))


def _one_line(text: str, limit: int = 300) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= limit else flat[: limit - 1] + "…"


def env_verify(default: bool = True) -> bool:
    """``ARGO_INSECURE_SKIP_VERIFY`` (true/1/yes) turns TLS verification off."""
    value = os.environ.get("ARGO_INSECURE_SKIP_VERIFY", "").strip().lower()
    if value in ("1", "true", "yes", "on"):
        return False
    return default


def env_secure() -> bool:
    """``ARGO_SECURE=false`` (as the ``argo`` CLI reads it) means plain http for a bare ``host:port``."""
    return os.environ.get("ARGO_SECURE", "").strip().lower() not in ("0", "false", "no", "off")


# ------------------------------------------------------------------------------------------- manifests


def parameters_of(workflow: Mapping[str, Any]) -> dict[str, str]:
    """``spec.arguments.parameters`` as name → value (missing values as '')."""
    params = ((workflow.get("spec") or {}).get("arguments") or {}).get("parameters") or []
    return {str(p["name"]): "" if p.get("value") is None else str(p["value"]) for p in params}


def merge_children(workflow: Mapping[str, Any], children: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """``workflow`` with the nodes of the Workflows it created in its ``status.nodes`` (node ids are unique
    across workflows: they start with the workflow's name), so rounds, steps and the last completed
    round read as in one workflow; ``status.children`` lists the children's names and phases."""
    merged = copy.deepcopy(dict(workflow))
    status = dict(merged.get("status") or {})
    nodes = dict(status.get("nodes") or {})
    for child in children:
        nodes.update((child.get("status") or {}).get("nodes") or {})
    status["nodes"] = nodes
    status["children"] = [
        {
            "name": str((c.get("metadata") or {}).get("name") or ""),
            "phase": str((c.get("status") or {}).get("phase") or "Pending"),
        }
        for c in children
    ]
    merged["status"] = status
    return merged


def outputs_of(status: Mapping[str, Any]) -> dict[str, str]:
    """The workflow's global outputs (``status.outputs.parameters``: mlflow-run-url, final-accuracy, …)."""
    params = ((status.get("outputs") or {}).get("parameters")) or []
    return {str(p["name"]): str(p.get("value") or "") for p in params if p.get("name")}


def set_parameters(
    workflow: dict[str, Any], values: Mapping[str, str], *, add: Iterable[str] = ()
) -> dict[str, Any]:
    """Set parameter values in ``workflow`` (in place; returned). Names not declared raise KeyError,
    except those in ``add``, which are appended when missing."""
    arguments = workflow.setdefault("spec", {}).setdefault("arguments", {})
    params: list[dict[str, Any]] = arguments.setdefault("parameters", [])
    by_name = {p["name"]: p for p in params}
    addable = set(add)
    for name, value in values.items():
        if name in by_name:
            by_name[name]["value"] = str(value)
        elif name in addable:
            entry = {"name": name, "value": str(value)}
            params.append(entry)
            by_name[name] = entry
        else:
            raise KeyError(name)
    return workflow


_KEEP_ANNOTATIONS = ("workflows.argoproj.io/description", "workflows.argoproj.io/title")


_RESUME_PARAMETERS = ("start-round", "resume-from")


def resume_problem(workflow: Mapping[str, Any]) -> str | None:
    """Why ``workflow`` cannot continue from a later round (None when it can).

    It can when its templates use the ``start-round`` and ``resume-from`` parameters (the round loop
    starts at one, init copies the earlier run's state from the other); setting them on a workflow that
    ignores them would silently rerun it from round 1."""
    templates = json.dumps((workflow.get("spec") or {}).get("templates") or [])
    missing = [p for p in _RESUME_PARAMETERS if "{{workflow.parameters." + p + "}}" not in templates]
    if not missing:
        return None
    name = (workflow.get("metadata") or {}).get("name") or "the workflow"
    return (
        f"{name} cannot resume from a later round: its templates do not use the parameter(s) "
        f"{', '.join(missing)} (a kind that cannot resume, or compiled by an older argofl); "
        "nothing was submitted; recompile its config and submit it again"
    )


def resubmission_manifest(old: Mapping[str, Any], start_round: int, resume_from: str) -> dict[str, Any]:
    """A new workflow from ``old``'s spec continuing at ``start_round`` from run ``resume_from``.

    Keeps the user's labels and annotations (not the ones the controller manages), drops ``status`` and
    server-assigned metadata, and uses ``generateName`` so the server picks a fresh name. A workflow that
    cannot resume (:func:`resume_problem`) raises :class:`ClusterError`."""
    problem = resume_problem(old)
    if problem is not None:
        raise ClusterError(problem)
    meta = old.get("metadata") or {}
    name = str(meta.get("name") or "")
    generate = meta.get("generateName") or (re.sub(r"-[a-z0-9]{5}$", "", name) + "-" if name else "argofl-")
    labels = {
        k: v for k, v in (meta.get("labels") or {}).items() if not k.startswith("workflows.argoproj.io/")
    }
    annotations = {
        k: v
        for k, v in (meta.get("annotations") or {}).items()
        if not k.startswith("workflows.argoproj.io/") or k in _KEEP_ANNOTATIONS
    }
    new_meta: dict[str, Any] = {"generateName": generate}
    if labels:
        new_meta["labels"] = labels
    if annotations:
        new_meta["annotations"] = annotations
    manifest: dict[str, Any] = {
        "apiVersion": old.get("apiVersion") or "argoproj.io/v1alpha1",
        "kind": old.get("kind") or "Workflow",
        "metadata": new_meta,
        "spec": copy.deepcopy(dict(old.get("spec") or {})),
    }
    set_parameters(
        manifest,
        {"start-round": str(start_round), "resume-from": resume_from},
        add=_RESUME_PARAMETERS,
    )
    return manifest


# ---------------------------------------------------------------------------------------------- status


def _params(node: Mapping[str, Any], kind: str) -> dict[str, str]:
    return {
        str(p.get("name")): "" if p.get("value") is None else str(p.get("value"))
        for p in (node.get(kind) or {}).get("parameters") or []
    }


def _parents(nodes: Mapping[str, Mapping[str, Any]]) -> dict[str, str]:
    parent: dict[str, str] = {}
    for nid, node in nodes.items():
        for child in node.get("children") or []:
            parent.setdefault(str(child), str(nid))
    return parent


def _round_nodes(nodes: Mapping[str, Mapping[str, Any]]) -> dict[str, int]:
    """Round DAG node id → round number."""
    out: dict[str, int] = {}
    for nid, node in nodes.items():
        if node.get("type") != "DAG" or node.get("templateName") != "round":
            continue
        number = _round_number(_params(node, "inputs").get("round"))
        if number is None:  # the loop child's name, round(2:round 3)
            match = re.search(r"\(\d+:(round \d+|\d+)\)$", str(node.get("displayName", "")))
            number = _round_number(match.group(1)) if match else None
        if number is not None:
            out[str(nid)] = number
    return out


def _round_number(value: Any) -> int | None:
    """A round input (``round 3`` or ``3``) as a number; None when it is neither."""
    try:
        return parse_round(str(value))
    except LabelError:
        return None


def _round_of(node: Mapping[str, Any], rounds: Mapping[str, int]) -> int | None:
    number = _round_number(_params(node, "inputs").get("round"))
    if number is None:
        number = rounds.get(str(node.get("boundaryID", "")))
    return number


@dataclass(frozen=True)
class Step:
    """One finished (or running) step of a workflow: a Retry node, or a Pod that is not a retry attempt."""

    node: Mapping[str, Any]
    template: str
    round: int | None
    inputs: Mapping[str, str]
    outputs: Mapping[str, str]

    @property
    def phase(self) -> str:
        return str(self.node.get("phase", ""))

    @property
    def key(self) -> tuple[str, str]:
        return (str(self.node.get("id", "")), self.phase)


def step_template(node: Mapping[str, Any]) -> str:
    """The step a node runs: its template name, with a placement group's ``train-<group>`` read as train."""
    name = str(node.get("templateName", ""))
    return "train" if name.startswith("train-") else name


def _steps(nodes: Mapping[str, Mapping[str, Any]]) -> list[Step]:
    parents = _parents(nodes)
    rounds = _round_nodes(nodes)
    out: list[Step] = []
    for nid, node in nodes.items():
        kind = node.get("type")
        if kind == "Pod" and nodes.get(parents.get(str(nid), ""), {}).get("type") == "Retry":
            continue  # an attempt; its Retry node stands for the step
        if kind not in ("Pod", "Retry"):
            continue
        inputs = _params(node, "inputs")
        if not inputs and kind == "Retry":  # take them from the attempts
            for child in node.get("children") or []:
                inputs = inputs or _params(nodes.get(str(child), {}), "inputs")
        merged = {**node, "inputs": {"parameters": [{"name": k, "value": v} for k, v in inputs.items()]}}
        if kind == "Retry":
            node = _with_attempt_message(node, nodes)
        out.append(
            Step(
                node=node,
                template=step_template(node),
                round=_round_of(merged, rounds),
                inputs=inputs,
                outputs=_params(node, "outputs"),
            )
        )
    return out


def _with_attempt_message(
    node: Mapping[str, Any], nodes: Mapping[str, Mapping[str, Any]]
) -> Mapping[str, Any]:
    """A failed Retry node says why retrying stopped ("No more retries left"); show its last
    attempt's own message (the step's error line) instead."""
    children = node.get("children") or []
    if node.get("phase") not in ("Failed", "Error") or not children:
        return node
    last = nodes.get(str(children[-1]), {})
    return {**node, "message": last["message"]} if last.get("message") else node


def step_of(node: Mapping[str, Any]) -> Step:
    """A step from one node alone (its round from its own ``round`` input), e.g. a live executor event."""
    inputs = _params(node, "inputs")
    return Step(
        node=node,
        template=step_template(node),
        round=_round_number(inputs.get("round")),
        inputs=inputs,
        outputs=_params(node, "outputs"),
    )


def finished_steps(status: Mapping[str, Any]) -> list[Step]:
    """The finished steps of a workflow status, in the order they finished."""
    done = [s for s in _steps(status.get("nodes") or {}) if s.phase in DONE_PHASES]
    done.sort(key=lambda s: (str(s.node.get("finishedAt") or ""), str(s.node.get("id", ""))))
    return done


def format_number(value: Any, fmt: str = ".4f") -> str:
    try:
        return format(float(value), fmt)
    except (TypeError, ValueError):
        return "?"


def step_line(step: Step) -> str:
    """One line describing a finished step (round, client, metrics), as ``watch`` prints it."""
    mark = "✔" if step.phase == "Succeeded" else "✖"
    where = f"round {step.round}" if step.round is not None else ""
    out = step.outputs
    if step.phase != "Succeeded" and step.template in ("distribute", "aggregate", "evaluate"):
        text = f"{where} {mark} {step.template}"
    elif step.template == "train":
        clients = str(step.inputs.get("clients", "?"))
        text = f"{clients if clients.startswith('round') else f'{where} · client {clients}'} {mark}"
        if "accuracy" in out or "loss" in out:
            text += f" train loss {format_number(out.get('loss'))} acc {format_number(out.get('accuracy'))}"
    elif step.template == "aggregate":
        text = f"{where} {mark} aggregated {format_number(out.get('clients'), '.0f')} updates"
    elif step.template == "evaluate":
        acc, loss = format_number(out.get("accuracy")), format_number(out.get("loss"))
        text = f"{where} {mark} test accuracy {acc} loss {loss}"
    elif step.template == "distribute":
        text = f"{where} {mark} clients sampled"
    else:
        text = f"{step.template or step.node.get('displayName', '?')} {mark}"
    if step.phase != "Succeeded" and step.node.get("message"):
        text += f" ({_one_line(str(step.node['message']), 200)})"
    return text.strip()


@dataclass(frozen=True)
class RoundView:
    """Progress of one round."""

    round: int
    phase: str
    trained: int = 0
    train_failed: int = 0
    train_total: int = 0
    aggregated: str | None = None
    loss: str | None = None
    accuracy: str | None = None
    message: str = ""

    @property
    def evaluated(self) -> bool:
        return self.accuracy is not None or self.loss is not None

    def line(self) -> str:
        text = f"round {self.round:>3}  {self.phase:<9}"
        if self.train_total:
            text += f"  clients {self.trained}/{self.train_total} trained"
            if self.train_failed:
                text += f" ({self.train_failed} failed)"
        if self.aggregated is not None:
            text += f"  aggregated {format_number(self.aggregated, '.0f')}"
        if self.evaluated:
            text += f"  test accuracy {format_number(self.accuracy)} loss {format_number(self.loss)}"
        if self.message and self.phase != "Succeeded":
            text += f"  ({_one_line(self.message, 160)})"
        return text


def round_views(status: Mapping[str, Any]) -> list[RoundView]:
    """Per-round progress from a workflow status, by round number."""
    nodes: Mapping[str, Mapping[str, Any]] = status.get("nodes") or {}
    rounds = _round_nodes(nodes)
    steps = _steps(nodes)
    views: list[RoundView] = []
    for nid, number in sorted(rounds.items(), key=lambda kv: kv[1]):
        mine = [s for s in steps if s.round == number]
        train = [s for s in mine if s.template == "train"]
        aggregate = [s for s in mine if s.template == "aggregate" and s.phase == "Succeeded"]
        evaluate = [s for s in mine if s.template == "evaluate" and s.phase == "Succeeded"]
        node = nodes[nid]
        failed = [s for s in mine if s.phase in ("Failed", "Error") and s.node.get("message")]
        failed.sort(key=lambda s: s.template == "train")  # the step that sank the round first
        message = str(failed[0].node["message"] if failed else node.get("message") or "")
        views.append(
            RoundView(
                round=number,
                phase=str(node.get("phase", "")),
                trained=sum(s.phase == "Succeeded" for s in train),
                train_failed=sum(s.phase in ("Failed", "Error") for s in train),
                train_total=len(train),
                aggregated=aggregate[-1].outputs.get("clients") if aggregate else None,
                loss=evaluate[-1].outputs.get("loss") if evaluate else None,
                accuracy=evaluate[-1].outputs.get("accuracy") if evaluate else None,
                message=message,
            )
        )
    return views


def last_completed_round(status: Mapping[str, Any]) -> int | None:
    """The largest round whose ``evaluate`` step succeeded (None when no round completed)."""
    done = [
        s.round
        for s in _steps(status.get("nodes") or {})
        if s.template == "evaluate" and s.phase == "Succeeded" and s.round is not None
    ]
    return max(done) if done else None
