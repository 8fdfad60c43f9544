"""Loop-item labels that double as the Argo UI's node names.

Argo names a loop child ``task(index:item)``, so the items themselves carry readable labels: the rounds
loop yields ``round 3`` (a ``withSequence`` with :data:`ROUND_FORMAT`) and each round fans out over
``round 3 / client 7`` or ``round 3 / clients 6,7`` (one pod training a group). Runs of three or more
consecutive ids are written as ranges, so a label stays short at any group size:
``round 1 / clients 500-599``, ``round 2 / clients 0-2,5,8-11``. A tree of aggregate tasks fans out over
index ranges: ``round 3 / pods 0-31`` (level 1) and ``round 3 / level 2 / batches 0-31`` (deeper). Steps
receive these labels as ``--round`` / ``--clients`` / ``--pods`` and parse them here; plain numbers
(``3``, ``6,7``, ``0-9``) are accepted too, for running a step by hand.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from argofl.steps.errors import BadInputError

__all__ = [
    "ROUND_FORMAT",
    "LabelError",
    "batch_label",
    "client_sequence_format",
    "clients_label",
    "format_ids",
    "parse_batch",
    "parse_clients",
    "parse_pods",
    "parse_round",
    "pods_label",
    "round_label",
]

ROUND_FORMAT = "round %d"
"""printf format of the rounds loop (``withSequence.format``)."""

_ROUND = re.compile(r"(?:round )?(\d+)")
_PODS = re.compile(r"(?:round (\d+) / pods? )?(\d+)(?:-(\d+))?")
_BATCHES = re.compile(r"(?:round (\d+) / )?level (\d+) / batch(?:es)? (\d+)(?:-(\d+))?")
_CLIENTS = re.compile(r"(?:round (\d+) / clients? )?(\d+(?:-\d+)?(?:,\d+(?:-\d+)?)*)")
MAX_RANGE = 1_000_000
"""The most ids one ``A-B`` range of a label may expand to."""


class LabelError(BadInputError, ValueError):
    """A ``--round`` / ``--clients`` value that is neither a number nor one of our labels."""


def round_label(round: int) -> str:
    """``round 3``."""
    return ROUND_FORMAT % round


def clients_label(round: int, clients: Sequence[int | str]) -> str:
    """``round 3 / client 7`` for one client, ``round 3 / clients 6,7`` for a group."""
    if not clients:
        raise LabelError(f"round {round}: a client label needs at least one client")
    noun = "client" if len(clients) == 1 else "clients"
    return f"{round_label(round)} / {noun} {format_ids(clients)}"


def format_ids(clients: Sequence[int | str]) -> str:
    """``[0, 1, 2, 5, 7, 8]`` → ``0-2,5,7,8``: ascending runs of three or more consecutive ids as ranges."""
    ids = [int(c) for c in clients]
    parts: list[str] = []
    start = 0
    while start < len(ids):
        end = start
        while end + 1 < len(ids) and ids[end + 1] == ids[end] + 1:
            end += 1
        if end - start >= 2:
            parts.append(f"{ids[start]}-{ids[end]}")
        else:
            parts.extend(str(i) for i in ids[start : end + 1])
        start = end + 1
    return ",".join(parts)


def client_sequence_format(round_value: str) -> str:
    """``withSequence.format`` giving one ``<round label> / client N`` item per client index."""
    return f"{round_value} / client %d"


def parse_round(text: str) -> int:
    """``"round 3"`` or ``"3"`` → 3."""
    found = _ROUND.fullmatch(text.strip())
    if found is None:
        raise LabelError(f"bad round {text!r}: expected a number or 'round N'")
    return int(found.group(1))


def parse_clients(text: str, *, round: int | None = None) -> list[str]:
    """``"round 3 / clients 6,7"`` or ``"6,7"`` → ``["6", "7"]``; ``"4-6"`` → ``["4", "5", "6"]``.

    A label naming a round other than ``round`` is refused: the pod would train for the wrong round.
    """
    found = _CLIENTS.fullmatch(text.strip())
    if found is None:
        raise LabelError(
            f"bad clients {text!r}: expected 'round N / client C', 'round N / clients C,D-E' or 'C,D-E'"
        )
    labelled_round, ids = found.groups()
    if labelled_round is not None and round is not None and int(labelled_round) != round:
        raise LabelError(
            f"clients {text!r} belong to round {labelled_round}, but this step runs round {round}"
        )
    out: list[str] = []
    for part in ids.split(","):
        first, sep, last = part.partition("-")
        if not sep:
            out.append(str(int(first)))
            continue
        lo, hi = int(first), int(last)
        if hi < lo or hi - lo >= MAX_RANGE:
            raise LabelError(
                f"bad clients {text!r}: range {part} must run upwards and span at most {MAX_RANGE} ids"
            )
        out.extend(str(i) for i in range(lo, hi + 1))
    return out


def pods_label(round: int, first: int, last: int) -> str:
    """``round 3 / pods 0-7``: a combine task's batch, the pods ``first..last`` of the round's plan."""
    if not 0 <= first <= last:
        raise LabelError(f"round {round}: a pods label needs 0 ≤ first ≤ last, got {first}, {last}")
    if first == last:
        return f"{round_label(round)} / pod {first}"
    return f"{round_label(round)} / pods {first}-{last}"


def parse_pods(text: str, *, round: int | None = None) -> tuple[int, int]:
    """``"round 3 / pods 0-7"`` or ``"0-7"`` → ``(0, 7)`` (inclusive); ``"round 3 / pod 4"`` → ``(4, 4)``."""
    found = _PODS.fullmatch(text.strip())
    if found is None:
        raise LabelError(f"bad pods {text!r}: expected 'round N / pods A-B', 'round N / pod A' or 'A-B'")
    labelled_round, first, last = found.groups()
    if labelled_round is not None and round is not None and int(labelled_round) != round:
        raise LabelError(f"pods {text!r} belong to round {labelled_round}, but this step runs round {round}")
    lo, hi = int(first), int(first if last is None else last)
    if hi < lo:
        raise LabelError(f"bad pods {text!r}: the range must run upwards")
    return lo, hi


def batch_label(round: int, level: int, first: int, last: int) -> str:
    """A combine task's batch at tree level ``level``: the pods ``first..last`` at level 1
    (:func:`pods_label`), else ``round 3 / level 2 / batches 0-7``, level ``level - 1``'s batches."""
    if level == 1:
        return pods_label(round, first, last)
    if level < 1 or not 0 <= first <= last:
        raise LabelError(
            f"round {round}: a batch label needs level ≥ 1 and 0 ≤ first ≤ last, got {level}, {first}, {last}"
        )
    if first == last:
        return f"{round_label(round)} / level {level} / batch {first}"
    return f"{round_label(round)} / level {level} / batches {first}-{last}"


def parse_batch(text: str, *, round: int | None = None) -> tuple[int, int, int]:
    """``"round 3 / level 2 / batches 0-7"`` → ``(2, 0, 7)`` (level, first, last); a pods label (or
    ``"0-7"``) is level 1: ``"round 3 / pods 0-7"`` → ``(1, 0, 7)``."""
    found = _BATCHES.fullmatch(text.strip())
    if found is None:
        if "level" in text:
            raise LabelError(
                f"bad batch {text!r}: expected 'round N / level L / batches A-B' or 'round N / pods A-B'"
            )
        return (1, *parse_pods(text, round=round))
    labelled_round, level, first, last = found.groups()
    if labelled_round is not None and round is not None and int(labelled_round) != round:
        raise LabelError(
            f"batch {text!r} belongs to round {labelled_round}, but this step runs round {round}"
        )
    lo, hi = int(first), int(first if last is None else last)
    if int(level) < 2 or hi < lo:
        raise LabelError(
            f"bad batch {text!r}: the level must be at least 2 (level 1 is 'pods A-B') and the range "
            "must run upwards"
        )
    return int(level), lo, hi
