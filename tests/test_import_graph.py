"""The modules of ``argofl/pipelines`` import each other without a cycle (lazy imports count too)."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = "argofl.pipelines"


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT / "pipelines").with_suffix("").parts
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join((PACKAGE, *parts))


def imports_of(source: str, name: str, modules: set[str], *, package: bool = False) -> set[str]:
    """The ``modules`` that module ``name`` (its ``source``) imports anywhere: at the top, in functions
    (lazy imports), under ``TYPE_CHECKING``; relative imports resolved."""
    anchor_of = name if package else name.rsplit(".", 1)[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        targets: list[str] = []
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = anchor_of.rsplit(".", node.level - 1)[0] if node.level > 1 else anchor_of
                base = f"{anchor}.{base}" if base else anchor
            targets = [base] + [f"{base}.{alias.name}" for alias in node.names]
        for target in targets:
            while target and target not in modules:  # a name imported from a module: the module
                target = target.rpartition(".")[0]
            if target and target != name and not name.startswith(target + "."):
                found.add(target)
    return found


def import_graph() -> dict[str, set[str]]:
    files = sorted((ROOT / "pipelines").rglob("*.py"))
    modules = {_module_name(f) for f in files}
    return {
        _module_name(f): imports_of(f.read_text(), _module_name(f), modules, package=f.name == "__init__.py")
        for f in files
    }


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle of ``graph`` as a path back to its start, or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return [*path[path.index(nxt) :], nxt]
            if nxt not in state and (cycle := visit(nxt)) is not None:
                return cycle
        path.pop()
        state[node] = 2
        return None

    for start in sorted(graph):
        if start not in state and (cycle := visit(start)) is not None:
            return cycle
    return None


def test_the_cycle_finder_follows_lazy_and_relative_imports() -> None:
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set(), "c": {"a", "b"}}) is None
    modules = {"argofl.pipelines.config", "argofl.pipelines.kinds", "argofl.pipelines.local.engine"}
    lazy = "import os\n\ndef f():\n    from argofl.pipelines.config import load_config\n"
    assert imports_of(lazy, "argofl.pipelines.kinds", modules) == {"argofl.pipelines.config"}
    relative = "from ..kinds import KINDS\nfrom . import engine\n"
    found = imports_of(relative, "argofl.pipelines.local.cli", modules)
    assert found == {"argofl.pipelines.kinds", "argofl.pipelines.local.engine"}


def test_pipelines_modules_import_each_other_without_a_cycle() -> None:
    graph = import_graph()
    assert "argofl.pipelines.config" in graph  # the walk found the package
    cycle = find_cycle(graph)
    assert cycle is None, "import cycle in argofl/pipelines: " + " → ".join(cycle or [])
