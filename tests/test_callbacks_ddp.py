"""Two DDP processes log the statistics one process logs over the same global batches.

Only the 2-rank run is a new program (DDP launch is what it tests); the 1-process reference runs in
this process, the same function, while the ranks start.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from _fit_helpers import program_context
from _monitor_helpers import main as fit_tiny_mlp

SCRIPT = Path(__file__).with_name("_monitor_helpers.py")


def launch(out: Path, devices: int, batch_size: int) -> subprocess.Popen:
    env = {**os.environ, "WANDB_MODE": "offline", "PYTHONWARNINGS": "ignore"}
    return subprocess.Popen(
        [sys.executable, str(SCRIPT), str(out), str(devices), str(batch_size)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
        cwd=out,
    )


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    # Rank r of 2 gets samples r, r+2, ... (batch 8); one process with batch 16 sees their union.
    single, double = tmp_path_factory.mktemp("one_process"), tmp_path_factory.mktemp("two_processes")
    ranks = launch(double, 2, 8)
    try:
        with program_context(single, dict(os.environ)):
            fit_tiny_mlp(str(single), 1, 16)
    finally:
        output, _ = ranks.communicate(timeout=300)
    assert ranks.returncode == 0, output[-3000:]
    return single / "stats", double / "stats"


def load(stats: Path, name: str) -> dict:
    return json.loads((stats / name).read_text())


def close(a, b) -> bool:
    return a == pytest.approx(b, rel=2e-5, abs=1e-7)


def test_saturation_over_training_steps_is_reduced_across_ranks(runs):
    one, two = (load(s, "saturation.json") for s in runs)
    assert one["steps"] == two["steps"] == [0, 1, 2]
    assert set(one["layers"]) == set(two["layers"]) == {"backbone.1", "backbone.3"}
    for layer in one["layers"]:
        a, b = one["layers"][layer], two["layers"][layer]
        assert a["count"] == b["count"] == [16 * 8] * 3  # global batch x nodes, not one rank's half
        assert a["hist"] == b["hist"]
        assert a["below"] == b["below"] and a["above"] == b["above"]
        for key in ("saturation", "mean", "std"):
            assert close(a[key], b[key]), (layer, key)


def test_test_set_statistics_cover_every_sample_once(runs):
    # Collected in Lightning's test loop, which gives each rank its shard (no sample twice).
    one, two = (load(s, "saturation.json")["eval"] for s in runs)
    for layer in one["layers"]:
        a, b = one["layers"][layer], two["layers"][layer]
        assert a["count"] == b["count"] == 40 * 8
        assert a["hist"] == b["hist"]
        for key in ("saturation", "mean", "std"):
            assert close(a[key], b[key]), (layer, key)


def test_gradient_information_and_node_correlation_agree(runs):
    one, two = (load(s, "grad_info.json") for s in runs)
    assert one["steps"] == two["steps"]
    for layer, values in one["layers"].items():
        assert close(values, two["layers"][layer]), layer

    tables = [load(s, "node_correlation.json")["rows"] for s in runs]
    assert len(tables[0]) == 10 and tables[0] == tables[1]
    net_var = [load(s, "net_var.json") for s in runs]
    assert net_var[0]["layers"] == net_var[1]["layers"]  # no dropout: exactly zero on every rank
    assert all(v == 0.0 for values in net_var[1]["layers"].values() for v in values)
