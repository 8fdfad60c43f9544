"""``retryStrategy`` decisions (Argo's ``processNodeRetries``) and Argo's duration strings."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from argofl.pipelines.local.errors import WorkflowInputError
from argofl.pipelines.local.expressions import evaluate_bool
from argofl.pipelines.local.model import Phase

__all__ = ["RetryPolicy", "humanize_seconds", "parse_duration"]

_UNITS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}
_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|ms|s|m|h)")
_TRANSIENT = re.compile(
    r"(?i)(connection reset|connection refused|timeout|timed out|temporar|transient|"
    r"too many requests|pod deleted|imminent node shutdown)"
)


def parse_duration(value: Any, where: str) -> float:
    """Seconds from ``"30"``, ``30``, ``"1m30s"``, ``"2h"``, ``"500ms"`` (Argo's ParseStringToDuration)."""
    text = str(value).strip()
    if re.fullmatch(r"-?\d+", text):
        return float(int(text))
    pos, total = 0, 0.0
    for match in _PART.finditer(text):
        if match.start() != pos:
            break
        total += float(match.group(1)) * _UNITS[match.group(2)]
        pos = match.end()
    if pos != len(text) or not text:
        raise WorkflowInputError(
            f'{where}: invalid duration {value!r}; use seconds ("30") or a Go duration ("1m30s")'
        )
    return total


def humanize_seconds(seconds: float) -> str:
    """``1 second``, ``5 seconds``, ``2 minutes`` — the way Argo's backoff message reads."""
    if seconds < 60:
        n = round(seconds)
        return f"{n} second" + ("" if n == 1 else "s")
    if seconds < 3600:
        n = round(seconds / 60)
        return f"{n} minute" + ("" if n == 1 else "s")
    n = round(seconds / 3600)
    return f"{n} hour" + ("" if n == 1 else "s")


@dataclass(frozen=True)
class RetryPolicy:
    """A parsed ``retryStrategy``."""

    limit: int | None
    policy: str
    expression: str
    backoff_duration: float | None
    backoff_factor: float | None
    backoff_cap: float | None
    backoff_max_duration: float | None

    @classmethod
    def parse(cls, strategy: Mapping[str, Any], where: str) -> RetryPolicy:
        limit_raw = strategy.get("limit")
        limit: int | None = None
        if limit_raw is not None and str(limit_raw).strip() != "":
            try:
                limit = int(str(limit_raw).strip())
            except ValueError:
                raise WorkflowInputError(f"{where}.limit: {limit_raw!r} is not an integer") from None
        expression = str(strategy.get("expression") or "")
        policy = str(strategy.get("retryPolicy") or ("Always" if expression else "OnFailure"))
        if policy not in ("Always", "OnFailure", "OnError", "OnTransientError"):
            raise WorkflowInputError(
                f"{where}.retryPolicy: {policy!r} is not a valid RetryPolicy (Always, OnFailure, "
                "OnError, OnTransientError)"
            )
        backoff = strategy.get("backoff") or {}

        def dur(key: str) -> float | None:
            raw = backoff.get(key)
            return None if raw in (None, "") else parse_duration(raw, f"{where}.backoff.{key}")

        factor_raw = backoff.get("factor")
        factor = None
        if factor_raw not in (None, ""):
            try:
                factor = float(str(factor_raw))
            except ValueError:
                raise WorkflowInputError(f"{where}.backoff.factor: {factor_raw!r} is not a number") from None
        if backoff and dur("duration") is None:
            raise WorkflowInputError(f"{where}.backoff: no base duration specified for retryStrategy")
        return cls(limit, policy, expression, dur("duration"), factor, dur("cap"), dur("maxDuration"))

    def should_retry_phase(self, phase: str, message: str) -> bool:
        """Whether the policy retries a child that ended in ``phase``."""
        if self.policy == "Always":
            return True
        if self.policy == "OnFailure":
            return phase == Phase.FAILED
        if self.policy == "OnError":
            return phase == Phase.ERROR
        return bool(_TRANSIENT.search(message or ""))

    def expression_allows(self, retries: int, last: Mapping[str, str], env: Mapping[str, Any]) -> bool:
        """Evaluate ``expression`` with ``retries`` and ``lastRetry.*``."""
        scope = dict(env)
        scope["retries"] = str(retries)
        scope["lastRetry"] = dict(last)
        return evaluate_bool(self.expression, scope)

    def backoff_seconds(self, attempts: int) -> float | None:
        """The wait before the next attempt after ``attempts`` attempts, or ``None`` without backoff."""
        if self.backoff_duration is None:
            return None
        wait = self.backoff_duration
        if self.backoff_factor is not None and self.backoff_factor > 0:
            wait = self.backoff_duration * int(self.backoff_factor ** (attempts - 1))
        if self.backoff_cap is not None:
            wait = min(wait, self.backoff_cap)
        return wait
