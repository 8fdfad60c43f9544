"""Build a frozen dataclass from a mapping of config values, with one-line errors naming the key.

Shared by :class:`steps.settings.Settings`, :class:`steps.split.settings.SplitOptions` and
:class:`pipelines.config.ClusterOptions`.
"""

from __future__ import annotations

import dataclasses
import difflib
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, TypeVar

if TYPE_CHECKING:
    from _typeshed import DataclassInstance

__all__ = ["dataclass_from_mapping"]

T = TypeVar("T", bound="DataclassInstance")

_TYPES: dict[str, type] = {"str": str, "int": int, "float": float, "dict": dict, "list": list}
"""Field annotation (its outer type) → the type a value must have."""


def dataclass_from_mapping(
    cls: type[T],
    values: Mapping[Any, Any],
    *,
    where: str,
    error: type[Exception],
    prefix: str = "",
    unknown: str = "unknown key {prefix}{key}",
    missing: str = "missing required key {prefix}{key}",
    dashes: bool = False,
    strings: bool = False,
) -> T:
    """Check ``values`` against the fields of dataclass ``cls``, then build it.

    A bool is never an int; an int is accepted as a float. ``dashes``: ``-`` in a key reads as ``_``.
    ``strings``: string values of int and float fields are parsed (Argo parameters are strings).
    ``unknown`` (a key that is no field) and ``missing`` (an absent field without default) are
    formatted with ``prefix`` and ``key``. Errors are ``error`` with ``where`` in front, including
    the ``error`` that ``cls`` itself raises.
    """
    known = {f.name: f for f in dataclasses.fields(cls) if f.init}
    kwargs: dict[str, Any] = {}
    for raw_key, raw in values.items():
        key = str(raw_key).replace("-", "_") if dashes else str(raw_key)
        if key not in known:
            hint = difflib.get_close_matches(key, known, n=1)
            suggestion = f" (did you mean {hint[0]!r}?)" if hint else ""
            raise error(f"{where}: {unknown.format(prefix=prefix, key=raw_key)}{suggestion}")
        expected = _field_type(known[key])
        kwargs[key] = _coerce(raw, expected, where=f"{where}: {prefix}{key}", error=error, strings=strings)
    for name, f in known.items():
        required = f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
        if required and name not in kwargs:
            raise error(f"{where}: {missing.format(prefix=prefix, key=name)}")
    try:
        return cls(**kwargs)
    except error as exc:
        raise error(f"{where}: {exc}") from None


def _field_type(f: dataclasses.Field[Any]) -> type:
    name = f.type if isinstance(f.type, str) else getattr(f.type, "__name__", repr(f.type))
    expected = _TYPES.get(name.split("[", 1)[0])
    if expected is None:
        raise TypeError(f"{f.name}: unsupported field type {name!r}")
    return expected


def _coerce(raw: Any, expected: type, *, where: str, error: type[Exception], strings: bool) -> Any:
    if strings and isinstance(raw, str) and expected in (int, float):
        try:
            return expected(raw.strip())
        except ValueError:
            raise error(f"{where}: expected {expected.__name__}, got {raw!r}") from None
    if expected is float and isinstance(raw, int) and not isinstance(raw, bool):
        return float(raw)
    if not isinstance(raw, expected) or isinstance(raw, bool):
        raise error(f"{where}: expected {expected.__name__}, got {type(raw).__name__} {raw!r}")
    return raw
