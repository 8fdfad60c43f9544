"""The workflow's node graph: every node of one run, under the one lock the executor shares.

:class:`NodeGraph` creates nodes (a loop's children kept in index order, as Argo's controller creates
them), moves their phases, sets outputs and answers the questions the runners ask of the graph (a node's
outbound nodes, a Retry node's last attempt). Each change is reported to ``on_node`` (a snapshot) and to
``on_dirty`` (the ``status.json`` writer). :class:`Call` is one template invocation, the unit the runners
turn into nodes.
"""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from argofl.pipelines.local.errors import LocalExecutorError
from argofl.pipelines.local.model import FULFILLED, Node, Phase, node_id

__all__ = ["Call", "LogKey", "NodeGraph"]

LogKey = tuple[str, int]
"""Where a pod's logs go: the node that owns them (a Retry node for its attempts) and the attempt."""

_LOOP_CHILD = re.compile(r"^(.*)\((\d+):[^()]*\)$")
"""A loop child's node name, ``<loop node name>(<index>:<item>)`` (the item has no parentheses)."""


@dataclass
class Call:
    """One template invocation: the node to create, the template and its arguments."""

    name: str
    template: str | dict[str, Any]
    arguments: dict[str, Any]
    boundary_id: str | None
    parents: list[str]
    hooked: bool = False
    on_exit: bool = False
    local: dict[str, str] = field(default_factory=dict)

    @property
    def template_name(self) -> str | None:
        return self.template if isinstance(self.template, str) else self.template.get("name")


class NodeGraph:
    """The nodes of one workflow run and the lock that guards them (and the run's other shared state)."""

    def __init__(
        self,
        workflow_name: str,
        *,
        on_node: Callable[[dict[str, Any]], None] | None = None,
        on_dirty: Callable[[], None] | None = None,
    ) -> None:
        self.workflow_name = workflow_name
        self.nodes: dict[str, Node] = {}
        self.lock = threading.RLock()
        self._on_node = on_node
        self._on_dirty = on_dirty
        self._callback_lock = threading.Lock()

    # ------------------------------------------------------------------------------------- lookup

    def find(self, name: str) -> Node | None:
        """The node named ``name``, if it exists."""
        with self.lock:
            return self.nodes.get(node_id(self.workflow_name, name))

    def outbound(self, nid: str) -> list[str]:
        """The nodes a successor of ``nid`` hangs from (Argo's outbound nodes)."""
        with self.lock:
            node = self.nodes[nid]
            if node.type in ("Pod", "Skipped", "Suspend"):
                return [nid]
            if node.type == "TaskGroup":
                if not node.children:
                    return [nid]
                return [o for c in node.children for o in self.outbound(c)]
            if node.type == "Retry":
                attempts = [c for c in node.children if not self.nodes[c].hooked]
                return [attempts[-1]] if attempts else []
            return [o for c in node.outbound_nodes for o in self.outbound(c)]

    def last_attempt(self, node: Node) -> Node | None:
        """A Retry node's last attempt (its exit hooks aside); None for any other node."""
        if node.type != "Retry":
            return None
        with self.lock:
            attempts = [self.nodes[c] for c in node.children if not self.nodes[c].hooked]
        return attempts[-1] if attempts else None

    def has_failures(self, boundary_id: str) -> bool:
        """Whether a pod or template node inside ``boundary_id`` failed or errored."""
        with self.lock:
            return any(
                n.boundary_id == boundary_id and n.type in ("Pod", "Steps", "DAG") and n.failed_or_error
                for n in self.nodes.values()
            )

    # ----------------------------------------------------------------------------------- creation

    def create(
        self,
        name: str,
        type_: str,
        phase: Phase,
        *,
        boundary_id: str | None,
        parents: list[str],
        template_name: str | None,
        inputs: dict[str, Any] | None = None,
        message: str = "",
        hooked: bool = False,
        retried: bool = False,
    ) -> Node:
        with self.lock:
            nid = node_id(self.workflow_name, name)
            if nid in self.nodes:
                raise LocalExecutorError(f"internal error: node {name!r} created twice")
            node = Node(
                id=nid,
                name=name,
                display_name=self._display_name(name, boundary_id),
                type=type_,
                template_name=template_name,
                phase=phase,
                boundary_id=boundary_id,
                message=message,
                inputs=inputs or None,
                hooked=hooked,
                retried=retried,
            )
            if node.fulfilled:
                node.finished_at = node.started_at
            self.nodes[nid] = node
            for parent in parents:
                self._link(parent, nid)
        self.changed(node)
        return node

    def create_for_call(
        self, call: Call, type_: str, phase: Phase, tmpl: Mapping[str, Any], *, retried: bool = False
    ) -> Node:
        """The node of a template call (its name, boundary, parents, template and inputs)."""
        return self.create(
            call.name,
            type_,
            phase,
            boundary_id=call.boundary_id,
            parents=call.parents,
            template_name=call.template_name,
            inputs=tmpl.get("inputs"),
            hooked=call.hooked,
            retried=retried,
        )

    def skipped(
        self,
        name: str,
        phase: Phase,
        message: str,
        *,
        boundary_id: str | None,
        parents: list[str],
        template_name: str | None,
        hooked: bool = False,
    ) -> Node:
        """A node of type Skipped: a call that never ran (``when`` false, empty loop: Skipped; ``depends``
        not met: Omitted) or could not start (bad template, bad arguments: Error)."""
        return self.create(
            name,
            "Skipped",
            phase,
            boundary_id=boundary_id,
            parents=parents,
            template_name=template_name,
            message=message,
            hooked=hooked,
        )

    def error_node(self, call: Call, message: str) -> Node:
        """The Skipped node, in Error, of a call that could not start."""
        return self.skipped(
            call.name,
            Phase.ERROR,
            message,
            boundary_id=call.boundary_id,
            parents=call.parents,
            template_name=call.template_name,
            hooked=call.hooked,
        )

    def fail_call(self, call: Call, message: str) -> Node:
        """End a call in Error with ``message``: its node if it has one, else a new Skipped node."""
        existing = self.find(call.name)
        if existing is not None:
            return self.set_phase(existing, Phase.ERROR, message)
        return self.error_node(call, message)

    def _display_name(self, name: str, boundary_id: str | None) -> str:
        boundary = self.nodes.get(boundary_id) if boundary_id else None
        if boundary is None:
            return name
        display = name[len(boundary.name) :] if name.startswith(boundary.name) else name
        if display.startswith("["):
            end = display.find("]")
            if end > 0 and display[1:end].isdigit() and display[end + 1 : end + 2] == ".":
                display = display[end + 1 :]
        if display.startswith("."):
            display = display[1:]
        return display or name

    def _link(self, parent_id: str, child_id: str) -> None:
        """Make ``child_id`` a child of ``parent_id``. Loop children are created by concurrent threads;
        they are kept in index order, as Argo's controller creates them."""
        with self.lock:
            parent = self.nodes.get(parent_id)
            if parent is None or child_id in parent.children:
                return
            position = len(parent.children)
            loop = _LOOP_CHILD.match(self.nodes[child_id].name)
            if loop is not None:
                base, index = loop.group(1), int(loop.group(2))
                for i, sibling_id in enumerate(parent.children):
                    sibling = _LOOP_CHILD.match(self.nodes[sibling_id].name)
                    if sibling is not None and sibling.group(1) == base and int(sibling.group(2)) > index:
                        position = i
                        break
            parent.children.insert(position, child_id)

    # ------------------------------------------------------------------------------------ changes

    def set_phase(self, node: Node, phase: Phase, message: str | None = None) -> Node:
        with self.lock:
            changed = node.phase != phase
            node.phase = phase
            if message is not None:
                node.message = message
            if node.phase in FULFILLED and node.finished_at is None:
                node.finished_at = time.time()
        if changed:
            self.changed(node)
        else:
            self.dirty()
        return node

    def finalize(self, message: str) -> None:
        """Every node still pending or running ends in Error with ``message`` (the run is over)."""
        with self.lock:
            open_nodes = [n for n in self.nodes.values() if n.phase not in FULFILLED]
        for node in open_nodes:
            self.set_phase(node, Phase.ERROR, message)

    def changed(self, node: Node) -> None:
        """Report a change of ``node`` (its phase, flags or outputs) to the listeners."""
        self.dirty()
        if self._on_node is not None:
            with self.lock:
                snapshot = node.to_dict()
            with self._callback_lock:
                self._on_node(snapshot)

    def dirty(self) -> None:
        if self._on_dirty is not None:
            self._on_dirty()
