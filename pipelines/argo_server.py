"""The Argo server client: the one place the hera ``WorkflowsService`` is built, with timeouts, and where
transport and HTTP failures become one :class:`ClusterError` line naming the next step to take. Used by
``argofl submit``, ``status``, ``watch``, ``resubmit`` and :func:`pipelines.api.submit`."""

from __future__ import annotations

import json
import os
import re
import urllib.parse
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar

from argofl.steps.errors import ArgoflError

if TYPE_CHECKING:
    import requests
    from hera.workflows import WorkflowsService

__all__ = [
    "DEFAULT_NAMESPACE",
    "ClusterError",
    "ClusterTarget",
    "env_secure",
    "env_verify",
    "make_service",
    "normalize_host",
    "workflow_url",
]

DEFAULT_NAMESPACE = "argofl"
CONNECT_TIMEOUT_S = 10.0
READ_TIMEOUT_S = 60.0
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
    try:
        parsed = urllib.parse.urlsplit(host)
        parsed.port  # noqa: B018 (raises ValueError for a port that is no number in 0-65535)
    except ValueError as exc:  # an unclosed IPv6 bracket, a port such as abc
        raise ValueError(f"Argo server {value!r}: {exc}; expected host:port or an http(s):// URL") from None
    if not parsed.hostname:
        raise ValueError(f"Argo server {value!r} names no host: expected host:port or an http(s):// URL")
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
            f"return workflow {name}",
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
        existing = self._call(f"return workflow template {name}", lambda: self._template_or_none(name))
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
            f"list the child workflows of {name}",
            lambda: self.service.list_workflows(
                namespace=self.namespace, label_selector=f"{PARENT_LABEL}={name}"
            ),
        )
        items = _plain(listed).get("items") or []
        return sorted(items, key=lambda w: str((w.get("metadata") or {}).get("creationTimestamp") or ""))

    def get_with_children(self, name: str) -> dict[str, Any]:
        """The workflow ``name`` with its children's nodes merged into its status (:func:`merge_children`)."""
        from argofl.pipelines.parameters import merge_children, parameters_of

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
        except (HeraException, KeyError, TypeError, ValueError, pydantic.ValidationError) as exc:
            response = getattr(self.service.session, "last_response", None)
            if response is None or response.ok:
                what = _not_an_object(response) or _one_line(str(exc))
                raise ClusterError(
                    f"Argo server at {self.host} gave an unexpected answer when asked to {action}: {what}"
                ) from None
            code = response.status_code
            if code == 404 and name is not None:
                raise ClusterError(
                    f"workflow {name} not found in namespace {self.namespace} at {self.host}"
                ) from None
            hint = " (check --token / ARGO_TOKEN)" if code == 401 else ""
            raise ClusterError(
                f"Argo server refused to {action}: {code} {response.reason}: {_error_message(response)}{hint}"
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


JSON_TYPES = {list: "list", str: "string", int: "number", float: "number", bool: "boolean"}


def _not_an_object(response: requests.Response | None) -> str | None:
    """What ``response`` holds when it is JSON but no object ("a JSON list, not an object"), else None."""
    if response is None:
        return None
    try:
        body = response.json()
    except ValueError:
        return None
    if body is None or isinstance(body, dict):
        return None
    return f"a JSON {JSON_TYPES.get(type(body), type(body).__name__)}, not an object"


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
