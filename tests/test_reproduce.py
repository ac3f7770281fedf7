"""gaaf-reproduce --quick on synthetic MNIST-format data: outputs, numbers, resumption."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from lightning_gaaf.cli import reproduce
from lightning_gaaf.datamodules.synthetic import write_mnist

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def run_reproduce(tmp_path: Path, *extra: str) -> subprocess.CompletedProcess:
    cmd = [
        sys.executable, "-m", "lightning_gaaf.cli.reproduce", "mnist", "--quick",
        "--data-dir", str(tmp_path / "data"), "--out", str(tmp_path / "out"), "--configs", str(CONFIGS), *extra,
    ]  # fmt: skip
    return subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=tmp_path)


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
    for model, (acc, epochs) in reproduce.PAPER_TABLE4["mnist"].items():
        row = next(line for line in table4.splitlines() if line.startswith(f"| {model} |"))
        assert f"{acc:.2f}" in row and f"| {epochs} |" in row
        ours = results["runs"][model][0]["test_acc"]
        assert f"{ours:.2f} (0.00)" in row
    table2 = (out / "table2.md").read_text()
    assert table2.splitlines()[0] == "| layer | base | dropout | gaaf |"
    assert len(table2.splitlines()) == 2 + 4
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

    proc = run_reproduce(tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "1 run(s) to train, 2 finished run(s) reused" in proc.stdout
    assert "gaaf seed 0: ok" in proc.stdout and "base seed 0" not in proc.stdout
    assert [p.stat().st_mtime_ns for p in base_ckpt] == base_mtime
    after = json.loads((out / "results.json").read_text())
    assert after["runs"]["base"] == before["runs"]["base"]
    assert (gaaf_dir / "stats" / "metrics.json").is_file()


def test_missing_configs_is_a_clear_error(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "lightning_gaaf.cli.reproduce", "mnist", "--configs", str(tmp_path)],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode != 0
    assert "configs/mnist_{base,dropout,gaaf}.yaml not found" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_fashion_mnist_uses_the_same_configs_with_its_own_data(tmp_path):
    write_mnist(tmp_path / "data", n_train=1200, n_test=100, variant="FashionMNIST")
    cmd = [
        sys.executable, "-m", "lightning_gaaf.cli.reproduce", "fashion_mnist", "--quick",
        "--data-dir", str(tmp_path / "data"), "--out", str(tmp_path / "out"), "--configs", str(CONFIGS),
    ]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    results = json.loads((tmp_path / "out" / "results.json").read_text())
    assert results["dataset"] == "fashion_mnist" and results["paper"] is None
    for model in ("base", "dropout", "gaaf"):
        config = (tmp_path / "out" / "runs" / model / "seed_0" / "config.yaml").read_text()
        assert "class_path: lightning_gaaf.datamodules.FashionMNISTDataModule" in config
    assert "| n/a | n/a |" in (tmp_path / "out" / "table4.md").read_text()
