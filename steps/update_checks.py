"""The checks an aggregating step makes on what train pods wrote, and the reasons it gives for a refusal.

The aggregate step and a tree's combine step (:mod:`~argofl.steps.step_combine`) read the same outputs, a
client's update or a pod's partial sum, and must refuse the same ones with the same words; both call
these.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from argofl.steps import partials
from argofl.steps.checkpoint import CheckpointError, CheckpointManifest, CheckpointNotFound
from argofl.steps.strategies import ClientUpdate

__all__ = [
    "ExampleLimit",
    "group_refused",
    "partial_problem",
    "too_many_examples",
    "unsummed",
    "update_problem",
]

ExampleLimit = Callable[[str], tuple[int, str]]
"""A client's most examples and why (:func:`~argofl.steps.client_limits.example_limit`)."""


def too_many_examples(client: str, examples: int, limit: ExampleLimit) -> str:
    """Why ``client``'s claimed ``examples`` are more than it can have ("" when they are not)."""
    most, why = limit(client)
    if examples <= most:
        return ""
    return f"claims {examples} examples, more than the {most} it can have ({why})"


def update_problem(manifest: CheckpointManifest, client: str, round: int, limit: ExampleLimit) -> str:
    """Why client ``client``'s update of ``round`` with this manifest is refused ("" when it is not)."""
    if manifest.examples <= 0 or manifest.round != round or manifest.client != client:
        return (
            f"manifest says round {manifest.round}, client {manifest.client}, {manifest.examples} examples; "
            f"expected round {round}, client {client}, > 0 examples"
        )
    return too_many_examples(client, manifest.examples, limit)


def update_refused(error: CheckpointError) -> str:
    """Why a client's update that could not be read is refused."""
    if isinstance(error, CheckpointNotFound):
        return "no update (its train step failed or did not run)"
    return str(error)


def partial_problem(
    manifest: CheckpointManifest, group: list[str], round: int, limit: ExampleLimit, first: str
) -> tuple[list[ClientUpdate], dict[str, str]]:
    """The clients a group's partial sum holds and the ones its pod refused, after the checks the
    aggregator makes on each update's manifest; a partial failing any of them is refused whole (one
    client's share cannot be taken out of a sum): every client of the group gets the reason."""
    where = f"partial sum of the group of client {first}"
    try:
        replies, refused = partials.replies_of(manifest, where)
    except CheckpointError as exc:
        return [], dict.fromkeys(group, str(exc))
    names = [r.client for r in replies] + list(refused)
    problem = ""
    if manifest.round != round or manifest.client is not None:
        problem = f"manifest says round {manifest.round}, client {manifest.client}; expected round {round}"
    elif len(set(names)) != len(names) or not set(names) <= set(group):
        problem = f"it names clients {names}, expected each at most once of its group {group}"
    elif manifest.examples != sum(r.examples for r in replies):
        problem = f"it says {manifest.examples} examples, its clients {sum(r.examples for r in replies)}"
    else:
        for reply in replies:
            why = (
                f"claims {reply.examples} examples, expected > 0"
                if reply.examples <= 0
                else too_many_examples(reply.client, reply.examples, limit)
            )
            if why:
                problem = f"client {reply.client} {why}"
                break
    if problem:
        return [], dict.fromkeys(group, f"the {where} is refused: {problem}")
    return replies, dict(refused)


def group_refused(group: list[str], error: CheckpointError, writer: str = "train pod") -> dict[str, str]:
    """Every client of ``group`` refused, because the partial sum its ``writer`` (its pod, or a combine
    task) writes could not be read."""
    if isinstance(error, CheckpointNotFound):
        return dict.fromkeys(group, f"no update (its {writer} failed or did not run)")
    return dict.fromkeys(group, f"the partial sum of its group is refused: {error}")


def unsummed(group: list[str], replies: Iterable[ClientUpdate], refusals: dict[str, str]) -> dict[str, str]:
    """``refusals`` with each client of ``group`` its pod neither summed nor refused added."""
    named = {r.client for r in replies}
    missing = {
        c: "no update (its train pod did not sum it)" for c in group if c not in refusals and c not in named
    }
    return {**refusals, **missing}
