"""``argofl data split``: write a seeded partition of a known dataset as per-client shards in a store.

The shards are exactly the clients' parts that the ``partition`` source computes in each train pod
(the same dataset, ``data_limit``, scheme, ``alpha`` and ``seed``), so a ``per-client`` run on them gives
byte-identical checkpoints to the partition run. The test split is partitioned the same way (same scheme
and seed) into each client's ``test`` shard, for federated evaluation.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from argofl.steps.client_data import (
    CLIENT_PLACEHOLDER,
    remove_shard,
    shard_clients,
    shard_exists,
    shard_uri,
    write_shard,
)
from argofl.steps.data import DATASETS, DatasetError, load_dataset
from argofl.steps.errors import BadInputError
from argofl.steps.labels import LabelError, format_ids, parse_clients
from argofl.steps.partition import SCHEMES, PartitionError, partition
from argofl.steps.settings import Settings, SettingsError
from argofl.steps.store import StoreError

if TYPE_CHECKING:
    from argofl.pipelines.placement import PlacementGroup

__all__ = [
    "ExistingShardsError",
    "SplitError",
    "SplitResult",
    "SplitSpec",
    "check_clients",
    "data",
    "split_dataset",
]


class SplitError(BadInputError, ValueError):
    """Clients to write that the split does not have, or shards in the way."""


class ExistingShardsError(SplitError):
    """Shards exist where a split would write or that it would remove; nothing was written."""

    def __init__(self, message: str, *, removes: bool = False) -> None:
        super().__init__(message)
        self.advice = f"pass --overwrite to replace {'or remove ' if removes else ''}them"


SHARDS = ("train", "test")
"""The shards a split writes for each client, in order."""


@dataclass(frozen=True)
class SplitResult:
    """What a split did: client → example counts (train, then test) of the clients written, and the
    clients whose earlier shards it removed."""

    counts: dict[str, list[int]]
    stale_tests: list[int] = field(default_factory=list)
    """Clients written without a test shard whose earlier test shard was removed."""
    beyond: list[int] = field(default_factory=list)
    """Clients beyond the split's count whose shards were removed."""


@dataclass(frozen=True)
class SplitSpec:
    """What to split and how: the settings that also define the ``partition`` source."""

    dataset: str
    clients: int
    partition: str = "iid"
    alpha: float = 0.5
    seed: int = 0
    limit: int = 0
    data_dir: str = ""

    @classmethod
    def from_settings(cls, s: Settings) -> SplitSpec:
        return cls(s.dataset, s.clients, s.partition, s.alpha, s.seed, s.data_limit, s.data_dir)


def check_clients(spec: SplitSpec, clients: Sequence[int]) -> list[int]:
    """``clients``, sorted and once each; SplitError for one the split does not have."""
    for client in clients:
        if not 0 <= client < spec.clients:
            raise SplitError(
                f"client {client} is not one of the {spec.clients} clients (0-{spec.clients - 1})"
            )
    return sorted(set(clients))


def _existing(uris: Iterable[str]) -> list[str]:
    return [uri for uri in uris if shard_exists(uri)]


def _clients_beyond(template: str, count: int) -> list[int]:
    """Clients from ``count`` on with a shard at ``template``: listed, or where there is nothing to list
    (``{client}`` in a bucket's name) looked up one after another up to the first without."""
    listed = shard_clients(template)
    if listed is not None:
        return [c for c in listed if c >= count and _existing(shard_uri(template, str(c), s) for s in SHARDS)]
    found: list[int] = []
    while _existing(shard_uri(template, str(count + len(found)), s) for s in SHARDS):
        found.append(count + len(found))
    return found


def _in_the_way(existing: Sequence[str], writes: int, removals: Sequence[str]) -> ExistingShardsError:
    """The refusal of a split without ``overwrite`` that would replace or remove shards."""
    what = [f"{len(existing)} of the {writes} shards to write do"] if existing else []
    if removals:
        what.append(f"{len(removals)} shard{'s' if len(removals) > 1 else ''} the split would remove")
    first = (existing or removals)[0]
    return ExistingShardsError(
        f"{first} already exists ({', and '.join(what)}); nothing was written", removes=bool(removals)
    )


def split_dataset(
    spec: SplitSpec,
    template: str,
    *,
    test: bool = True,
    clients: Sequence[int] | None = None,
    overwrite: bool = False,
) -> SplitResult:
    """Write ``train`` (and ``test``) shards under ``template`` for ``clients`` (default: every one).

    The partition is always of all ``spec.clients``, so a client's shards are the same bytes whichever
    clients are written. Each client written ends with exactly this split's shards: without ``test`` its
    test shard is removed; a split of every client also removes the shards of clients beyond
    ``spec.clients``. Unless ``overwrite``, shards to replace or remove are refused
    (:class:`ExistingShardsError`); the dataset is read and partitioned before anything is written or
    removed, so bad input changes nothing.
    """
    for brace in re.findall(r"\{[^{}]*\}", template):  # a mistyped {client} would be a directory's name
        if brace != CLIENT_PLACEHOLDER:
            raise SplitError(
                f"{template}: {brace} is no placeholder; the only one is {CLIENT_PLACEHOLDER} "
                f"(e.g. s3://bucket/sites/{CLIENT_PLACEHOLDER}/); nothing was written"
            )
    if CLIENT_PLACEHOLDER not in template:
        template = template.rstrip("/") + "/" + CLIENT_PLACEHOLDER + "/"
    chosen = check_clients(spec, range(spec.clients) if clients is None else clients)
    splits = SHARDS if test else SHARDS[:1]
    writes = [shard_uri(template, str(c), split) for c in chosen for split in splits]
    stale_tests = [] if test else [c for c in chosen if shard_exists(shard_uri(template, str(c), "test"))]
    beyond = _clients_beyond(template, spec.clients) if clients is None else []
    removals = [shard_uri(template, str(c), "test") for c in stale_tests]
    removals += _existing(shard_uri(template, str(c), s) for c in beyond for s in SHARDS)
    if not overwrite:
        existing = _existing(writes)
        if existing or removals:
            raise _in_the_way(existing, len(writes), removals)
    loaded = []  # every split read and partitioned before a shard is written or removed
    for split in splits:
        limit = (spec.limit or None) if split == "train" else None
        data = load_dataset(spec.dataset, split, spec.data_dir or None, limit=limit)
        parts = partition(data.y, spec.clients, spec.partition, alpha=spec.alpha, seed=spec.seed)
        loaded.append((split, data, parts))
    counts: dict[str, list[int]] = {str(c): [] for c in chosen}
    for client in chosen:
        for split, data, parts in loaded:
            idx = parts[client]
            write_shard(shard_uri(template, str(client), split), data.x[idx], data.y[idx])
            counts[str(client)].append(len(idx))
    for uri in removals:
        remove_shard(uri)
    return SplitResult(counts, stale_tests, beyond)


class ClientIds(click.ParamType):
    """``0,1`` or ``0-3,7``: client ids (the ``format_ids`` form of labels)."""

    name = "ids"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> list[int]:
        if isinstance(value, list):
            return value
        text = str(value).strip()
        try:
            ids = parse_clients(text) if text[:1].isdigit() else None  # not a 'round N / …' label
        except LabelError:
            ids = None
        if ids is None:
            self.fail(f"{value!r}: expected client ids such as 0,1 or 0-3", param, ctx)
        return [int(c) for c in ids]


def _selected(
    spec: SplitSpec,
    config: Path | None,
    placement: Sequence[PlacementGroup],
    group: str | None,
    only_clients: list[int] | None,
) -> list[int] | None:
    """The clients ``--group`` or ``--only-clients`` select (None: every client); usage errors."""
    if group is not None and only_clients is not None:
        raise click.UsageError("give --group or --only-clients, not both")
    hint = "'--group'" if group is not None else "'--only-clients'"
    if group is not None:
        if config is None:
            raise click.UsageError("--group names a placement group of --config; give --config")
        groups = {g.name: g.clients for g in placement}
        if group not in groups:
            known = f"groups: {', '.join(groups)}" if groups else "it has no placement: section"
            raise click.BadParameter(
                f"{group!r}: no placement group of that name in {config} ({known})", param_hint=hint
            )
        only_clients = list(groups[group])
    if only_clients is None:
        return None
    try:
        return check_clients(spec, only_clients)
    except SplitError as exc:
        raise click.BadParameter(str(exc), param_hint=hint) from None


@click.group("data")
def data() -> None:
    """Client data: write per-client shards (the layout of a deployment) from a known dataset."""


@data.command("split")
@click.argument("out")
@click.option(
    "--config",
    "config",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Take dataset, clients, partition, alpha, seed, data_limit and data_dir from this config.",
)
@click.option("--dataset", type=click.Choice(list(DATASETS)), default=None, help="The dataset.")
@click.option("--clients", type=click.IntRange(min=1), default=None, help="Number of clients.")
@click.option("--partition", "scheme", type=click.Choice(SCHEMES), default=None, help="The partition scheme.")
@click.option("--alpha", type=float, default=None, help="Dirichlet concentration (--partition dirichlet).")
@click.option("--seed", type=click.IntRange(min=0), default=None, help="Partition seed.")
@click.option("--limit", type=click.IntRange(min=0), default=None, help="First N training examples (0: all).")
@click.option("--data-dir", default=None, help="Dataset directory.")
@click.option("--test/--no-test", default=True, help="Also write each client's test shard (default: yes).")
@click.option(
    "--group",
    default=None,
    metavar="NAME",
    help="Write only the shards of this placement group of --config (one site's disk, PVC or bucket).",
)
@click.option(
    "--only-clients",
    "only_clients",
    type=ClientIds(),
    default=None,
    help="Write only these clients' shards (0,1 or 0-3); each is its part of the split of every client.",
)
@click.option(
    "--overwrite",
    is_flag=True,
    help="Replace shards that exist already, remove stale ones (default: refuse).",
)
def split_cmd(
    out: str,
    config: Path | None,
    dataset: str | None,
    clients: int | None,
    scheme: str | None,
    alpha: float | None,
    seed: int | None,
    limit: int | None,
    data_dir: str | None,
    test: bool,
    group: str | None,
    only_clients: list[int] | None,
    overwrite: bool,
) -> None:
    """Write a seeded partition of a dataset into per-client shards at OUT.

    OUT is a URI template with {client} (s3://bucket/sites/{client}/, file:///data/{client}/) or a
    prefix (OUT/{client}/ is used). Each client gets train.safetensors and test.safetensors (named
    arrays x, y). Point a config's data.uri at the same template and set data.source: per-client.
    Each client written ends with exactly this split's shards (--no-test removes its old test shard); a
    split of every client removes the shards of clients beyond --clients. Shards to replace or remove
    are refused, nothing written, unless --overwrite.
    """
    placement: Sequence[PlacementGroup] = ()
    try:
        if config is not None:
            from argofl.pipelines.config import ConfigError, load_config

            try:
                loaded = load_config(config)
            except ConfigError as exc:
                raise click.UsageError(str(exc)) from None
            spec = SplitSpec.from_settings(loaded.settings)
            placement = loaded.placement
        elif dataset is None or clients is None:
            raise click.UsageError("give --config, or --dataset and --clients")
        else:
            spec = SplitSpec(dataset, clients)
        overrides = {
            "dataset": dataset,
            "clients": clients,
            "partition": scheme,
            "alpha": alpha,
            "seed": seed,
            "limit": limit,
            "data_dir": data_dir,
        }
        spec = SplitSpec(**{**spec.__dict__, **{k: v for k, v in overrides.items() if v is not None}})
        if alpha is not None and spec.partition != "dirichlet":  # it would split IID all the same
            raise click.BadParameter(
                f"{alpha!r} is the concentration of partition dirichlet; partition {spec.partition} does "
                "not use it (add --partition dirichlet)",
                param_hint="'--alpha'",
            )
        selected = _selected(spec, config, placement, group, only_clients)
        result = split_dataset(spec, out, test=test, clients=selected, overwrite=overwrite)
    except (DatasetError, PartitionError, StoreError, SettingsError, SplitError) as exc:
        advice = f": {exc.advice}" if isinstance(exc, ExistingShardsError) else ""
        click.echo(f"error: {' '.join(str(exc).split())}{advice}", err=True)
        sys.exit(2)
    counts = result.counts
    sizes = [c[0] for c in counts.values()]
    which = (
        f"{len(counts)} clients' shards ("
        if selected is None
        else f"{len(counts)} of {spec.clients} clients' shards (clients {format_ids(selected)}; "
    )
    removed = "".join(
        f"; removed the {what} of clients {format_ids(ids)} ({why})"
        for what, ids, why in [
            ("test shards", result.stale_tests, "--no-test"),
            ("shards", result.beyond, f"beyond the {spec.clients} clients"),
        ]
        if ids
    )
    click.echo(
        f"wrote {which}{spec.partition}, seed {spec.seed}; train examples per client "
        f"{min(sizes)}–{max(sizes)}{', with test shards' if test else ''}) to {out}{removed}"
    )
