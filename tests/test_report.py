"""gaaf-report draws the monitors' figures for several finished runs from their saved stats alone."""

from __future__ import annotations

import csv
import json
import shutil
from importlib.metadata import entry_points

import matplotlib.image as mpimg
import pytest
from _monitor_helpers import TinyData, TinyModule, mlp, monitors, trainer

from lightning_gaaf.callbacks import GradScaleMonitor, MetricsMonitor
from lightning_gaaf.cli.report import main, run_labels
from lightning_gaaf.stats import SCHEMA_VERSION, plots, read_stats

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
FIGURES = {
    "metrics",
    "grad_info",
    "grad_scale",
    "saturation",
    "net_hist_test",
    "net_var",
    "weight_hist",
    "node_correlation",
}


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory):
    """A base run and a dropout run in run directories with the same leaf name."""
    root = tmp_path_factory.mktemp("runs")
    dirs = []
    for name, dropout in (("base", 0.0), ("dropout", 0.3)):
        run_dir = root / name / "version_0"
        callbacks = [*monitors(), GradScaleMonitor(), MetricsMonitor()]  # metrics.json: 2 epochs of 2 steps
        fit = trainer(run_dir, callbacks, max_steps=4)
        model, data = TinyModule(mlp(dropout=dropout)), TinyData(n_train=16, batch_size=8)
        fit.fit(model, datamodule=data)
        fit.test(model, datamodule=data)
        assert (run_dir / "report" / "metrics.png").is_file()  # each run's own report has the metrics plot
        shutil.rmtree(run_dir / "report")  # the report must come from stats/ alone
        dirs.append(run_dir)
    return dirs


def test_report_writes_valid_pngs_for_two_runs(two_runs, tmp_path, capsys):
    out = tmp_path / "figures"
    assert main([str(d) for d in two_runs] + ["--out", str(out)]) == 0
    printed = capsys.readouterr().out.split()
    assert {p.rsplit("/", 1)[-1] for p in printed} == {f"{name}.png" for name in FIGURES}
    for path in printed:
        with open(path, "rb") as f:
            assert f.read(8) == PNG_MAGIC
        image = mpimg.imread(path)
        assert image.ndim == 3 and image.shape[0] > 100 and image.shape[1] > 100
        assert image[..., :3].std() > 0.01  # something is drawn


def test_console_script_with_labels(two_runs, tmp_path):
    (script,) = entry_points(group="console_scripts", name="gaaf-report")
    assert script.load() is main
    out = tmp_path / "labelled"
    assert main([*map(str, two_runs), "--out", str(out), "--labels", "plain", "dropout 0.3"]) == 0
    assert sorted(p.name for p in out.iterdir()) == sorted(f"{name}.png" for name in FIGURES)


def test_labels_default_to_unique_directory_names(two_runs):
    assert run_labels(two_runs, None) == ["base/version_0", "dropout/version_0"]
    assert run_labels(two_runs, ["a", "b"]) == ["a", "b"]


def test_clear_errors(two_runs, tmp_path, capsys):
    empty = tmp_path / "not_a_run"
    empty.mkdir()
    assert main([str(two_runs[0]), str(empty), "--out", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err
    assert f"{empty} has no statistics" in err and "stats" in err

    assert main([str(tmp_path / "missing"), "--out", str(tmp_path / "x")]) == 2
    assert "is not a directory" in capsys.readouterr().err

    assert main([str(two_runs[0]), "--out", str(tmp_path / "x"), "--labels", "a", "b"]) == 2
    assert "--labels needs one label per run (1), got 2" in capsys.readouterr().err


def test_single_stats_file_is_enough(two_runs, tmp_path, capsys):
    only = tmp_path / "only_grad" / "stats"
    only.mkdir(parents=True)
    shutil.copy(two_runs[0] / "stats" / "grad_info.json", only)
    # A run shorter than NetVarMonitor's interval saved no probe: nothing to draw for it.
    (only / "net_var.json").write_text('{"steps": [], "layers": {"backbone.1": []}}')
    assert main([str(only.parent), "--out", str(tmp_path / "out")]) == 0
    assert [p.rsplit("/", 1)[-1] for p in capsys.readouterr().out.split()] == ["grad_info.png"]


def test_version_0_files_are_read_and_newer_ones_refused(two_runs, tmp_path, capsys):
    """Runs saved before the versioned schema (weights.json, node_correlation.csv) still draw."""
    old = tmp_path / "old_run" / "stats"
    old.mkdir(parents=True)
    new = read_stats(two_runs[0] / "stats" / "weight_hist.json")
    legacy = {"statistic": "weights", "bins": new["bins"], "layers": new["layers"]}
    (old / "weights.json").write_text(json.dumps(legacy))
    rows = read_stats(two_runs[0] / "stats" / "node_correlation.json")["rows"]
    with open(old / "node_correlation.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    assert read_stats(old / "node_correlation.csv")["rows"] == rows
    assert read_stats(old / "weights.json")["statistic"] == "weight_hist"
    assert main([str(old.parent), "--out", str(tmp_path / "out")]) == 0
    assert sorted(p.rsplit("/", 1)[-1] for p in capsys.readouterr().out.split()) == [
        "node_correlation.png",
        "weight_hist.png",
    ]

    future = tmp_path / "future" / "stats"
    future.mkdir(parents=True)
    (future / "grad_info.json").write_text(json.dumps({"schema_version": SCHEMA_VERSION + 1, "steps": []}))
    assert main([str(future.parent), "--out", str(tmp_path / "x")]) == 2
    assert "is newer than this lightning-gaaf reads" in capsys.readouterr().err


def test_fractions_on_a_fixed_unit_axis_and_integer_step_ticks():
    steps = [0, 1, 2]
    stats = {"steps": steps, "layers": {"act": {"saturation": [0.423, 0.4265, 0.425]}}}
    (ax,) = [a for a in plots.saturation_figure([("", stats)]).axes if a.get_visible()]
    assert ax.get_ylim() == (0.0, 1.0)  # 0.423..0.4265 must not look like a cliff
    ticks = [t for t in ax.get_xticks() if steps[0] <= t <= steps[-1]]
    assert ticks and all(float(t).is_integer() for t in ticks)

    metrics = {
        "epochs": [{"epoch": e, "step": 2 * e, "val/acc": 0.9 + 0.01 * e} for e in (1, 2, 3)],
        "test": {},
    }
    (ax,) = [a for a in plots.metrics_figure([("", metrics)]).axes if a.get_visible()]
    assert ax.get_ylim() == (0.0, 1.0)
    assert all(float(t).is_integer() for t in ax.get_xticks())


def test_metrics_figure_draws_training_curves_not_per_layer_monitor_values():
    metrics = {
        "epochs": [
            {"epoch": e, "step": e, "train/loss": 1.0 / e, "val/acc": 0.9, "gaaf/grad_info/fc1": 0.1}
            for e in (1, 2)
        ],
        "test": {},
    }
    titles = [a.get_title() for a in plots.metrics_figure([("", metrics)]).axes if a.get_visible()]
    assert titles == ["train/loss", "val/acc"]
