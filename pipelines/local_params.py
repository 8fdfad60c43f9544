"""What a workflow needs to run on this machine: local store, MLflow database and absolute paths.

Shared by ``argofl run``, ``argofl local run`` (of an argofl workflow) and the Python API
(:mod:`pipelines.api`). Steps run in their own working
directories, so every path a user gives is made absolute here, against the user's working directory.
"""

from __future__ import annotations

import os
import socket
import threading
import time
import urllib.parse
from collections.abc import Mapping
from pathlib import Path

from argofl.steps.tracking import tracking_uri_problem

__all__ = [
    "LOCAL_MLFLOW_UI",
    "LOCAL_PARALLELISM",
    "absolute_data_uri",
    "absolute_store_uri",
    "absolute_tracking_uri",
    "local_parallelism",
    "local_parameters",
    "parallelism_problem",
    "tracking_problem",
    "tracking_server_problem",
    "user_code_env",
    "workflow_local_parameters",
]

LOCAL_MLFLOW_UI = "http://127.0.0.1:5000"
LOCAL_PARALLELISM = 2  # step processes at once: two clients train side by side on a 2-core machine
TRACKING_PROBE_TIMEOUT_S = 1.5
"""Seconds an MLflow server's host name has to resolve and the server to accept the connection, then to
answer (twice this in all), before a run starts."""


def absolute_store_uri(uri: str) -> str:
    """A store URI whose local path (plain or ``file:``) is absolute; other URIs (and no valid URI, which
    the store check refuses) as given."""
    try:
        parsed = urllib.parse.urlparse(uri)
    except ValueError:
        return uri
    if parsed.scheme == "" and uri:
        return Path(uri).resolve().as_uri()
    if parsed.scheme == "file" and parsed.netloc == "" and not uri.startswith("file:/"):
        return Path(urllib.parse.unquote(parsed.path)).resolve().as_uri()  # file:relative/path
    return uri


def absolute_data_uri(template: str) -> str:
    """A client-data URI template (``data.uri``) whose local path is absolute: ``shards/{client}/`` becomes
    ``/home/me/shards/{client}/`` and ``file:shards/{client}`` ``file:///home/me/shards/{client}``, the
    placeholder and a trailing ``/`` kept (never percent-encoded); other URIs (and no valid URI, which
    the client's step refuses) as given."""
    try:
        parsed = urllib.parse.urlparse(template)
    except ValueError:
        return template
    if parsed.scheme == "" and template:
        path, prefix = template, ""
    elif parsed.scheme == "file" and parsed.netloc == "" and not template.startswith("file:/"):
        path, prefix = parsed.path, "file://"
    else:
        return template
    return prefix + os.path.abspath(path) + ("/" if path.endswith("/") else "")


def absolute_tracking_uri(uri: str) -> str:
    """An MLflow tracking URI whose local database or directory is absolute: ``sqlite:///x.db`` (relative
    to the current directory) becomes ``sqlite:////abs/x.db``; a plain path an absolute one; no valid URI
    (``http://[::1``) as given, for :func:`tracking_problem` to refuse."""
    if uri.startswith("sqlite:///") and not uri.startswith("sqlite:////"):
        database = uri.removeprefix("sqlite:///")
        if database and database != ":memory:":
            return "sqlite:///" + os.path.abspath(database)
        return uri
    try:
        scheme = urllib.parse.urlparse(uri).scheme
    except ValueError:
        return uri
    if uri and uri != "databricks" and scheme == "":  # not a path: a workspace
        return os.path.abspath(uri)
    return uri


def local_parameters(
    overrides: Mapping[str, str],
    root: Path,
    *,
    store: str | None = None,
    mlflow_uri: str | None = None,
    data_dir: str = "",
    data_uri: str = "",
) -> dict[str, str]:
    """The workflow parameters of a local run under ``root`` (the runs directory, absolute).

    ``overrides`` win; the store defaults to ``root/store``, MLflow to ``root/mlflow.db``, the S3 endpoint
    to an exported ``ARGOFL_S3_ENDPOINT``; ``data_dir`` and ``data_uri`` (the config's, unless overridden)
    are made absolute.
    """
    tracking_uri = absolute_tracking_uri(overrides.get("mlflow-uri") or mlflow_uri or "") or (
        f"sqlite:///{root / 'mlflow.db'}"
    )
    params = {
        **overrides,
        "store": absolute_store_uri(overrides.get("store") or store or "") or (root / "store").as_uri(),
        "mlflow-uri": tracking_uri,
        # where `mlflow ui` serves a local database by default, or the tracking server itself
        "mlflow-ui": overrides.get("mlflow-ui")
        or (tracking_uri if tracking_uri.startswith(("http://", "https://")) else LOCAL_MLFLOW_UI),
    }
    exported = os.environ.get("ARGOFL_S3_ENDPOINT", "")
    if exported and "s3-endpoint" not in overrides:  # what this machine's S3 clients use, not the cluster's
        params["s3-endpoint"] = exported
    data_dir = overrides.get("data-dir", data_dir)
    if data_dir:
        params["data-dir"] = os.path.abspath(data_dir)
    data_uri = overrides.get("data-uri", data_uri)
    if data_uri:
        params["data-uri"] = absolute_data_uri(data_uri)
    return params


def workflow_local_parameters(
    declared: Mapping[str, str],
    overrides: Mapping[str, str],
    root: Path,
    *,
    store: str | None = None,
    mlflow_uri: str | None = None,
) -> dict[str, str]:
    """:func:`local_parameters` of a compiled argofl workflow whose parameters (with their defaults) are
    ``declared``: only those it declares, its default ``data-dir`` and ``data-uri`` made absolute too."""
    params = local_parameters(
        overrides,
        root,
        store=store,
        mlflow_uri=mlflow_uri,
        data_dir=declared.get("data-dir", ""),
        data_uri=declared.get("data-uri", ""),
    )
    return {name: value for name, value in params.items() if name in declared}


def tracking_problem(uri: str, *, probe: bool = True) -> str | None:
    """Why a local run's steps cannot track to ``uri``: a URI MLflow has no store for, or (with ``probe``:
    steps that share this machine's network) an http(s) server that does not answer; None when they can."""
    return tracking_uri_problem(uri) or (tracking_server_problem(uri) if probe else None)


def tracking_server_problem(uri: str, timeout: float = TRACKING_PROBE_TIMEOUT_S) -> str | None:
    """Why the MLflow server of an ``http(s)://`` tracking ``uri`` cannot be reached (``GET /health``: an
    unknown host, connection refused, no answer); None when it answers, whatever its status, and for any
    other URI. The host name has ``timeout`` s to resolve, the whole probe twice that: init would fail
    on such a server only after its retries (~25 s)."""
    if urllib.parse.urlparse(uri).scheme not in ("http", "https"):
        return None
    probe = _Probe(uri, timeout)
    started = time.monotonic()
    probe.start()
    why: str | None
    if not probe.resolved.wait(timeout):
        why = f"cannot resolve host {probe.host} within {timeout:g} s"
    else:
        probe.join(max(0.0, started + 2 * timeout - time.monotonic()))
        if probe.error is not None:
            raise probe.error
        why = f"no answer within {2 * timeout:g} s" if probe.is_alive() else probe.why
    return None if why is None else f"MLflow server at {uri} cannot be reached: {why}"


class _Probe(threading.Thread):
    """``GET /health`` of a tracking server, in a thread the caller stops waiting for at its deadline.

    ``getaddrinfo`` takes no timeout: a hung name lookup cannot be interrupted, only left behind. The
    thread is a daemon so that one left behind does not hold up the interpreter's exit."""

    def __init__(self, uri: str, timeout: float) -> None:
        super().__init__(name=f"argofl probe of {uri}", daemon=True)
        self.uri, self.timeout = uri, timeout
        self.host = urllib.parse.urlparse(uri).hostname or ""
        self.resolved = threading.Event()  # set once the host name resolved (or failed to)
        self.why: str | None = None  # what failed; None when the server answered
        self.error: Exception | None = None  # anything unforeseen, raised in the caller

    def run(self) -> None:
        try:
            self.why = self._ask()
        except Exception as exc:
            self.error = exc
        finally:
            self.resolved.set()

    def _ask(self) -> str | None:
        import ssl
        from urllib.error import HTTPError, URLError
        from urllib.request import getproxies, proxy_bypass, urlopen

        scheme = urllib.parse.urlparse(self.uri).scheme
        if scheme not in getproxies() or proxy_bypass(self.host):  # through a proxy, the proxy resolves it
            try:
                socket.getaddrinfo(self.host, None, type=socket.SOCK_STREAM)
            except socket.gaierror as exc:
                return f"cannot resolve host {self.host} ({exc.strerror})"
        self.resolved.set()
        tls = ssl.create_default_context()  # only whether it answers: nothing is sent, so nothing is verified
        tls.check_hostname = False
        tls.verify_mode = ssl.CERT_NONE
        try:
            with urlopen(self.uri.rstrip("/") + "/health", timeout=self.timeout, context=tls):
                return None
        except HTTPError:
            return None  # it answered
        except URLError as exc:
            reason: object = exc.reason
        except OSError as exc:  # a timeout while reading the answer
            reason = exc
        if isinstance(reason, TimeoutError):
            return f"no answer within {self.timeout:g} s"
        return getattr(reason, "strerror", None) or str(reason)


def _has_daemons(manifest: Mapping[str, object]) -> bool:
    spec = manifest.get("spec")
    templates = spec.get("templates") if isinstance(spec, Mapping) else None
    return any(isinstance(t, Mapping) and t.get("daemon") for t in (templates or []))


def local_parallelism(manifest: Mapping[str, object]) -> int:
    """Default step processes at once: one more where a daemon (split's server) holds a slot all round."""
    return LOCAL_PARALLELISM + (1 if _has_daemons(manifest) else 0)


def parallelism_problem(manifest: Mapping[str, object], parallelism: int) -> str | None:
    """Why ``parallelism`` step processes cannot run ``manifest`` locally: a daemon (split learning's
    server) holds a slot all round, so with one slot its clients never start and the round fails only
    when the server's idle timeout ends. None when they can."""
    if parallelism < 2 and _has_daemons(manifest):
        return (
            f"parallelism {parallelism}: this workflow's daemon step (split learning's server) holds a step "
            "slot all round and the steps it serves need another; give at least 2"
        )
    return None


def user_code_env(env: Mapping[str, str] | None = None) -> dict[str, str]:
    """The ``PYTHONPATH`` of a local run's host-process steps: the directory the run starts in, then
    ``env``'s (default: this process's). Steps run in their own working directories; with it, a config's
    ``package.module:function`` (a model factory, a data loader) is found in the user's directory, as
    ``python`` started there finds it."""
    here = os.getcwd()
    given = (os.environ if env is None else env).get("PYTHONPATH", "")
    paths = [p for p in given.split(os.pathsep) if p and p != here]
    return {"PYTHONPATH": os.pathsep.join([here, *paths])}
