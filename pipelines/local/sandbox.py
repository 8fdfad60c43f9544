"""A node-private view of the paths a template declares, without root.

In a cluster every pod has its own filesystem, so two pods writing ``/tmp/num`` at the same time never
meet. On one host they would. Each node attempt therefore gets a private directory ``root``, and the
paths the template *declares* — input artifact paths, output parameter and artifact paths, and the
script file Argo writes to ``/argo/staging/script`` — are moved into it:

* every declared absolute path ``P`` is served from ``root + P``;
* so is every ancestor directory of ``P`` that does not exist on the host (``/mnt/out`` for a declared
  ``/mnt/out/part.json``), so that a script may ``mkdir /mnt/out`` as it would in a fresh container;
* directories that do exist on the host (``/tmp``, ``/mnt``) keep being shared, as on one machine, and
  their counterparts are created inside ``root`` so that files can be written below them;
* paths under system directories an image would provide (``/etc``, ``/usr``, ``/proc`` ...) are read
  from the host as they are (``valueFrom.path: /etc/hosts`` works).

The rewrite is textual: each moved path is replaced wherever it occurs in the node's command, args,
script source and environment values — exact path prefixes only, longest first, on path boundaries (the
character before must not belong to a path, the one after must be a separator or end the path). A
program that builds such a path at run time from pieces (``cd /tmp && cat num``) still sees the host's
file; declared paths are the contract.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable
from pathlib import Path, PurePosixPath

__all__ = ["SYSTEM_PREFIXES", "PathView"]

SYSTEM_PREFIXES = (
    "/etc",
    "/proc",
    "/sys",
    "/dev",
    "/usr",
    "/bin",
    "/sbin",
    "/lib",
    "/lib32",
    "/lib64",
    "/boot",
)
_PATH_CHAR = r"[\w.\-~$/]"
_NAME_CHAR = r"[\w.\-~$]"


def _is_system(path: str) -> bool:
    return any(path == p or path.startswith(p + "/") for p in SYSTEM_PREFIXES)


class PathView:
    """Maps declared paths of one node attempt to its private ``root`` and rewrites text accordingly."""

    def __init__(self, root: Path, workdir: Path, declared: Iterable[str]) -> None:
        self.root = root
        self.workdir = workdir
        self.declared = sorted({os.path.normpath(p) for p in declared if p and p.startswith("/")})
        moved: set[str] = set()
        for path in self.declared:
            if _is_system(path) or path == "/":
                continue
            moved.add(path)
            parent = PurePosixPath(path).parent
            while str(parent) != "/" and not os.path.exists(parent) and not _is_system(str(parent)):
                moved.add(str(parent))
                parent = parent.parent
        # a moved path below another moved path is covered by the shorter prefix
        self.moved = sorted(moved, key=len, reverse=True)
        self._pattern = (
            re.compile(
                r"(?<!"
                + _PATH_CHAR
                + r")("
                + "|".join(re.escape(p) for p in self.moved)
                + r")(?!"
                + _NAME_CHAR
                + r")"
            )
            if self.moved
            else None
        )

    def is_moved(self, path: str) -> bool:
        norm = os.path.normpath(path)
        return any(norm == m or norm.startswith(m + "/") for m in self.moved)

    def private(self, path: str) -> Path:
        """Where ``path`` (as the template declares it) lives for this node."""
        if not path.startswith("/"):
            return self.workdir / path
        if self.is_moved(path):
            return self.root / os.path.normpath(path).lstrip("/")
        return Path(path)

    def rewrite(self, text: str) -> str:
        """Replace every moved path in ``text`` by its private location."""
        if self._pattern is None or "/" not in text:
            return text
        root = str(self.root)
        return self._pattern.sub(lambda m: root + m.group(1), text)

    def prepare(self) -> None:
        """Create the private root, the work directory and the counterparts of host directories."""
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.root.mkdir(parents=True, exist_ok=True)
        for path in self.moved:
            # every existing ancestor gets a counterpart so writes below it work
            for ancestor in PurePosixPath(path).parents:
                if str(ancestor) != "/" and os.path.isdir(ancestor):
                    (self.root / str(ancestor).lstrip("/")).mkdir(parents=True, exist_ok=True)
