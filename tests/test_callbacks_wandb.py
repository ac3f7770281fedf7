"""The offline W&B run of a fit with every monitor holds the documented keys with the right values."""

from __future__ import annotations

import json
import os
import subprocess

import pytest
from _logged_fit import leet_inspect, wandb_history, wandb_summary


@pytest.fixture(scope="module")
def wandb_fit(logged_fit):
    fit = logged_fit
    callbacks = (fit.grad, fit.sat, fit.var, fit.corr, fit.weights)
    return fit.root, callbacks, wandb_history(fit.wandb_run), wandb_summary(fit.wandb_run)


def test_direct_reads_give_what_the_wandb_command_gives(logged_fit):
    """``leet_inspect`` skips the ``wandb`` command's Python start-up: same arguments, same records."""
    command = ["wandb", "leet", "inspect", "--json", str(logged_fit.wandb_run)]
    env = {**os.environ, "WANDB_MODE": "offline"}
    through_cli = subprocess.run(command, capture_output=True, text=True, check=True, timeout=120, env=env)
    lines = [json.loads(line) for line in through_cli.stdout.splitlines() if line.strip()]
    assert any(r.get("type") == "history" for r in lines)
    assert [
        json.loads(line) for line in leet_inspect(logged_fit.wandb_run).splitlines() if line.strip()
    ] == lines


def rows_with(history: list[dict], key: str) -> list[dict]:
    return [item for item in history if key in item]


def test_scalars_are_logged_at_their_global_steps(wandb_fit):
    root, (grad, sat, var, _, _), history, _ = wandb_fit
    rows = rows_with(history, "gaaf/grad_info/backbone.3")
    assert [r["trainer/global_step"] for r in rows] == [1, 3] == grad.steps
    assert [r["gaaf/grad_info/backbone.3"] for r in rows] == pytest.approx(grad.history["backbone.3"])

    rows = rows_with(history, "gaaf/saturation/backbone.1")
    assert [r["trainer/global_step"] for r in rows] == [1, 3]
    for key, field in (("saturation", "saturation"), ("net_mean", "mean"), ("net_std", "std")):
        for layer in ("backbone.1", "backbone.4"):
            assert [r[f"gaaf/{key}/{layer}"] for r in rows] == pytest.approx(sat.history[layer][field])

    rows = rows_with(history, "gaaf/net_var/backbone.4")
    assert [r["gaaf/net_var/backbone.4"] for r in rows] == pytest.approx(var.history["backbone.4"])
    assert all(v > 0 for v in var.history["backbone.4"])


def test_all_monitors_of_one_step_share_one_history_row(wandb_fit):
    """One W&B log call per logging step for all monitors together (each call costs ~1 ms)."""
    _, _, history, _ = wandb_fit
    for step in (1, 3):
        rows = [
            r
            for r in history
            if r.get("trainer/global_step") == step and any(k.startswith("gaaf/") for k in r)
        ]
        assert len(rows) == 1, rows
        keys = set(rows[0])
        for key in ("gaaf/grad_info/backbone.3", "gaaf/saturation/backbone.1", "gaaf/net_var/backbone.4"):
            assert key in keys
        assert "gaaf/net_hist/backbone.1.values" in keys  # the histograms ride in the same row


def test_histograms_carry_the_fixed_edges_and_counts(wandb_fit):
    root, (_, sat, _, _, weights), history, _ = wandb_fit
    rows = rows_with(history, "gaaf/net_hist/backbone.1.values")
    assert len(rows) == 2
    assert rows[0]["gaaf/net_hist/backbone.1._type"] == "histogram"
    assert rows[0]["gaaf/net_hist/backbone.1.bins"] == pytest.approx(sat.edges.tolist())
    assert [r["gaaf/net_hist/backbone.1.values"] for r in rows] == sat.history["backbone.1"]["hist"]

    saved = json.loads((root / "stats" / "saturation.json").read_text())
    (test_row,) = rows_with(history, "gaaf/net_hist_test/backbone.4.values")
    assert test_row["gaaf/net_hist_test/backbone.4.values"] == saved["eval"]["layers"]["backbone.4"]["hist"]

    rows = rows_with(history, "gaaf/weight_hist/backbone.0.values")
    assert [r["gaaf/weight_hist/backbone.0.values"] for r in rows] == [
        weights.records["backbone.0"]["init"]["counts"],
        weights.records["backbone.0"]["final"]["counts"],
    ]


def test_summary_tables_and_images(wandb_fit):
    root, (grad, sat, _, corr, _), _, summary = wandb_fit
    for key, value in grad.summary().items():
        assert summary[key] == pytest.approx(value)
    for layer, stats in sat.eval_stats.items():
        assert summary[f"gaaf/saturation_test/{layer}"] == pytest.approx(stats["saturation"])
        assert summary[f"gaaf/net_std_test/{layer}"] == pytest.approx(stats["std"])
    assert summary["gaaf/node_correlation"]["_type"] == "table-file"
    assert summary["gaaf/node_correlation"]["nrows"] == len(corr.rows) == 2
    for name in ("grad_info", "saturation", "net_hist_test", "net_var", "node_correlation", "weight_hist"):
        assert summary[f"gaaf/report/{name}"]["_type"] == "image-file"
        assert (root / "report" / f"{name}.png").is_file()
