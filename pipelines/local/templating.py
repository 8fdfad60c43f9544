"""``{{...}}`` substitution as Argo's ``util/template`` does it.

A tag is the text between ``{{`` and the next ``}}``. Simple tags (``{{inputs.parameters.x}}``, whitespace
around the name ignored) are looked up in a flat scope mapping names to strings; expression tags
(``{{=asInt(inputs.parameters.x) + 1}}``) are evaluated with :mod:`pipelines.local.expressions` in the
scope expanded into nested maps. A tag that cannot be resolved is either left in place (Argo resolves
templates in several passes) or, when ``strict`` says so for that name, reported as
:class:`Unresolved` naming the tag.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

from argofl.pipelines.local.errors import ExpressionError, WorkflowInputError
from argofl.pipelines.local.expressions import evaluate, format_value, go_json

__all__ = [
    "Strict",
    "Unresolved",
    "expand_scope",
    "find_tags",
    "strict_prefixes",
    "substitute",
    "substitute_obj",
]

Strict = Callable[[str], bool]


class Unresolved(WorkflowInputError):
    """A ``{{tag}}`` has no value in scope."""

    def __init__(self, tag: str, message: str | None = None) -> None:
        super().__init__(message or f"failed to resolve {{{{{tag}}}}}")
        self.tag = tag


def strict_prefixes(*prefixes: str) -> Strict:
    """A strictness rule: names starting with one of ``prefixes`` (then '.' or end) must resolve."""

    def rule(name: str) -> bool:
        return any(name == p or name.startswith(p + ".") for p in prefixes)

    return rule


def ALL(name: str) -> bool:
    """Every name must resolve."""
    return True


def NONE(name: str) -> bool:
    """Unresolved names are left in place."""
    return False


def find_tags(text: str) -> Iterator[tuple[int, int, str]]:
    """Yield ``(start, end, tag)`` for each ``{{tag}}`` in ``text`` (fasttemplate's scanning rules)."""
    pos = 0
    while True:
        start = text.find("{{", pos)
        if start < 0:
            return
        end = text.find("}}", start + 2)
        if end < 0:
            return
        yield start, end + 2, text[start + 2 : end]
        pos = end + 2


def expand_scope(flat: Mapping[str, Any]) -> dict[str, Any]:
    """Nested maps from dotted names; a name that is a prefix of another is dropped (Argo's ``expand``)."""
    keys = sorted(flat)
    drop = {k for k, nxt in itertools.pairwise(keys) if nxt.startswith(k + ".")}
    root: dict[str, Any] = {}
    for key in keys:
        if key in drop:
            continue
        parts = key.split(".")
        node = root
        ok = True
        for part in parts[:-1]:
            child = node.get(part)
            if child is None:
                child = node[part] = {}
            elif not isinstance(child, dict):
                ok = False
                break
            node = child
        if ok and not isinstance(node.get(parts[-1]), dict):
            node[parts[-1]] = flat[key]
    return root


class _EnvCache:
    def __init__(self, scope: Mapping[str, Any]) -> None:
        self.scope = scope
        self.env: dict[str, Any] | None = None

    def get(self) -> dict[str, Any]:
        if self.env is None:
            self.env = expand_scope(self.scope)
        return self.env


def substitute(
    text: str, scope: Mapping[str, Any], strict: Strict = NONE, _env: _EnvCache | None = None
) -> str:
    """Replace every resolvable tag in ``text``; a strict name without a value raises :class:`Unresolved`."""
    if "{{" not in text:
        return text
    env = _env or _EnvCache(scope)
    out: list[str] = []
    pos = 0
    for start, end, tag in find_tags(text):
        out.append(text[pos:start])
        pos = end
        if tag.startswith("="):
            out.append(_expression(tag, env, strict))
            continue
        name = tag.strip()
        if name in scope:
            value = scope[name]
            if value is None:
                raise Unresolved(
                    name,
                    f"unable to substitute {{{{{name}}}}}: output is an absent optional "
                    "(skipped/omitted node with no default)",
                )
            if not isinstance(value, str):
                raise Unresolved(name, f"failed to resolve {{{{{name}}}}} to string")
            out.append(value)
            continue
        if strict(name):
            raise Unresolved(name)
        out.append(text[start:end])
    out.append(text[pos:])
    return "".join(out)


def _expression(tag: str, env: _EnvCache, strict: Strict) -> str:
    expression = tag[1:].strip()
    try:
        result = evaluate(expression, env.get())
    except ExpressionError as exc:
        missing = _missing_name(str(exc))
        if missing is not None and not strict(missing):
            return "{{" + tag + "}}"
        raise ExpressionError(f"failed to evaluate expression {expression!r}: {exc}") from None
    if result is None:
        raise ExpressionError(f"failed to evaluate expression {expression!r}: it produced nil")
    return (
        result
        if isinstance(result, str)
        else (format_value(result) if not isinstance(result, list | dict) else go_json(result))
    )


def _missing_name(message: str) -> str | None:
    marker = "unknown name "
    idx = message.find(marker)
    if idx < 0:
        return None
    return message[idx + len(marker) :].split()[0].rstrip(",:")


def substitute_obj(
    obj: Any, scope: Mapping[str, Any], strict: Strict = NONE, skip_keys: Sequence[str] = ()
) -> Any:
    """Substitute tags in every string inside ``obj`` (copied; values under ``skip_keys`` kept as is)."""
    env = _EnvCache(scope)

    def walk(value: Any) -> Any:
        if isinstance(value, str):
            return substitute(value, scope, strict, env)
        if isinstance(value, dict):
            return {k: (v if k in skip_keys else walk(v)) for k, v in value.items()}
        if isinstance(value, list):
            return [walk(v) for v in value]
        return value

    return walk(obj)
