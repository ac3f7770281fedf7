"""gaaf-reproduce --quick on synthetic MNIST-format data: outputs, numbers, resumption.

One real ``gaaf-reproduce mnist --quick`` process, shared by the tests that read its outputs; the others
run the program's main in the test process (its runs are in-process fits anyway).
"""

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from _tune_helpers import run_program

from lightning_gaaf.cli.reproduce.main import main as reproduce_main
from lightning_gaaf.cli.reproduce.tables import PAPER_NOTE, PAPER_TABLE4
from lightning_gaaf.datamodules.synthetic import write_mnist
from lightning_gaaf.stats import find_stats_file, read_stats

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def run_reproduce(tmp_path: Path, *extra: str) -> subprocess.CompletedProcess:
    """gaaf-reproduce with the bundled configs (no --configs)."""
    cmd = [
        sys.executable, "-m", "lightning_gaaf.cli.reproduce", "mnist", "--quick",
        "--data-dir", str(tmp_path / "data"), "--out", str(tmp_path / "out"), *extra,
    ]  # fmt: skip
    return subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=tmp_path)


def reproduce_in_process(tmp_path: Path, *args: str):
    """gaaf-reproduce ARGS in this process, with the environment of a program run without W&B settings
    (``--quick`` then disables W&B), in ``tmp_path``."""
    env = {k: v for k, v in os.environ.items() if k not in ("WANDB_MODE", "WANDB_SERVICE")}
    return run_program(reproduce_main, args, tmp_path, env)


def quick_in_process(tmp_path: Path, *extra: str):
    return reproduce_in_process(
        tmp_path,
        "mnist",
        "--quick",
        "--data-dir",
        str(tmp_path / "data"),
        "--out",
        str(tmp_path / "out"),
        *extra,
    )


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    tmp_path = tmp_path_factory.mktemp("reproduce")
    write_mnist(tmp_path / "data", n_train=1500, n_test=200)
    proc = run_reproduce(tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return tmp_path, proc


def test_quick_reproduction_writes_tables_json_and_figure(quick_run):
    tmp_path, proc = quick_run
    out = tmp_path / "out"
    results = json.loads((out / "results.json").read_text())
    assert results["dataset"] == "mnist" and results["protocol"]["quick"] is True
    assert set(results["runs"]) == {"base", "dropout", "gaaf"}
    for runs in results["runs"].values():
        assert len(runs) == 1
        run = runs[0]
        assert 0.0 <= run["test_acc"] <= 100.0
        assert 1 <= run["epochs_to_converge"] <= run["epochs_trained"] <= 2
        metrics = json.loads((Path(run["run_dir"]) / "stats" / "metrics.json").read_text())
        best = min(metrics["epochs"], key=lambda e: e["val/loss"])
        assert run["epochs_to_converge"] == best["epoch"]
        assert run["test_acc"] == pytest.approx(100 * metrics["test"]["test/acc"])
        assert set(run["grad_info"]) == {"backbone.fc1", "backbone.fc2", "backbone.fc3", "backbone.out"}
    for key in ("torch", "pytorch-lightning", "lightning-gaaf"):
        assert results["versions"][key]
    assert results["wall_time_s"] > 0 and "gaaf-reproduce mnist --quick" in results["command"]

    table4 = (out / "table4.md").read_text()
    for model, (acc, epochs) in PAPER_TABLE4["mnist"].items():
        row = next(line for line in table4.splitlines() if line.startswith(f"| {model} |"))
        assert f"{acc:.2f}" in row and f"| {epochs} |" in row
        ours = results["runs"][model][0]["test_acc"]
        assert f"| {ours:.2f} | " in row and "(0.00)" not in row  # one seed: no spread shown
    table2 = (out / "table2.md").read_text()
    assert table2.splitlines()[0].startswith("| layer | base | dropout | gaaf | paper")
    assert len([line for line in table2.splitlines() if line.startswith("| backbone.")]) == 4
    # Table 1: one row per model and hidden layer, one column per threshold, from NodeCorrelationMonitor.
    table1 = (out / "table1.md").read_text()
    header = next(line for line in table1.splitlines() if line.startswith("| model |"))
    assert (
        header
        == "| model | layer | live nodes | \\|corr\\| > 0.9 | \\|corr\\| > 0.8 | \\|corr\\| > 0.7 | \\|corr\\| > 0.6 | \\|corr\\| > 0.5 | paper, MNIST: \\|corr\\| > 0.9 |"
    )
    rows = [line for line in table1.splitlines() if line.startswith("| ") and not line.startswith("| model")]
    assert [row.split(" | ")[:2] for row in rows] == [
        [f"| {m}", f"backbone.{layer}"]
        for m in ("base", "dropout", "gaaf")
        for layer in ("act1", "act2", "act3")
    ]
    stats = Path(results["runs"]["gaaf"][0]["run_dir"]) / "stats"
    saved_rows = read_stats(find_stats_file(stats, "node_correlation"))["rows"]
    first = next(r for r in saved_rows if r["layer"] == "backbone.act1" and r["threshold"] == 0.9)
    gaaf_row = next(row for row in rows if row.startswith("| gaaf | backbone.act1 |"))
    share = 100 * first["pairs"] / first["total_pairs"]
    assert f"| {first['pairs']} ({share:.1f} %) |" in gaaf_row
    assert PAPER_NOTE in table1
    # Table 3: net variance under dropout, only the dropout model records it.
    table3 = (out / "table3.md").read_text()
    var_rows = [line for line in table3.splitlines() if line.startswith("| dropout |")]
    assert [row.split(" | ")[1] for row in var_rows] == [
        "backbone.act1",
        "backbone.act2",
        "backbone.act3",
        "last (output) layer",
    ]
    assert "| not measured |" in var_rows[-1]
    assert not any(line.startswith(("| base |", "| gaaf |")) for line in table3.splitlines())
    dropout_config = yaml.safe_load(
        (Path(results["runs"]["dropout"][0]["run_dir"]) / "config.yaml").read_text()
    )
    (probe,) = [
        c for c in dropout_config["trainer"]["callbacks"] if c["class_path"].endswith(".NetVarMonitor")
    ]
    assert probe["init_args"]["max_samples"] == 128 and probe["init_args"]["repeats"] == 20
    net_var = json.loads(
        (Path(results["runs"]["dropout"][0]["run_dir"]) / "stats" / "net_var.json").read_text()
    )
    last = [v for v in net_var["layers"]["backbone.act1"] if v is not None][-1]
    assert f"| {last:.4g} | 1 |" in var_rows[0]
    assert "over 20 dropout masks" in table3 and PAPER_NOTE in table3
    png = (out / "nets_test.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    assert "3 run(s) to train, 0 finished run(s) reused" in proc.stdout


def test_resume_redoes_only_the_missing_run(quick_run):
    tmp_path, _ = quick_run
    out = tmp_path / "out"
    before = json.loads((out / "results.json").read_text())
    gaaf_dir = out / "runs" / "gaaf" / "seed_0"
    (gaaf_dir / "stats" / "metrics.json").unlink()  # as if that run had been interrupted
    base_ckpt = sorted((out / "runs" / "base" / "seed_0" / "checkpoints").iterdir())
    base_mtime = [p.stat().st_mtime_ns for p in base_ckpt]

    proc = quick_in_process(tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "1 run(s) to train, 2 finished run(s) reused" in proc.stdout
    assert "gaaf seed 0: ok" in proc.stdout and "base seed 0" not in proc.stdout
    assert [p.stat().st_mtime_ns for p in base_ckpt] == base_mtime
    after = json.loads((out / "results.json").read_text())
    assert after["runs"]["base"] == before["runs"]["base"]
    assert (gaaf_dir / "stats" / "metrics.json").is_file()


def test_missing_configs_is_a_clear_error(tmp_path):
    proc = reproduce_in_process(tmp_path, "mnist", "--configs", str(tmp_path))
    assert proc.returncode != 0
    assert "configs/mnist_{base,dropout,gaaf}.yaml not found" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_fashion_mnist_uses_the_same_configs_with_its_own_data(tmp_path):
    write_mnist(tmp_path / "data", n_train=1200, n_test=100, variant="FashionMNIST")
    proc = reproduce_in_process(
        tmp_path, "fashion_mnist", "--quick",
        "--data-dir", str(tmp_path / "data"), "--out", str(tmp_path / "out"), "--configs", str(CONFIGS),
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    results = json.loads((tmp_path / "out" / "results.json").read_text())
    assert results["dataset"] == "fashion_mnist" and results["paper"] is None
    for model in ("base", "dropout", "gaaf"):
        config = (tmp_path / "out" / "runs" / model / "seed_0" / "config.yaml").read_text()
        assert "class_path: lightning_gaaf.datamodules.FashionMNISTDataModule" in config
    assert "| n/a | n/a |" in (tmp_path / "out" / "table4.md").read_text()


def test_tuned_comparison_selects_on_validation_and_retrains(tmp_path):
    """--tune: one study per model (same trials and budget), best configs retrained on new seeds."""
    write_mnist(tmp_path / "data", n_train=1500, n_test=200)
    proc = quick_in_process(tmp_path, "--tune", "2")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    out = tmp_path / "out"
    results = json.loads((out / "results_tuned.json").read_text())
    assert results["protocol"]["trials_per_model"] == 2 and results["protocol"]["retrain_seeds"] == [1, 2]
    table = (out / "table4_tuned.md").read_text()
    for model in ("base", "dropout", "gaaf"):
        study = results["studies"][model]
        assert study["trials"] == {"complete": 2}
        assert study["fit_args"][:2] == ["--trainer.max_epochs", "2"]
        best_dir = Path(study["best"]["run_dir"])
        assert (
            json.loads((best_dir / "stats" / "metrics.json").read_text())["test"] == {}
        )  # no test in trials
        runs = results["runs"][model]
        assert [r["seed"] for r in runs] == [1, 2]
        for run in runs:
            config = yaml.safe_load((Path(run["run_dir"]) / "config.yaml").read_text())
            assert config["seed_everything"] == run["seed"]
            lr = study["best"]["params"]["model.optimizer.init_args.lr"]
            assert config["model"]["init_args"]["optimizer"]["init_args"]["lr"] == pytest.approx(
                lr
            )  # the selected value
        row = next(line for line in table.splitlines() if line.startswith(f"| {model} |"))
        mean = sum(r["test_acc"] for r in runs) / 2
        assert f"| {100 * study['best']['value']:.2f} | {mean:.2f} (" in row
    assert "gaaf - dropout, test accuracy" in table and "paired" in table


def test_tuned_studies_and_runs_get_the_jobs_as_workers(tmp_path):
    """--jobs N: each study runs with N local gaaf-tune workers (the in-process test above uses one)."""
    from lightning_gaaf.cli.reproduce.tuned import study_settings

    args = argparse.Namespace(tune=2, jobs=3, dataset="mnist", tune_pruner="median:5:1")
    settings = study_settings(args, CONFIGS, "gaaf", tmp_path, ["--trainer.max_epochs", "2"])
    assert settings.workers == 3 and settings.n_trials == 2 and settings.study_name == "mnist_gaaf"
    assert settings.out == (tmp_path / "tune" / "gaaf").absolute()
    assert settings.argv[-3:] == ["--", "--trainer.max_epochs", "2"]
