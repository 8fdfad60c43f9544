"""``argofl data split``: write a seeded partition of a known dataset as per-client shards in a store.

The shards are exactly the clients' parts that the ``partition`` source computes in each train pod
(the same dataset, ``data_limit``, scheme, ``alpha`` and ``seed``), so a ``per-client`` run on them gives
byte-identical checkpoints to the partition run. The test split is partitioned the same way (same scheme
and seed) into each client's ``test`` shard, for federated evaluation.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

import click

from argofl.steps.client_data import CLIENT_PLACEHOLDER, shard_uri, write_shard
from argofl.steps.data import DATASETS, DatasetError, load_dataset
from argofl.steps.partition import SCHEMES, PartitionError, partition
from argofl.steps.settings import Settings, SettingsError
from argofl.steps.store import StoreError

__all__ = ["SplitSpec", "data", "split_dataset"]


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


def split_dataset(spec: SplitSpec, template: str, *, test: bool = True) -> dict[str, list[int]]:
    """Write ``train`` (and ``test``) shards for every client under ``template``; client → example counts."""
    if CLIENT_PLACEHOLDER not in template:
        template = template.rstrip("/") + "/" + CLIENT_PLACEHOLDER + "/"
    counts: dict[str, list[int]] = {str(c): [] for c in range(spec.clients)}
    for split in ("train", "test") if test else ("train",):
        limit = (spec.limit or None) if split == "train" else None
        data = load_dataset(spec.dataset, split, spec.data_dir or None, limit=limit)
        parts = partition(data.y, spec.clients, spec.partition, alpha=spec.alpha, seed=spec.seed)
        for client, idx in enumerate(parts):
            write_shard(shard_uri(template, str(client), split), data.x[idx], data.y[idx])
            counts[str(client)].append(len(idx))
    return counts


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
@click.option("--alpha", type=float, default=None, help="Dirichlet concentration.")
@click.option("--seed", type=click.IntRange(min=0), default=None, help="Partition seed.")
@click.option("--limit", type=click.IntRange(min=0), default=None, help="First N training examples (0: all).")
@click.option("--data-dir", default=None, help="Dataset directory.")
@click.option("--test/--no-test", default=True, help="Also write each client's test shard (default: yes).")
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
) -> None:
    """Write a seeded partition of a dataset into per-client shards at OUT.

    OUT is a URI template with {client} (s3://bucket/sites/{client}/, file:///data/{client}/) or a
    prefix (OUT/{client}/ is used). Each client gets train.safetensors and test.safetensors (named
    arrays x, y). Point a config's data.uri at the same template and set data.source: per-client.
    """
    try:
        if config is not None:
            from argofl.pipelines.config import ConfigError, load_config

            try:
                spec = SplitSpec.from_settings(load_config(config).settings)
            except ConfigError as exc:
                raise click.UsageError(str(exc)) from None
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
        counts = split_dataset(spec, out, test=test)
    except (DatasetError, PartitionError, StoreError, SettingsError) as exc:
        click.echo(f"error: {' '.join(str(exc).split())}", err=True)
        sys.exit(2)
    sizes = [c[0] for c in counts.values()]
    click.echo(
        f"wrote {len(counts)} clients' shards ({spec.partition}, seed {spec.seed}; train examples per client "
        f"{min(sizes)}–{max(sizes)}{', with test shards' if test else ''}) to {out}"
    )
