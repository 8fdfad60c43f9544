"""A fake Argo server on loopback: answers create/get like the Argo API and records every request."""

from __future__ import annotations

import contextlib
import copy
import json
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

__all__ = ["FakeArgo", "Recorded", "argo"]


@dataclass
class Recorded:
    method: str
    path: str
    headers: dict[str, str]
    body: Any


@dataclass
class FakeArgo:
    """Answers like the Argo server: create echoes the workflow with a name and a status; get returns
    the next of the canned workflows for that name (the last one repeats); list (``GET
    /api/v1/workflows/<namespace>``) returns the current canned workflows matching
    ``listOptions.labelSelector`` (``key=value`` terms)."""

    url: str = ""
    requests: list[Recorded] = field(default_factory=list)
    workflows: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    templates: dict[str, dict[str, Any]] = field(default_factory=dict)  # WorkflowTemplates by name
    refuse: int | None = None
    answer: Any = None  # when set, every request is answered 200 with this body (a wrong answer)
    created: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def posts(self) -> list[Recorded]:
        return [r for r in self.requests if r.method == "POST"]

    def matching(self, query: str) -> list[dict[str, Any]]:
        """The current workflows whose labels match the query's ``listOptions.labelSelector``."""
        from urllib.parse import parse_qs

        selector = (parse_qs(query).get("listOptions.labelSelector") or [""])[0]
        wanted = dict(term.split("=", 1) for term in selector.split(",") if term)
        with self.lock:
            current = [queue[0] for queue in self.workflows.values() if queue]
        return [
            w
            for w in current
            if all((w.get("metadata", {}).get("labels") or {}).get(k) == v for k, v in wanted.items())
        ]


class _Answered(Exception):
    """The request was answered with :attr:`FakeArgo.answer`."""


def _handler(fake: FakeArgo) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:
            pass

        def _answer(self, code: int, body: Any) -> None:
            data = json.dumps(body).encode()
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def _record(self) -> Recorded:
            length = int(self.headers.get("Content-Length") or 0)
            raw = self.rfile.read(length) if length else b""
            entry = Recorded(
                self.command, self.path, dict(self.headers.items()), json.loads(raw) if raw else None
            )
            with fake.lock:
                fake.requests.append(entry)
            if fake.answer is not None:
                self._answer(200, fake.answer)
                raise _Answered
            return entry

        def handle_one_request(self) -> None:
            with contextlib.suppress(_Answered):
                super().handle_one_request()

        def do_POST(self) -> None:
            entry = self._record()
            if fake.refuse:
                self._answer(fake.refuse, {"code": 7, "message": "workflows.argoproj.io is forbidden"})
                return
            if "/workflow-templates/" in entry.path:
                self._put_template(entry.body["template"])
                return
            workflow = copy.deepcopy(entry.body["workflow"])
            with fake.lock:
                fake.created += 1
                name = workflow["metadata"]["generateName"] + f"x{fake.created:04d}"
            workflow["metadata"].update(
                name=name, namespace=self.path.rsplit("/", 1)[-1], uid=f"uid-{name}", resourceVersion="1"
            )
            workflow["status"] = {"phase": "Pending"}
            self._answer(200, workflow)

        def do_PUT(self) -> None:
            entry = self._record()
            self._put_template(entry.body["template"])

        def _put_template(self, template: dict[str, Any]) -> None:
            template = copy.deepcopy(template)
            with fake.lock:
                fake.created += 1
                template["metadata"]["resourceVersion"] = str(fake.created)
                fake.templates[template["metadata"]["name"]] = template
            self._answer(200, template)

        def do_GET(self) -> None:
            entry = self._record()
            if fake.refuse:
                self._answer(fake.refuse, {"code": 7, "message": "forbidden"})
                return
            if "/workflow-templates/" in entry.path:
                name = entry.path.split("?")[0].rstrip("/").rsplit("/", 1)[-1]
                with fake.lock:
                    found = fake.templates.get(name)
                if found is None:
                    self._answer(404, {"code": 5, "message": f'workflowtemplates "{name}" not found'})
                else:
                    self._answer(200, found)
                return
            path, _, query = entry.path.partition("?")
            if path.rstrip("/").count("/") == 4:  # /api/v1/workflows/<namespace>: a list
                self._answer(200, {"metadata": {}, "items": fake.matching(query)})
                return
            name = path.rstrip("/").rsplit("/", 1)[-1]
            with fake.lock:
                queue = fake.workflows.get(name)
                if not queue:
                    self._answer(404, {"code": 5, "message": f'workflows.argoproj.io "{name}" not found'})
                    return
                workflow = queue.pop(0) if len(queue) > 1 else queue[0]
            self._answer(200, workflow)

    return Handler


@pytest.fixture
def argo() -> Iterator[FakeArgo]:
    fake = FakeArgo()
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(fake))
    fake.url = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield fake
    server.shutdown()
    server.server_close()
    thread.join(5)
