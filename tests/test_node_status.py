"""Node status sizes computed as Argo stores them (JSON → gzip → base64), per round and projected."""

from __future__ import annotations

import base64
import gzip
import json
from typing import Any

from argofl.pipelines.node_status import (
    ARGO_MAX_WORKFLOW_SIZE,
    compress_nodes,
    measure,
    per_round,
    project,
    project_blocks,
    run_statuses,
)


def _node(
    nid: str, template: str, kind: str, boundary: str | None, children: tuple[str, ...] = ()
) -> dict[str, Any]:
    node: dict[str, Any] = {
        "id": nid,
        "name": nid,
        "displayName": nid,
        "type": kind,
        "templateName": template,
    }
    node.update({"phase": "Succeeded", "startedAt": f"2026-01-01T00:00:{len(nid):02d}Z"})
    if boundary:
        node["boundaryID"] = boundary
    if children:
        node["children"] = list(children)
    return node


def _status(rounds: int, groups: int) -> dict[str, Any]:
    nodes = {"wf": _node("wf", "fedavg", "Steps", None), "init": _node("init", "init", "Pod", "wf")}
    for r in range(1, rounds + 1):
        rid = f"round-{r}"
        nodes[rid] = _node(rid, "round", "DAG", "wf")
        nodes[f"{rid}-distribute"] = _node(f"{rid}-distribute", "distribute", "Pod", rid)
        for g in range(groups):
            retry, pod = f"{rid}-train-{g}", f"{rid}-train-{g}-0"
            nodes[retry] = _node(retry, "train", "Retry", rid, (pod,))
            nodes[pod] = _node(pod, "train", "Pod", rid)
        nodes[f"{rid}-aggregate"] = _node(f"{rid}-aggregate", "aggregate", "Pod", rid)
    return {"nodes": nodes}


def test_compressed_nodes_are_base64_gzip_of_the_nodes_json():
    nodes = _status(2, 3)["nodes"]
    encoded = compress_nodes(nodes)
    assert json.loads(gzip.decompress(base64.b64decode(encoded))) == nodes
    size = measure(nodes)
    assert size.nodes == len(nodes)
    assert size.json_bytes == len(json.dumps(nodes, separators=(",", ":")).encode())
    assert size.compressed_bytes == len(encoded) < size.json_bytes


def test_rounds_are_measured_apart_and_projected_to_more_clients_and_rounds():
    status = _status(2, 3)
    rounds = per_round(status)
    assert [r.round for r in rounds] == ["round-1", "round-2"]
    assert [(r.size.nodes, r.pods, r.pod_nodes) for r in rounds] == [(9, 3, 6), (9, 3, 6)]
    total = measure(status["nodes"])
    same = project(rounds, total, pods=3, rounds_count=2)
    assert same.nodes == total.nodes
    big = project(rounds, total, pods=1000, rounds_count=100)
    assert big.nodes == 2 + 100 * (3 + 2 * 1000)
    assert big.compressed_bytes >= big.nodes * total.compressed_bytes // total.nodes
    assert big.share_of_limit == big.compressed_bytes / ARGO_MAX_WORKFLOW_SIZE


def _parent(blocks: int) -> dict[str, Any]:
    nodes = {"wf": _node("wf", "fedavg", "Steps", None), "init": _node("init", "init", "Pod", "wf")}
    for b in range(blocks):
        nodes[f"block-{b}"] = _node(f"block-{b}", "rounds", "Pod", "wf")
    nodes["finalize"] = _node("finalize", "finalize", "Pod", "wf")
    return {"nodes": nodes}


def test_blocks_are_projected_per_workflow_object():
    full, tail = _status(2, 3), _status(1, 3)
    proj = project_blocks(_parent(2), [tail, full], pods=1000, rounds_count=100, rounds_per_workflow=10)
    assert proj.blocks == 10
    # the child: one block of 10 rounds, projected from the child with the most rounds
    assert proj.child.nodes == 2 + 10 * (3 + 2 * 1000)
    # the parent: its 3 other nodes and one node per block
    assert proj.parent.nodes == 3 + 10
    assert proj.largest == proj.child
    single = project(per_round(full), measure(full["nodes"]), pods=1000, rounds_count=100)
    assert proj.child.compressed_bytes * 9 < single.compressed_bytes
    # a block size of 1 round: 100 children of one round, the parent grows by a node per block
    per_round_blocks = project_blocks(_parent(2), [full], pods=1000, rounds_count=100, rounds_per_workflow=1)
    assert per_round_blocks.parent.nodes == 3 + 100
    assert per_round_blocks.child.nodes == 2 + 1 * (3 + 2 * 1000)


def test_blocks_projection_needs_round_and_block_nodes():
    import pytest

    with pytest.raises(ValueError, match="no child workflow with round nodes"):
        project_blocks(_parent(1), [], pods=10, rounds_count=10, rounds_per_workflow=2)
    with pytest.raises(ValueError, match="the parent has no 'rounds' nodes"):
        project_blocks(_parent(0), [_status(1, 1)], pods=10, rounds_count=10, rounds_per_workflow=2)
    with pytest.raises(ValueError, match="rounds_per_workflow must be at least 1, got 0"):
        project_blocks(_parent(1), [_status(1, 1)], pods=10, rounds_count=10, rounds_per_workflow=0)


def test_run_statuses_reads_the_parent_and_its_children(tmp_path):
    (tmp_path / "status.json").write_text(json.dumps(_parent(2)))
    for name, started in (("b", "2026-01-01T00:00:02Z"), ("a", "2026-01-01T00:00:03Z")):
        (tmp_path / "workflows" / name).mkdir(parents=True)
        (tmp_path / "workflows" / name / "status.json").write_text(
            json.dumps({"startedAt": started, "nodes": {name: {}}})
        )
    parent, children = run_statuses(tmp_path)
    assert parent == _parent(2)
    assert [list(c["nodes"]) for c in children] == [["b"], ["a"]]
