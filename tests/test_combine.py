"""A tree of aggregate tasks (``cluster.aggregate_fanin``): combine tasks each sum a batch of at most F
pods' outputs into one partial and the aggregator reads the combined partials, giving the flat global
checkpoint to within one float32 ulp (steps/partials.py), with per-client rows, refusals and
``min_clients`` kept."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml
from click.testing import CliRunner

from argofl.pipelines.cli import cli
from argofl.pipelines.config import load_config
from argofl.pipelines.experiment import ConfigError
from argofl.steps import (
    combine_plan,
    labels,
    partials,
    round_report,
    step_aggregate,
    step_combine,
    step_distribute,
    step_init,
    step_train,
)
from argofl.steps.checkpoint import checkpoint_exists, checkpoint_keys, load_checkpoint
from argofl.steps.runinfo import RunError, RunLayout
from argofl.steps.settings import Settings
from argofl.steps.store import FileStore
from argofl.steps.strategies import WeightedAverage
from tests.stores import assert_within_one_ulp, step_store  # noqa: F401  (fixture: store)

ROOT = Path(__file__).resolve().parents[1]
BASE = {"experiment": "tree", "data_limit": 450, "clients": 9, "min_clients": 2}


def _train(run_key: str, round: int, fanin: int, **settings: object) -> dict[str, Any]:
    if round == 1:
        step_init.run(
            Settings.from_mapping({**BASE, "rounds": 2, **settings}),
            run_key=run_key,
            workflow_name="w",
            workflow_uid="u",
        )
    plan = step_distribute.plan_round(run_key=run_key, round=round, fanin=fanin)
    for group in plan["groups"]:
        step_train.run(run_key=run_key, round=round, clients=group)
    return plan


def _round(run_key: str, round: int, fanin: int, **settings: object) -> dict[str, float]:
    plan = _train(run_key, round, fanin, **settings)
    for batch in plan.get("combines", []):
        step_combine.run(run_key=run_key, round=round, pods=batch)
    return step_aggregate.run(run_key=run_key, round=round)


def test_pods_labels_are_index_ranges_that_parse_back() -> None:
    assert combine_plan.combine_batches(3, 7, 3) == [
        "round 3 / pods 0-2",
        "round 3 / pods 3-5",
        "round 3 / pod 6",
    ]
    assert labels.parse_pods("round 3 / pods 3-5", round=3) == (3, 5)
    assert labels.parse_pods("round 3 / pod 6") == (6, 6)
    assert labels.parse_pods("0-2") == (0, 2)
    with pytest.raises(labels.LabelError, match="belong to round 3, but this step runs round 4"):
        labels.parse_pods("round 3 / pods 0-2", round=4)
    with pytest.raises(labels.LabelError, match="bad pods '5-2'"):
        labels.parse_pods("5-2")


@pytest.mark.parametrize(("pods", "fanin"), [(1, 2), (7, 3), (9, 3), (1000, 32), (1024, 32)])
def test_combine_batches_cover_every_pod_once_with_short_labels(pods: int, fanin: int) -> None:
    batches = combine_plan.combine_batches(5, pods, fanin)
    ranges = [labels.parse_pods(b, round=5) for b in batches]
    covered = [pod for first, last in ranges for pod in range(first, last + 1)]
    assert covered == list(range(pods))  # each pod exactly once, in plan order
    assert all(last - first + 1 <= fanin for first, last in ranges)
    assert len(batches) == -(-pods // fanin)
    # the withParam value stays small however many clients a pod holds: ~30 bytes a batch
    assert len(json.dumps(batches)) <= 32 * len(batches)


def _tree(
    updates: list[tuple[dict[str, np.ndarray], int]], per_pod: int, fanin: int
) -> dict[str, np.ndarray]:
    """The global of a two-level tree: pods sum ``per_pod`` updates, combines sum ``fanin`` pods' sums,
    the aggregator sums the combined ones (the order of steps/step_combine.py and step_aggregate.py)."""
    dtypes = {k: a.dtype for k, a in updates[0][0].items()}
    pods = []
    for start in range(0, len(updates), per_pod):
        pod = WeightedAverage()
        for arrays, examples in updates[start : start + per_pod]:
            pod.add(arrays, examples)
        pods.append(pod.take_sums())
    total = WeightedAverage()
    for start in range(0, len(pods), fanin):
        combine = WeightedAverage()
        for pod_sums, pod_weight, pod_count in pods[start : start + fanin]:
            combine.add_sum(pod_sums, pod_weight, count=pod_count, dtypes=dtypes)
        sums, weight, count = combine.take_sums()
        total.add_sum(sums, weight, count=count, dtypes=dtypes)
    return total.result()


@pytest.mark.parametrize(("per_pod", "fanin"), [(1, 3), (1, 8), (2, 2), (3, 4), (64, 2)])
def test_a_two_level_tree_gives_the_flat_mean_to_one_float32_ulp(per_pod: int, fanin: int) -> None:
    # the bound of steps/partials.py: float64 sums in another order differ by ~clients·2⁻⁵³ relative,
    # far below a float32 ulp (2⁻²⁴); a float32 weight moves by at most one ulp, float64 ones ~2⁻⁵²
    rng = np.random.default_rng(11)
    updates = [
        (
            {
                "w": rng.standard_normal(5_000).astype(np.float32) * np.float32(10.0 ** rng.integers(-3, 3)),
                "d": rng.standard_normal(40),
                "n": np.array(rng.integers(0, 1000), dtype=np.int64),
            },
            int(rng.integers(1, 500)),
        )
        for _ in range(64)
    ]
    flat = WeightedAverage()
    for arrays, weight in updates:
        flat.add(arrays, weight)
    want = flat.result()
    got = _tree(updates, per_pod, fanin)
    assert got["w"].dtype == np.float32
    np.testing.assert_array_max_ulp(got["w"], want["w"], maxulp=1)
    np.testing.assert_allclose(got["d"], want["d"], rtol=len(updates) * 2.0**-52, atol=0)
    assert got["n"] == want["n"]


@pytest.mark.parametrize(("per_pod", "fanin"), [(1, 3), (2, 2)])
def test_a_tree_of_combines_gives_the_flat_checkpoints(store: FileStore, per_pod: int, fanin: int) -> None:
    flat, tree = f"tree/flat-{per_pod}", f"tree/tree-{per_pod}"
    for round in (1, 2):
        want = _round(flat, round, 0, clients_per_pod=per_pod)
        got = _round(tree, round, fanin, clients_per_pod=per_pod)
        for key in ("loss", "accuracy", "examples", "clients", "rejected"):
            assert got[key] == pytest.approx(want[key], rel=1e-12), key
        assert_within_one_ulp(store, RunLayout(tree).global_key(round), RunLayout(flat).global_key(round))
        manifest = load_checkpoint(store, RunLayout(tree).global_key(round)).manifest
        # the aggregator read one combined partial per batch of ≤ fanin pods, not one object per pod
        assert manifest.extra["combined"] == "true"
        pods = -(-9 // per_pod)
        assert len(manifest.extra["partials"].split(",")) == -(-pods // fanin)
        flat_report = round_report.load(store, RunLayout(flat), round)
        tree_report = round_report.load(store, RunLayout(tree), round)
        assert flat_report is not None
        assert tree_report is not None
        assert tree_report == flat_report  # per-client rows (MLflow table, distributions) unchanged


def test_a_retried_combine_leaves_its_partial_and_a_rerun_writes_the_same_bytes(store: FileStore) -> None:
    run_key = "tree/retry"
    plan = _train(run_key, 1, 3, clients_per_pod=1)
    layout = RunLayout(run_key)
    batch = plan["combines"][1]
    step_combine.run(run_key=run_key, round=1, pods=batch)
    blob, manifest = checkpoint_keys(partials.combined_key(layout, 1, "3"))
    first = (store.get_bytes(blob), store.get_bytes(manifest))
    assert step_combine.run(run_key=run_key, round=1, pods=batch) == {"clients": 3.0, "rejected": 0.0}
    assert (store.get_bytes(blob), store.get_bytes(manifest)) == first
    store.delete(blob)
    store.delete(manifest)
    step_combine.run(run_key=run_key, round=1, pods=batch)
    assert (store.get_bytes(blob), store.get_bytes(manifest)) == first


def test_a_missing_update_is_rejected_with_its_reason_and_min_clients_counts_clients(
    store: FileStore,
) -> None:
    run_key = "tree/missing"
    plan = _train(run_key, 1, 3, clients_per_pod=1, min_clients=8)
    layout = RunLayout(run_key)
    for key in checkpoint_keys(layout.update_key(1, "4")):
        store.delete(key)
    for batch in plan["combines"]:
        step_combine.run(run_key=run_key, round=1, pods=batch)
    metrics = step_aggregate.run(run_key=run_key, round=1)
    assert (metrics["clients"], metrics["rejected"]) == (8, 1)
    rejected = json.loads(load_checkpoint(store, layout.global_key(1)).manifest.extra["rejected"])
    assert rejected == {"4": "no update (its train step failed or did not run)"}

    run_key = "tree/too-few"
    plan = _train(run_key, 1, 3, clients_per_pod=1, min_clients=7)
    for batch in plan["combines"][1:]:  # the first combine task failed: its 3 clients are missing
        step_combine.run(run_key=run_key, round=1, pods=batch)
    with pytest.raises(step_aggregate.NotEnoughUpdates, match="6 valid updates of 9 sampled clients"):
        step_aggregate.run(run_key=run_key, round=1)
    assert not checkpoint_exists(store, RunLayout(run_key).global_key(1))


def test_a_missing_pod_partial_rejects_its_clients_in_the_combined_partial(store: FileStore) -> None:
    run_key = "tree/missing-pod"
    plan = _train(run_key, 1, 2, clients_per_pod=2)
    layout = RunLayout(run_key)
    for key in checkpoint_keys(partials.partial_key(layout, 1, "2")):
        store.delete(key)
    for batch in plan["combines"]:
        step_combine.run(run_key=run_key, round=1, pods=batch)
    summed, refused = partials.replies_of(
        load_checkpoint(store, partials.combined_key(layout, 1, "0")).manifest, "batch 0"
    )
    assert [r.client for r in summed] == ["0", "1"]
    assert refused == dict.fromkeys(["2", "3"], "no update (its train pod failed or did not run)")
    metrics = step_aggregate.run(run_key=run_key, round=1)
    assert (metrics["clients"], metrics["rejected"]) == (7, 2)
    rejected = json.loads(load_checkpoint(store, layout.global_key(1)).manifest.extra["rejected"])
    assert rejected == refused


def test_a_combined_partial_claiming_too_many_examples_is_refused_whole(store: FileStore) -> None:
    run_key = "tree/claims"
    plan = _train(run_key, 1, 3, clients_per_pod=1, min_clients=3)
    for batch in plan["combines"]:
        step_combine.run(run_key=run_key, round=1, pods=batch)
    layout = RunLayout(run_key)
    _, manifest_key = checkpoint_keys(partials.combined_key(layout, 1, "0"))
    doc = json.loads(store.get_bytes(manifest_key))
    rows = json.loads(doc["extra"]["clients"])
    rows[1][1] = 10**12
    doc["extra"]["clients"] = json.dumps(rows)
    doc["examples"] = sum(row[1] for row in rows)
    store.put_bytes(manifest_key, json.dumps(doc).encode())
    metrics = step_aggregate.run(run_key=run_key, round=1)
    assert (metrics["clients"], metrics["rejected"]) == (6, 3)
    rejected = json.loads(load_checkpoint(store, layout.global_key(1)).manifest.extra["rejected"])
    assert sorted(rejected, key=int) == ["0", "1", "2"]
    assert "client 1 claims 1000000000000 examples" in rejected["0"]


def test_a_non_linear_strategy_refuses_a_fanin(store: FileStore, tmp_path: Path) -> None:
    step_init.run(
        Settings.from_mapping({**BASE, "rounds": 1, "strategy": "median"}),
        run_key="tree/median",
        workflow_name="w",
        workflow_uid="u",
    )
    with pytest.raises(RunError, match=r"aggregate_fanin 3 needs a linear strategy .*strategy 'median'"):
        step_distribute.plan_round(run_key="tree/median", round=1, fanin=3)
    doc = yaml.safe_load((ROOT / "configs" / "fedavg-fmnist-torch.yaml").read_text())
    doc["strategy"] = "median"
    doc["cluster"]["aggregate_fanin"] = 3
    path = tmp_path / "median.yaml"
    path.write_text(yaml.safe_dump(doc))
    with pytest.raises(
        ConfigError, match=r"cluster\.aggregate_fanin: a tree of aggregate tasks needs a linear"
    ):
        load_config(path)
    doc["strategy"] = "fedavg"
    doc["cluster"]["aggregate_fanin"] = 1
    path.write_text(yaml.safe_dump(doc))
    with pytest.raises(ConfigError, match=r"cluster\.aggregate_fanin: expected 0 .* or at least 2, got 1"):
        load_config(path)


def test_the_round_dag_fans_combine_out_over_distributes_batches(tmp_path: Path) -> None:
    from argofl.pipelines.build_fedavg import build_workflow

    doc = yaml.safe_load((ROOT / "configs" / "fedavg-fmnist-torch.yaml").read_text())
    doc["cluster"]["aggregate_fanin"] = 32
    path = tmp_path / "tree.yaml"
    path.write_text(yaml.safe_dump(doc))
    manifest = build_workflow(load_config(path)).to_dict()
    templates = {t["name"]: t for t in manifest["spec"]["templates"]}
    tasks = {t["name"]: t for t in templates["round"]["dag"]["tasks"]}
    assert tasks["combine"]["withParam"] == "{{tasks.distribute.outputs.parameters.combines}}"
    assert tasks["combine"]["depends"] == "train.Succeeded || train.Failed || train.Errored"
    assert tasks["aggregate"]["depends"] == "combine.Succeeded || combine.Failed || combine.Errored"
    assert templates["distribute"]["container"]["args"][4:6] == ["--fanin", "32"]
    assert {p["name"] for p in templates["distribute"]["outputs"]["parameters"]} == {"combines"}


@pytest.mark.slow
def test_a_local_run_with_a_fanin_gives_the_flat_runs_checkpoint(tmp_path: Path, fmnist_dir: Path) -> None:
    doc = yaml.safe_load((ROOT / "configs" / "fedavg-fmnist-torch.yaml").read_text())
    doc["cluster"]["aggregate_fanin"] = 3
    tree_config = tmp_path / "tree.yaml"
    tree_config.write_text(yaml.safe_dump(doc))
    params = ["rounds=1", "clients=9", "clients-per-pod=1", "min-clients=9", "data-limit=450"]
    params.append(f"data-dir={fmnist_dir}")

    def run(config: Path, name: str) -> bytes:
        runs = tmp_path / name
        args = ["run", str(config), "--runs-dir", str(runs)]
        for param in params:
            args += ["-p", param]
        result = CliRunner().invoke(cli, args)
        assert result.exit_code == 0, result.output
        (found,) = (runs / "store").rglob("round-0001/global.safetensors")
        return found.read_bytes()

    flat = run(ROOT / "configs" / "fedavg-fmnist-torch.yaml", "flat")
    tree = run(tree_config, "tree")
    from safetensors.numpy import load

    want, got = load(flat), load(tree)
    for name, array in want.items():
        np.testing.assert_array_max_ulp(got[name], array, maxulp=1)
    combined = sorted(p.name for p in (tmp_path / "tree" / "store").rglob("combined-*.safetensors"))
    assert combined == ["combined-0.safetensors", "combined-3.safetensors", "combined-6.safetensors"]
