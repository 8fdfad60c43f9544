"""Loop-item labels that double as the Argo UI's node names.

Argo names a loop child ``task(index:item)``, so the items themselves carry readable labels: the rounds
loop yields ``round 3`` (a ``withSequence`` with :data:`ROUND_FORMAT`) and each round fans out over
``round 3 / client 7`` or ``round 3 / clients 6,7`` (one pod training a group). Steps receive these
labels as ``--round`` / ``--clients`` and parse them here; plain numbers (``3``, ``6,7``) are accepted
too, for running a step by hand.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from steps.errors import BadInputError

__all__ = [
    "ROUND_FORMAT",
    "LabelError",
    "client_sequence_format",
    "clients_label",
    "parse_clients",
    "parse_round",
    "round_label",
]

ROUND_FORMAT = "round %d"
"""printf format of the rounds loop (``withSequence.format``)."""

_ROUND = re.compile(r"(?:round )?(\d+)")
_CLIENTS = re.compile(r"(?:round (\d+) / clients? )?(\d+(?:,\d+)*)")


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
    return f"{round_label(round)} / {noun} {','.join(str(c) for c in clients)}"


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
    """``"round 3 / clients 6,7"`` or ``"6,7"`` → ``["6", "7"]``.

    A label naming a round other than ``round`` is refused: the pod would train for the wrong round.
    """
    found = _CLIENTS.fullmatch(text.strip())
    if found is None:
        raise LabelError(
            f"bad clients {text!r}: expected 'round N / client C', 'round N / clients C,D' or 'C,D'"
        )
    labelled_round, ids = found.groups()
    if labelled_round is not None and round is not None and int(labelled_round) != round:
        raise LabelError(
            f"clients {text!r} belong to round {labelled_round}, but this step runs round {round}"
        )
    return [str(int(c)) for c in ids.split(",")]
