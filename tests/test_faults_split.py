"""Faults of split-learning runs on the local executor: a server of a killed run still listening, and the
split server SIGKILLed mid-round (fails fast, names the server, loses nothing, resumes byte-identically)."""

from __future__ import annotations

import socket
from pathlib import Path

import numpy as np
import pytest
import yaml
from click.testing import CliRunner

from pipelines.cli import cli
from steps.split.server import SplitServer

pytestmark = pytest.mark.slow


def _config(tmp_path: Path, *, mode: str = "vanilla", rounds: int = 1, port: int = 18080) -> Path:
    path = tmp_path / f"fault-{mode}.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "kind": "split",
                "experiment": f"fault-{mode}",
                "data_limit": 600,
                "clients": 2,
                "min_clients": 2,
                "rounds": rounds,
                "batch_size": 32,
                "seed": 3,
                "split": {"mode": mode, "cut": "pool2", "port": port, "idle_timeout": 60},
            }
        )
    )
    return path


def _free_port(host: str) -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def test_a_server_left_listening_by_another_run_does_not_poison_the_next_split_run(tmp_path, fmnist_dir):
    # A killed run's server keeps listening where the first daemon of a local run used to be put
    # (127.0.0.2) on the configured port, with that run's token.
    port = _free_port("127.0.0.2")
    stale = SplitServer(
        make_top=lambda: None,
        labels_of=lambda client, idx: np.zeros(len(idx), np.int64),
        token="token-of-a-killed-run",
        clients=["0", "1"],
        mode="splitfed",
        activation_shape=(1,),
        host="127.0.0.2",
        port=port,
    ).start()
    try:
        result = CliRunner().invoke(
            cli,
            [
                "run",
                str(_config(tmp_path, port=port)),
                "--runs-dir",
                str(tmp_path / "runs"),
                "-p",
                f"data-dir={fmnist_dir}",
            ],
        )
    finally:
        stale.close()
    assert result.exit_code == 0, result.output
    assert "round 1: test accuracy" in result.output
    assert all(s.seen == 0 for s in stale.clients.values())  # nobody talked to the stale server
