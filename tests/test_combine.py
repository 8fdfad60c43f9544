"""A tree of aggregate tasks (``cluster.aggregate_fanin``): combine tasks each sum a batch of at most F
pods' outputs into one partial and the aggregator reads the combined partials, giving the flat global
checkpoint to within one float32 ulp where clients' values do not nearly cancel (steps/partials.py), with
per-client rows, refusals and ``min_clients`` kept."""

from __future__ import annotations

import dataclasses
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
from tests.test_manifests import schema_errors

ROOT = Path(__file__).resolve().parents[1]
BASE = {"experiment": "tree", "data_limit": 450, "clients": 9, "min_clients": 2}


def _train(run_key: str, round: int, fanin: int, levels: int = 1, **settings: object) -> dict[str, Any]:
    if round == 1:
        step_init.run(
            Settings.from_mapping({**BASE, "rounds": 2, **settings}),
            run_key=run_key,
            workflow_name="w",
            workflow_uid="u",
        )
    plan = step_distribute.plan_round(
        run_key=run_key, round=round, fanin=fanin, levels=levels if fanin else 1
    )
    for group in plan["groups"]:
        step_train.run(run_key=run_key, round=round, clients=group)
    return plan


def _combine_levels(
    run_key: str, round: int, plan: dict[str, Any], skip: frozenset[str] = frozenset()
) -> None:
    """Run every combine task of ``plan``, level by level as the round's DAG does, but those in ``skip``
    (a failed task)."""
    for level in range(1, combine_plan.level_count(plan) + 1):
        for batch in plan[combine_plan.output_name(level)]:
            if batch not in skip:
                step_combine.run(run_key=run_key, round=round, pods=batch)


def _round(run_key: str, round: int, fanin: int, levels: int = 1, **settings: object) -> dict[str, float]:
    plan = _train(run_key, round, fanin, levels, **settings)
    _combine_levels(run_key, round, plan)
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


def _local_runs(tmp_path: Path, cluster: dict[str, int], params: list[str]) -> tuple[Path, Path]:
    """The stores of two ``argofl run``s of the example config: flat, and with ``cluster`` options; each
    run's round-1 global checkpoint is asserted the same to one float32 ulp."""
    doc = yaml.safe_load((ROOT / "configs" / "fedavg-fmnist-torch.yaml").read_text())
    doc["cluster"].update(cluster)
    tree_config = tmp_path / "tree.yaml"
    tree_config.write_text(yaml.safe_dump(doc))

    def run(config: Path, name: str) -> Path:
        runs = tmp_path / name
        args = ["run", str(config), "--runs-dir", str(runs)]
        for param in params:
            args += ["-p", param]
        result = CliRunner().invoke(cli, args)
        assert result.exit_code == 0, result.output
        return runs / "store"

    flat, tree = run(ROOT / "configs" / "fedavg-fmnist-torch.yaml", "flat"), run(tree_config, "tree")
    from safetensors.numpy import load

    (want,) = flat.rglob("round-0001/global.safetensors")
    (got,) = tree.rglob("round-0001/global.safetensors")
    for name, array in load(want.read_bytes()).items():
        np.testing.assert_array_max_ulp(load(got.read_bytes())[name], array, maxulp=1)
    return flat, tree


@pytest.mark.slow
def test_a_local_run_with_a_fanin_gives_the_flat_runs_checkpoint(tmp_path: Path, fmnist_dir: Path) -> None:
    params = ["rounds=1", "clients=9", "clients-per-pod=1", "min-clients=9", "data-limit=450"]
    _, tree = _local_runs(tmp_path, {"aggregate_fanin": 3}, [*params, f"data-dir={fmnist_dir}"])
    combined = sorted(p.name for p in tree.rglob("combined-*.safetensors"))
    assert combined == ["combined-0.safetensors", "combined-3.safetensors", "combined-6.safetensors"]


# deeper trees: cluster.aggregate_levels


def test_batch_labels_of_deeper_levels_parse_back() -> None:
    assert labels.batch_label(3, 1, 0, 7) == "round 3 / pods 0-7"
    assert labels.batch_label(3, 2, 4, 4) == "round 3 / level 2 / batch 4"
    assert labels.parse_batch("round 3 / level 2 / batches 0-31", round=3) == (2, 0, 31)
    assert labels.parse_batch("round 3 / level 4 / batch 6") == (4, 6, 6)
    assert labels.parse_batch("round 3 / pods 0-7", round=3) == (1, 0, 7)
    assert labels.parse_batch("5") == (1, 5, 5)
    with pytest.raises(labels.LabelError, match="belongs to round 3, but this step runs round 4"):
        labels.parse_batch("round 3 / level 2 / batches 0-1", round=4)
    with pytest.raises(labels.LabelError, match="bad batch 'round 3 / level 1 / batches 0-1'"):
        labels.parse_batch("round 3 / level 1 / batches 0-1")
    with pytest.raises(labels.LabelError, match="bad batch 'level 2 / batch x'"):
        labels.parse_batch("level 2 / batch x")


@pytest.mark.parametrize(
    ("pods", "fanin", "levels"), [(5, 2, 3), (9, 2, 4), (100, 3, 5), (1000, 4, 5), (1025, 32, 3)]
)
def test_every_task_of_a_deep_enough_tree_reads_at_most_fanin_objects(
    pods: int, fanin: int, levels: int
) -> None:
    assert pods > fanin**2  # one level would leave the aggregate more than fanin objects
    assert fanin**levels >= pods
    plan = {"groups": [labels.clients_label(1, [p]) for p in range(pods)]}
    plan.update(combine_plan.plan_levels(1, pods, fanin, levels))
    assert combine_plan.level_count(plan) == levels
    below = pods
    for level in range(1, levels + 1):
        batches = plan[combine_plan.output_name(level)]
        ranges = [labels.parse_batch(b, round=1) for b in batches]
        assert {found for found, _, _ in ranges} == {level}
        covered = [i for _, first, last in ranges for i in range(first, last + 1)]
        assert covered == list(range(below))  # each output of the level below read exactly once
        assert all(last - first + 1 <= fanin for _, first, last in ranges)  # ≤ F objects a task
        assert len(json.dumps(batches)) <= 40 * len(batches)  # Argo parameters stay small
        below = len(batches)
    assert below <= fanin  # the aggregate reads the last level's outputs
    # every client once, in order, in the last level's groups (the aggregate's partials)
    last = combine_plan.level_groups(plan, 1, levels)
    assert [c for group in last for c in group] == [str(p) for p in range(pods)]


def test_a_level_over_a_single_output_still_runs_one_batch_of_one() -> None:
    assert combine_plan.plan_levels(2, 3, 4, 3) == {
        "combines": ["round 2 / pods 0-2"],
        "combines-2": ["round 2 / level 2 / batch 0"],
        "combines-3": ["round 2 / level 3 / batch 0"],
    }


@pytest.mark.parametrize("per_pod", [1, 2])
def test_a_three_level_tree_gives_the_flat_checkpoints(store: FileStore, per_pod: int) -> None:
    flat, tree = f"levels/flat-{per_pod}", f"levels/tree-{per_pod}"
    layout = RunLayout(tree)
    for round in (1, 2):
        want = _round(flat, round, 0, clients_per_pod=per_pod)
        got = _round(tree, round, 2, 3, clients_per_pod=per_pod)
        for key in ("loss", "accuracy", "examples", "clients", "rejected"):
            assert got[key] == pytest.approx(want[key], rel=1e-12), key
        assert_within_one_ulp(store, layout.global_key(round), RunLayout(flat).global_key(round))
        manifest = load_checkpoint(store, layout.global_key(round)).manifest
        assert (manifest.extra["combined"], manifest.extra["combine_levels"]) == ("true", "3")
        # 9 pods → 5 → 3 → 2 partials the aggregate reads; 5 pods (two clients each) → 3 → 2 → 1
        assert len(manifest.extra["partials"].split(",")) == {1: 2, 2: 1}[per_pod]
        assert round_report.load(store, layout, round) == round_report.load(store, RunLayout(flat), round)
    # each level wrote its own partials, named so that levels never collide
    names = {key.rsplit("/", 1)[-1] for key in store.list(layout.round_prefix(2)) if "/partials/" in key}
    assert {n.split(".")[0] for n in names if n.startswith("combined-l3-")} == (
        {"combined-l3-0", "combined-l3-8"} if per_pod == 1 else {"combined-l3-0"}
    )
    # a retried deeper combine leaves its partial
    plan = json.loads(store.get_bytes(layout.plan_key(2)))
    blob, _ = checkpoint_keys(partials.combined_key(layout, 2, plan["clients"][0], 3))
    before = store.get_bytes(blob)
    step_combine.run(run_key=tree, round=2, pods=plan["combines-3"][0])
    assert store.get_bytes(blob) == before
    # a retried aggregate of a committed round rebuilds a lost report from the last level's partials
    written = store.get_bytes(round_report.report_key(layout, 2))
    store.delete(round_report.report_key(layout, 2))
    step_aggregate.run(run_key=tree, round=2)
    assert store.get_bytes(round_report.report_key(layout, 2)) == written


def _damage(store: FileStore, run_key: str) -> None:
    """Client 4's update is missing (its train step failed) and client 7's corrupt (refused)."""
    layout = RunLayout(run_key)
    for key in checkpoint_keys(layout.update_key(1, "4")):
        store.delete(key)
    blob, _ = checkpoint_keys(layout.update_key(1, "7"))
    data = bytearray(store.get_bytes(blob))
    data[-1] ^= 0xFF
    store.put_bytes(blob, bytes(data))


def test_refused_clients_keep_their_reasons_through_three_levels(store: FileStore) -> None:
    results = []
    for fanin in (0, 2):
        run_key = f"levels/damaged-{fanin}"
        plan = _train(run_key, 1, fanin, 3, clients_per_pod=1)
        _damage(store, run_key)
        _combine_levels(run_key, 1, plan)
        metrics = step_aggregate.run(run_key=run_key, round=1)
        manifest = load_checkpoint(store, RunLayout(run_key).global_key(1)).manifest
        report = round_report.load(store, RunLayout(run_key), 1)
        assert report is not None
        # the reasons name the run's keys: compare them with the run key left out
        results.append(
            json.loads(
                json.dumps([metrics, manifest.extra["rejected"], dataclasses.asdict(report)]).replace(
                    run_key, "R"
                )
            )
        )
    (flat_metrics, flat_rejected, flat_report), (metrics, rejected, report) = results
    assert sorted(json.loads(rejected)) == ["4", "7"]
    assert json.loads(rejected)["4"] == "no update (its train step failed or did not run)"
    assert "sha256 mismatch" in json.loads(rejected)["7"]
    assert rejected == flat_rejected  # the words of the flat aggregate, carried up three levels
    assert (
        (metrics["clients"], metrics["rejected"])
        == (flat_metrics["clients"], flat_metrics["rejected"])
        == (7, 2)
    )
    assert report == flat_report  # the round's results: client rows and rejection reasons


def test_a_failed_combine_task_rejects_its_clients_at_the_next_level(store: FileStore) -> None:
    run_key = "levels/failed-combine"
    plan = _train(run_key, 1, 2, 3, clients_per_pod=1)
    failed = plan["combines"][1]  # pods 2-3: clients 2 and 3
    _combine_levels(run_key, 1, plan, skip=frozenset([failed]))
    layout = RunLayout(run_key)
    summed, refused = partials.replies_of(
        load_checkpoint(store, partials.combined_key(layout, 1, "0", 2)).manifest, "level 2"
    )
    assert [r.client for r in summed] == ["0", "1"]
    assert refused == dict.fromkeys(["2", "3"], "no update (its combine task failed or did not run)")
    metrics = step_aggregate.run(run_key=run_key, round=1)
    assert (metrics["clients"], metrics["rejected"]) == (7, 2)
    assert json.loads(load_checkpoint(store, layout.global_key(1)).manifest.extra["rejected"]) == refused


def test_a_combine_outside_the_planned_tree_is_refused(store: FileStore) -> None:
    run_key = "levels/outside"
    _train(run_key, 1, 2, 2, clients_per_pod=1)
    with pytest.raises(RunError, match=r"planned with 2 levels of combine tasks, not 3; nothing written"):
        step_combine.run(run_key=run_key, round=1, pods="round 1 / level 3 / batch 0")
    with pytest.raises(RunError, match=r"round 1 has 5 level-1 batches \(0-4\); nothing written"):
        step_combine.run(run_key=run_key, round=1, pods="round 1 / level 2 / batches 4-5")
    with pytest.raises(RunError, match=r"--levels 0: expected 1, or more levels .* with a --fanin ≥ 2"):
        step_distribute.plan_round(run_key=run_key, round=1, fanin=2, levels=0)
    with pytest.raises(RunError, match=r"--levels 2: expected 1, or more levels .* with a --fanin ≥ 2"):
        step_distribute.plan_round(run_key=run_key, round=1, levels=2)


@pytest.mark.parametrize(
    ("cluster", "error"),
    [
        ({"aggregate_fanin": 2, "aggregate_levels": 0}, r"aggregate_levels: expected at least 1 .*, got 0$"),
        ({"aggregate_levels": 3}, r"aggregate_levels: 3 needs cluster\.aggregate_fanin ≥ 2"),
        ({"aggregate_levels": 1}, r"aggregate_levels: 1 needs cluster\.aggregate_fanin ≥ 2"),
        ({"aggregate_fanin": 2, "aggregate_levels": "two"}, r"aggregate_levels"),
    ],
)
def test_aggregate_levels_is_checked_when_the_config_is_loaded(
    tmp_path: Path, cluster: dict[str, object], error: str
) -> None:
    for config in ("fedavg-fmnist-torch.yaml", "split-fmnist-torch.yaml"):
        doc = yaml.safe_load((ROOT / "configs" / config).read_text())
        doc["cluster"] = {**doc.get("cluster", {}), **cluster}
        path = tmp_path / config
        path.write_text(yaml.safe_dump(doc))
        with pytest.raises(ConfigError, match=rf"cluster\.{error}"):
            load_config(path)


def test_the_round_dag_chains_one_combine_task_per_level(tmp_path: Path) -> None:
    from argofl.pipelines.build_fedavg import build_workflow

    doc = yaml.safe_load((ROOT / "configs" / "fedavg-fmnist-torch.yaml").read_text())
    manifests = []
    for levels in (None, 1, 3):
        cluster = {"aggregate_fanin": 4, **({"aggregate_levels": levels} if levels else {})}
        path = tmp_path / str(levels) / "tree.yaml"  # one name: the manifests differ only by the option
        path.parent.mkdir()
        path.write_text(yaml.safe_dump({**doc, "cluster": {**doc["cluster"], **cluster}}))
        manifests.append(build_workflow(load_config(path)).to_dict())
    assert manifests[1] == manifests[0]  # levels: 1 is the one-level tree of before
    templates = {t["name"]: t for t in manifests[2]["spec"]["templates"]}
    tasks = {t["name"]: t for t in templates["round"]["dag"]["tasks"]}
    for level, name in ((2, "combine-2"), (3, "combine-3")):
        below = "combine" if level == 2 else "combine-2"
        assert tasks[name]["template"] == "combine"
        assert tasks[name]["withParam"] == f"{{{{tasks.distribute.outputs.parameters.combines-{level}}}}}"
        assert tasks[name]["depends"] == f"{below}.Succeeded || {below}.Failed || {below}.Errored"
        assert tasks[name]["continueOn"] == {"error": True, "failed": True}
    assert tasks["aggregate"]["depends"] == "combine-3.Succeeded || combine-3.Failed || combine-3.Errored"
    assert templates["distribute"]["container"]["args"][4:8] == ["--fanin", "4", "--levels", "3"]
    outputs = {p["name"] for p in templates["distribute"]["outputs"]["parameters"]}
    assert outputs == {"combines", "combines-2", "combines-3"}
    assert schema_errors(manifests[2]) == []  # Argo's own JSON schema accepts the deeper tree


@pytest.mark.slow
def test_a_local_run_with_three_levels_gives_the_flat_runs_checkpoint(
    tmp_path: Path, fmnist_dir: Path
) -> None:
    params = ["rounds=1", "clients=8", "clients-per-pod=1", "min-clients=2", "fraction=1", "data-limit=600"]
    cluster = {"aggregate_fanin": 2, "aggregate_levels": 3}
    _, tree = _local_runs(tmp_path, cluster, [*params, f"data-dir={fmnist_dir}"])
    combined = sorted(p.name.split(".")[0] for p in tree.rglob("combined-*.safetensors"))
    # 8 pods → 4 level-1 partials → 2 at level 2 → 1 at level 3, the one object the aggregate read
    assert combined == [
        *("combined-0", "combined-2", "combined-4", "combined-6"),
        *("combined-l2-0", "combined-l2-4", "combined-l3-0"),
    ]
