"""The learning-rate study: grid extension, planning, targets, per-layer learning rates, resumable runs."""

import json
import math
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from _study_helpers import InProcessExecutor
from _tune_helpers import run_program, stub_fit, stub_val_acc

import lightning_gaaf.run
from lightning_gaaf.cli.reproduce import lr_plan as lp
from lightning_gaaf.cli.reproduce import lr_study as lr_study_module
from lightning_gaaf.cli.reproduce.lr_tables import to_targets
from lightning_gaaf.cli.reproduce.main import main as reproduce_main
from lightning_gaaf.datamodules.synthetic import write_mnist
from lightning_gaaf.models import MLP, ImageClassifier

GRID = {"no_momentum": (0.1, 0.2, 0.4), "momentum": (0.1, 0.2, 0.4)}
STUDY = [("mnist", "no_momentum")]


def rec(model: str, lr: float, seed: int, acc: float, loss: float) -> dict:
    return {
        "dataset": "mnist", "protocol": "no_momentum", "model": model, "lr": lr, "seed": seed,
        "best_val_acc": acc, "best_val_loss": loss,
    }  # fmt: skip


def planned(records, seeds=3, max_extensions=2, models=("gaaf",), control=False, grids=GRID):
    runs = lp.plan(STUDY, records, seeds, max_extensions, control=control, grids=grids, models=models)
    return [(r.model, r.lr, r.seed) for r in runs]


def test_plan_starts_with_the_grid_and_no_seeds():
    assert planned([]) == [("gaaf", 0.1, 0), ("gaaf", 0.2, 0), ("gaaf", 0.4, 0)]
    # one grid point finished: the others remain, still no seeds
    assert planned([rec("gaaf", 0.2, 0, 97.0, 0.1)]) == [("gaaf", 0.1, 0), ("gaaf", 0.4, 0)]


def test_best_at_the_high_edge_extends_the_grid_by_one_step():
    records = [
        rec("gaaf", 0.1, 0, 96.0, 0.2),
        rec("gaaf", 0.2, 0, 97.0, 0.15),
        rec("gaaf", 0.4, 0, 98.0, 0.1),
    ]
    assert planned(records) == [("gaaf", 0.8, 0)]
    sel = lp.select(GRID["no_momentum"], {r["lr"]: r for r in records})
    assert sel.grid == [0.1, 0.2, 0.4, 0.8] and not sel.final
    # the new point is worse: 0.4 is inside the grid now, the choice is final and the seeds follow
    records.append(rec("gaaf", 0.8, 0, 90.0, 0.5))
    sel = lp.select(GRID["no_momentum"], {r["lr"]: r for r in records})
    assert sel.final and sel.best_lr == 0.4 and sel.at_edge is None
    assert planned(records) == [("gaaf", 0.4, 1), ("gaaf", 0.4, 2)]


def test_best_at_the_low_edge_extends_downwards_until_the_limit_and_reports_the_edge():
    records = [rec("gaaf", lr, 0, 99.0 - lr, 0.1 + lr) for lr in (0.1, 0.2, 0.4)]
    assert planned(records, max_extensions=1) == [("gaaf", 0.05, 0)]
    records.append(rec("gaaf", 0.05, 0, 99.5, 0.05))  # still better at the edge, no extension left
    sel = lp.select(GRID["no_momentum"], {r["lr"]: r for r in records}, max_extensions=1)
    assert sel.final and sel.best_lr == 0.05 and sel.at_edge == "low"
    assert planned(records, max_extensions=1) == [("gaaf", 0.05, 1), ("gaaf", 0.05, 2)]


def test_diverged_runs_score_lowest_and_ties_go_to_the_lower_loss():
    assert lp.score({"best_val_acc": None, "best_val_loss": None}) == (-math.inf, -math.inf)
    assert lp.score({"best_val_acc": 98.0, "best_val_loss": 0.07}) > lp.score(
        {"best_val_acc": 98.0, "best_val_loss": 0.08}
    )
    # a run that diverged after good epochs keeps their finite scores, but its rate is not stable
    late = {
        "best_val_acc": 98.5,
        "best_val_loss": 0.05,
        "diverged": {"key": "train/loss", "value": "nan", "step": 900},
    }
    assert lp.score(late) == (-math.inf, -math.inf)
    assert lp.score({**late, "diverged": None}) == (98.5, -0.05)


def test_control_follows_gaaf_selection_at_gaaf_rate():
    """The control (base with GAAF's per-layer factors) trains at GAAF's selected rate, not base's."""
    grids = {"no_momentum": (0.025, 0.05, 0.1, 0.2, 0.4)}
    records = [rec("base", lr, 0, 98.0 if lr == 0.2 else 97.0, 0.1) for lr in grids["no_momentum"]]
    records += [rec("gaaf", lr, 0, 98.2 if lr == 0.05 else 97.0, 0.1) for lr in grids["no_momentum"]]
    both = {"models": ("base", "gaaf"), "control": True, "grids": grids}
    assert planned(records, seeds=2, **both) == [
        ("base", 0.2, 1),
        ("gaaf", 0.05, 1),
        (lp.CONTROL, 0.05, 0),
        (lp.CONTROL, 0.05, 1),
    ]
    records += [rec("gaaf", 0.05, 1, 98.0, 0.1), rec(lp.CONTROL, 0.05, 0, 98.1, 0.1)]
    records += [rec(lp.CONTROL, 0.2, 1, 98.1, 0.1)]  # at base's rate: not the control's run
    assert planned(records, seeds=2, **both) == [("base", 0.2, 1), (lp.CONTROL, 0.05, 1)]


def test_targets_give_the_first_epoch_its_step_and_the_summed_wall_and_cpu_time():
    epochs = [
        {"epoch": 1, "step": 391, "val_acc": 96.5, "time_s": 10.0, "cpu_s": 8.0},
        {"epoch": 2, "step": 782, "val_acc": 97.6, "time_s": 12.0, "cpu_s": 9.0},
        {"epoch": 3, "step": 1173, "val_acc": 97.2, "time_s": 11.0, "cpu_s": 9.5},
        {"epoch": 4, "step": 1564, "val_acc": 98.0, "time_s": 9.5, "cpu_s": 8.5},
    ]
    out = to_targets(epochs, (97.0, 97.5, 98.0, 98.5))
    assert out[97.0] == {"epoch": 2, "step": 782, "seconds": 22.0, "cpu_seconds": 17.0}
    assert out[97.5] == out[97.0]
    assert out[98.0] == {"epoch": 4, "step": 1564, "seconds": 42.5, "cpu_seconds": 35.0}
    assert out[98.5] is None
    epochs[0]["time_s"] = None  # an epoch without its time: no wall time, the rest still exact
    assert to_targets(epochs, (98.0,))[98.0] == {
        "epoch": 4,
        "step": 1564,
        "seconds": None,
        "cpu_seconds": 35.0,
    }


def sgd(params):
    return torch.optim.SGD(params, lr=0.1)


def test_layer_lr_scale_gives_each_named_layer_its_own_rate_and_step():
    torch.manual_seed(0)
    plain = ImageClassifier(MLP(in_features=8, hidden=[6, 5]), optimizer=sgd)
    scaled = ImageClassifier(
        MLP(in_features=8, hidden=[6, 5]), optimizer=sgd, layer_lr_scale={"backbone.fc1": 4.0}
    )
    scaled.load_state_dict(plain.state_dict())
    opt_plain, opt_scaled = plain.configure_optimizers(), scaled.configure_optimizers()
    lrs = {g["lr_scale"]: g["lr"] for g in opt_scaled.param_groups}
    assert lrs == {1.0: pytest.approx(0.1), 4.0: pytest.approx(0.4)}
    x, y = torch.randn(16, 8), torch.randint(0, 10, (16,))
    before = {n: p.detach().clone() for n, p in plain.named_parameters()}
    for model, opt in ((plain, opt_plain), (scaled, opt_scaled)):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
    step_plain = {n: p.detach() - before[n] for n, p in plain.named_parameters()}
    step_scaled = {n: p.detach() - before[n] for n, p in scaled.named_parameters()}
    for name in step_plain:
        factor = 4.0 if name.startswith("backbone.fc1.") else 1.0
        torch.testing.assert_close(step_scaled[name], factor * step_plain[name])


def test_layer_lr_scale_rejects_unknown_layers_and_bad_factors():
    with pytest.raises(ValueError, match=r"no parameters under 'backbone.fc9'.*backbone.fc1"):
        ImageClassifier(MLP(in_features=8, hidden=[6]), layer_lr_scale={"backbone.fc9": 2.0})
    with pytest.raises(ValueError, match=r"factor of 'backbone.fc1' must be > 0, got 0"):
        ImageClassifier(MLP(in_features=8, hidden=[6]), layer_lr_scale={"backbone.fc1": 0})


def lr_study(tmp_path: Path, monkeypatch, *extra: str):
    """gaaf-reproduce --lr-study (one grid point, two seeds) in this process, its runs in this process too."""
    monkeypatch.setattr(lr_study_module, "ProcessPoolExecutor", InProcessExecutor)
    args = [
        "--lr-study", "--quick", "--datasets", "mnist", "--protocols", "momentum", "--models", "gaaf",
        "--grid", "0.05", "--max-extensions", "0", "--seeds", "2", "--data-dir", str(tmp_path / "data"),
        "--out", str(tmp_path / "out"), "--work-dir", str(tmp_path / "work"), *extra,
    ]  # fmt: skip
    env = {k: v for k, v in os.environ.items() if k != "WANDB_SERVICE"}
    return run_program(reproduce_main, args, tmp_path, env)


@pytest.fixture(scope="module")
def lr_data(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("lr_data")
    write_mnist(root / "data", n_train=1500, n_test=200)
    return root / "data"


def test_study_writes_one_record_per_run_from_a_real_fit(tmp_path, lr_data, monkeypatch):
    (tmp_path / "data").symlink_to(lr_data)
    proc = lr_study(tmp_path, monkeypatch, "--no-control", "--seeds", "1")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "trained 1 run(s); 0 failed" in proc.stdout
    folder = tmp_path / "out" / "mnist" / "momentum"
    paths = sorted((folder / "runs").glob("*.json"))
    assert [p.name for p in paths] == ["gaaf_lr0.05_seed0.json"]
    record = json.loads(paths[0].read_text())
    assert (record["model"], record["lr"], record["seed"], record["config"]) == (
        "gaaf",
        0.05,
        0,
        "configs/mnist_gaaf.yaml",
    )
    assert [e["epoch"] for e in record["epochs"]] == [1, 2] and record["steps_per_epoch"] == 8
    assert [e["step"] for e in record["epochs"]] == [8, 16]
    assert all(e["time_s"] > 0 and e["cpu_s"] > 0 for e in record["epochs"])
    assert record["train_time_s"] == pytest.approx(sum(e["time_s"] for e in record["epochs"]), abs=0.01)
    best = min(record["epochs"], key=lambda e: e["val_loss"])
    assert (record["best_epoch"], record["best_val_acc"]) == (best["epoch"], best["val_acc"])
    assert set(record["grad_info"]) == {"backbone.fc1", "backbone.fc2", "backbone.fc3", "backbone.out"}
    preds = np.load(folder / record["predictions"])
    assert preds["pred"].dtype == np.uint8 and preds["pred"].shape == preds["label"].shape == (200,)
    assert 100 * np.mean(preds["pred"] == preds["label"]) == pytest.approx(record["test_acc"], abs=1e-3)
    table = (folder / "tables.md").read_text()
    assert "| gaaf | **" in table and "| gaaf | 0.05 | 97.0 |" in table
    assert (folder / "val_acc.png").stat().st_size > 0
    # no checkpoints in the results folder
    assert not list((tmp_path / "out").rglob("*.ckpt")) and list((tmp_path / "work").rglob("*.ckpt"))


def test_study_skips_finished_runs_and_redoes_interrupted_ones(tmp_path, monkeypatch):
    """The study's bookkeeping over a stub fit: a finished run directory (real stats files), no training."""
    monkeypatch.setattr(lightning_gaaf.run, "fit_and_test", stub_fit)
    proc = lr_study(tmp_path, monkeypatch, "--no-control")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "0 finished run(s) found" in proc.stdout and "trained 2 run(s); 0 failed" in proc.stdout
    folder = tmp_path / "out" / "mnist" / "momentum"
    paths = sorted((folder / "runs").glob("*.json"))
    assert [p.name for p in paths] == ["gaaf_lr0.05_seed0.json", "gaaf_lr0.05_seed1.json"]
    for seed, path in enumerate(paths):
        record = json.loads(path.read_text())
        assert (record["model"], record["lr"], record["seed"]) == ("gaaf", 0.05, seed)
        assert [e["step"] for e in record["epochs"]] == [4, 8] and record["steps_per_epoch"] == 4
        assert record["best_val_acc"] == pytest.approx(100 * (stub_val_acc(0.05) - 0.05))
        assert record["test_acc"] == pytest.approx(100 * stub_val_acc(0.05)) and record["predictions"] is None

    # Rerun: nothing to train, records untouched; an interrupted run (a directory without record) runs again.
    mtimes = [p.stat().st_mtime_ns for p in paths]
    paths[1].unlink()
    proc = lr_study(tmp_path, monkeypatch, "--no-control")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "2 finished run(s) found" not in proc.stdout and "1 finished run(s) found" in proc.stdout
    assert "trained 1 run(s)" in proc.stdout and "start mnist/momentum/gaaf_lr0.05_seed1" in proc.stdout
    assert "start mnist/momentum/gaaf_lr0.05_seed0" not in proc.stdout
    assert paths[0].stat().st_mtime_ns == mtimes[0] and paths[1].is_file()

    # Tables from the records alone.
    (folder / "tables.md").unlink()
    proc = lr_study(tmp_path, monkeypatch, "--tables-only")
    assert proc.returncode == 0 and (folder / "tables.md").is_file(), proc.stderr
    assert "trained" not in proc.stdout
