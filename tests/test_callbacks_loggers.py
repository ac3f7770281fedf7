"""Every Lightning logger gets the monitors' scalars; TensorBoard also gets histograms and images.

Read back from the files the loggers wrote: TensorBoard's own event reader, the CSV rows, MLflow's
client (MLflow has no histograms: they are skipped without error). The fit is the one the logger
tests share (``logged_fit`` in conftest.py); its W&B run: test_callbacks_wandb.py.
"""

from __future__ import annotations

import csv

import numpy as np
import pytest

event_accumulator = pytest.importorskip("tensorboard.backend.event_processing.event_accumulator")
mlflow = pytest.importorskip("mlflow")


@pytest.fixture(scope="module")
def logged(logged_fit):
    events = event_accumulator.EventAccumulator(
        str(logged_fit.root / "tb" / "version_0"),
        size_guidance={
            event_accumulator.SCALARS: 0,
            event_accumulator.HISTOGRAMS: 0,
            event_accumulator.IMAGES: 0,
        },
    )
    events.Reload()
    return logged_fit.root, logged_fit.mlflow, (logged_fit.grad, logged_fit.sat, logged_fit.weights), events


def test_tensorboard_scalars_histograms_and_images(logged):
    _, _, (grad, sat, weights), events = logged
    scalars = events.Scalars("gaaf/grad_info/backbone.3")
    assert [e.step for e in scalars] == [1, 3] == grad.steps
    assert [e.value for e in scalars] == pytest.approx(grad.history["backbone.3"], rel=1e-6)
    assert [e.value for e in events.Scalars("gaaf/net_std/backbone.4")] == pytest.approx(
        sat.history["backbone.4"]["std"], rel=1e-6
    )

    hists = events.Histograms("gaaf/net_hist/backbone.1")
    assert [h.step for h in hists] == [1, 3]
    for event, counts in zip(hists, sat.history["backbone.1"]["hist"], strict=True):
        value = event.histogram_value
        assert list(value.bucket) == counts
        assert list(value.bucket_limit) == pytest.approx(sat.edges[1:].tolist())
        assert value.num == sum(counts)
    (test_hist,) = events.Histograms("gaaf/net_hist_test/backbone.4")
    assert list(test_hist.histogram_value.bucket) == sat.eval_stats["backbone.4"]["hist"]
    init, final = events.Histograms("gaaf/weight_hist/backbone.0")
    assert list(init.histogram_value.bucket) == weights.records["backbone.0"]["init"]["counts"]
    assert list(final.histogram_value.bucket) == weights.records["backbone.0"]["final"]["counts"]

    tags = events.Tags()["images"]
    assert {"gaaf/report/grad_info", "gaaf/report/saturation", "gaaf/report/net_hist_test"} <= set(tags)
    (image,) = events.Images("gaaf/report/grad_info")
    assert image.width > 100 and image.height > 100


def test_csv_rows_hold_the_scalars_at_their_steps(logged):
    root, _, (grad, sat, _), _ = logged
    with open(root / "csv" / "version_0" / "metrics.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    grad_rows = [r for r in rows if r.get("gaaf/grad_info/backbone.0")]
    assert [int(r["step"]) for r in grad_rows] == [1, 3]
    assert [float(r["gaaf/grad_info/backbone.0"]) for r in grad_rows] == pytest.approx(
        grad.history["backbone.0"], rel=1e-6
    )
    (test_row,) = [r for r in rows if r.get("gaaf/saturation_test/backbone.1")]
    assert float(test_row["gaaf/saturation_test/backbone.1"]) == pytest.approx(
        sat.eval_stats["backbone.1"]["saturation"], rel=1e-6
    )
    assert not any("net_hist" in key for key in rows[0])  # no histograms in a CSV


def test_mlflow_gets_scalars_and_no_media(logged):
    root, ml, (grad, sat, _), _ = logged
    client = mlflow.tracking.MlflowClient(tracking_uri=f"sqlite:///{root / 'mlflow.db'}")
    history = client.get_metric_history(ml.run_id, "gaaf/grad_info/backbone.6")
    assert [m.step for m in history] == [1, 3]
    assert [m.value for m in history] == pytest.approx(grad.history["backbone.6"], rel=1e-6)
    (saturation,) = client.get_metric_history(ml.run_id, "gaaf/saturation_test/backbone.4")
    assert saturation.value == pytest.approx(sat.eval_stats["backbone.4"]["saturation"], rel=1e-6)
    keys = set(client.get_run(ml.run_id).data.metrics)
    assert not any("hist" in key for key in keys) and np.isfinite(saturation.value)
