"""The training-set size study: per-size planning, its options, a real run's record, its tables."""

import argparse
import json
import os
from pathlib import Path

import numpy as np
import pytest
from _study_helpers import InProcessExecutor
from _tune_helpers import run_program

from lightning_gaaf.cli.reproduce import lr_plan as lp
from lightning_gaaf.cli.reproduce import lr_study as lr_study_module
from lightning_gaaf.cli.reproduce import size_study
from lightning_gaaf.cli.reproduce.main import main as reproduce_main
from lightning_gaaf.cli.reproduce.size_tables import write_tables
from lightning_gaaf.datamodules.synthetic import write_mnist

GRID = (0.1, 0.2, 0.4)


def rec(model, lr, seed, size, acc=97.0, test_acc=97.0, train_eval_acc=None, train_acc=99.0):
    return {
        "dataset": "mnist", "protocol": "no_momentum", "model": model, "lr": lr, "seed": seed,
        "train_size": size, "best_val_acc": acc, "best_val_loss": 0.1, "best_epoch": 2, "epochs_trained": 4,
        "hit_cap": False, "test_acc": test_acc, "train_eval_acc": train_eval_acc, "predictions": None,
        "epochs": [{"epoch": e, "step": 8 * e, "val_acc": acc, "train_acc": train_acc} for e in (1, 2, 3, 4)],
    }  # fmt: skip


def args_of(*argv: str) -> argparse.Namespace:
    return size_study.parse_args(["--grid", *map(str, GRID), "--max-extensions", "0", *argv])


def test_each_size_selects_its_own_rate_and_trains_no_control():
    args = args_of("--datasets", "mnist", "--models", "base", "--seeds", "3")
    done = [rec("base", lr, 0, 1000, acc=96.0 + (lr == 0.2)) for lr in GRID]  # 0.2 best at 1000 images
    todo = size_study.plan(args, done)
    assert [(r.train_size, r.lr, r.seed) for r in todo] == [
        (1000, 0.2, 1), (1000, 0.2, 2), (5000, 0.1, 0), (5000, 0.2, 0), (5000, 0.4, 0),
    ]  # fmt: skip
    assert {r.model for r in todo} == {"base"}  # no base_lrscale
    # records of another size (or of the learning-rate study: no train_size) do not count for 1000
    other = [rec("base", lr, 0, None) for lr in GRID]
    assert [r.train_size for r in size_study.plan(args, other)][:3] == [1000, 1000, 1000]


def test_a_run_trains_on_its_subset_in_its_own_folder(tmp_path):
    args = args_of(
        "--datasets", "mnist", "--work-dir", str(tmp_path / "work"), "--out", str(tmp_path / "out")
    )
    run = lp.Run("mnist", "no_momentum", "gaaf", 0.2, 3, train_size=1000)
    cmd = lr_study_module.fit_args(args, run, tmp_path / "run")
    assert cmd[cmd.index("--data.init_args.train_size") + 1] == "1000"
    assert "TrainSetAccuracy" in cmd[cmd.index("--trainer.callbacks") + 1]
    assert lr_study_module.record_path(args.out, run) == (
        tmp_path / "out" / "mnist" / "no_momentum" / "n1000" / "runs" / "gaaf_lr0.2_seed3.json"
    )
    plain = lp.Run("mnist", "no_momentum", "gaaf", 0.2, 3)
    assert "--data.init_args.train_size" not in lr_study_module.fit_args(args, plain, tmp_path / "run")


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--train-sizes", "0"], r"--train-sizes: \[0\] not in 1..50000"),
        (["--train-sizes", "50001"], r"--train-sizes: \[50001\] not in 1..50000"),
        (["--val-size", "20000", "--train-sizes", "45000"], r"not in 1..40000"),
        (["--train-sizes", "50000", "--reuse-lr-study", "."], "is the whole training split"),
        (["--reuse-lr-study", "no/such/folder"], "no/such/folder is not a folder"),
    ],
)
def test_bad_options_are_one_clear_error(argv, message, capsys):
    with pytest.raises(SystemExit) as exc:
        size_study.parse_args(argv)
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("gaaf-reproduce --size-study: error: ")
    assert __import__("re").search(message, err)


def test_study_writes_a_record_with_the_training_set_accuracy_from_a_real_fit(tmp_path, monkeypatch):
    write_mnist(tmp_path / "data", n_train=1500, n_test=200)
    monkeypatch.setattr(lr_study_module, "ProcessPoolExecutor", InProcessExecutor)
    argv = [
        "--size-study", "--quick", "--datasets", "mnist", "--models", "dropout", "--train-sizes", "200",
        "--grid", "0.1", "--max-extensions", "0", "--seeds", "1", "--data-dir", str(tmp_path / "data"),
        "--out", str(tmp_path / "out"), "--work-dir", str(tmp_path / "work"),
    ]  # fmt: skip
    env = {k: v for k, v in os.environ.items() if k != "WANDB_SERVICE"}
    proc = run_program(reproduce_main, argv, tmp_path, env)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "start mnist/no_momentum/n200/dropout_lr0.1_seed0" in proc.stdout
    folder = tmp_path / "out" / "mnist" / "no_momentum" / "n200"
    record = json.loads((folder / "runs" / "dropout_lr0.1_seed0.json").read_text())
    assert (record["train_size"], record["steps_per_epoch"]) == (200, 2)  # 200 images, batch 128
    assert 0 <= record["train_eval_acc"] <= 100 and record["train_eval_loss"] > 0
    preds = np.load(folder / record["predictions"])
    assert 100 * np.mean(preds["pred"] == preds["label"]) == pytest.approx(record["test_acc"], abs=1e-3)
    table = (tmp_path / "out" / "mnist" / "no_momentum" / "tables.md").read_text()
    line = next(x for x in table.splitlines() if x.startswith("| 200 | dropout | 0.1 | 1 |"))
    assert f"| {record['train_eval_acc']:.2f} | {record['train_eval_acc'] - record['test_acc']:.2f} |" in line
    assert (tmp_path / "work" / "mnist" / "no_momentum" / "n200" / "dropout_lr0.1_seed0").is_dir()


def test_tables_compare_gaps_per_size_and_show_the_reused_full_split(tmp_path):
    lr_out = tmp_path / "lr_study"
    full = [rec(m, 0.2, s, None, test_acc=98.0, train_acc=99.5) for m in lp.MLP_MODELS for s in range(2)]
    full += [rec(m, lr, 0, None, acc=96.0) for m in lp.MLP_MODELS for lr in (0.025, 0.1, 0.4, 0.8)]
    full += [rec(m, 0.05, 0, None, acc=98.5) for m in lp.MLP_MODELS]  # best on the study's grid, not on GRID
    for r in full:
        path = lr_study_module.record_path(
            lr_out, lp.Run("mnist", "no_momentum", r["model"], r["lr"], r["seed"])
        )
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(r))
    small = [rec(m, lr, 0, 1000, acc=90.0) for m in lp.MLP_MODELS for lr in (0.1, 0.4)]
    base_gap, gaaf_gap = (10.0, 12.0, 11.0), (6.0, 7.0, 9.0)  # gaaf - base: -4, -5, -2
    for s in range(3):
        small.append(rec("base", 0.2, s, 1000, acc=91.0, test_acc=90.0, train_eval_acc=90.0 + base_gap[s]))
        small.append(rec("gaaf", 0.2, s, 1000, acc=91.0, test_acc=91.0, train_eval_acc=91.0 + gaaf_gap[s]))
    small.append(rec("dropout", 0.2, 0, 1000, acc=91.0, test_acc=92.0, train_eval_acc=95.0))
    args = args_of("--datasets", "mnist", "--train-sizes", "1000", "--out", str(tmp_path / "out"),
                   "--reuse-lr-study", str(lr_out))  # fmt: skip
    (path,) = write_tables(args, small)
    text = path.read_text()
    assert "13 finished runs of this study, 21 of the learning-rate study" in text
    assert "### 50000 training images (the learning-rate study's runs)" in text
    row = next(x for x in text.splitlines() if x.startswith("| 1000 | base | 0.2 | 3 |"))
    assert "| 11.00 (1.00) |" in row  # the gap, mean (sample std)
    dropout = next(x for x in text.splitlines() if x.startswith("| 1000 | dropout | 0.2 | 1 |"))
    assert "| 3.00 |" in dropout and "(0.00)" not in dropout  # one seed: no spread
    # the learning-rate study's runs are selected on its own grid (0.025 ... 0.8), not on --grid
    assert "| 50000 (lr study) | gaaf | 0.05 | 1 |" in text
    section = text.split("### 1000 training images")[-1]
    gap = next(x for x in section.splitlines() if x.startswith("| gaaf - base | gap, tested weights |"))
    cells = [c.strip() for c in gap.strip("|").split("|")]
    assert cells[2] == "3" and cells[3].startswith("-3.67 (1.53) [")
    assert (
        next(x for x in section.splitlines() if x.startswith("| gaaf - dropout | gap, tested weights |"))
        .split("|")[4]
        .strip()
        == "n < 2"
    )
    assert "adjusted across the 6 comparisons of this table" in section
    assert "adjusted across the 3 comparisons of this table" in section
    assert "--size-study --datasets mnist --protocol no_momentum --train-sizes 1000 --reuse-lr-study" in text
    # every line, against the file kept beside the tests (change it only with a change meant to show)
    expected = (Path(__file__).parent / "expected" / "size_tables_mnist_no_momentum.md").read_text()
    assert text.replace(str(tmp_path), "<tmp>").splitlines() == expected.splitlines()


def test_with_control_base_trains_at_gaafs_rate_of_each_size_and_the_tables_compare_it(tmp_path):
    """``--control``: base with GAAF's per-layer factors, at the rate GAAF selected for that size."""
    args = args_of("--datasets", "mnist", "--train-sizes", "1000", "--seeds", "2", "--control",
                   "--out", str(tmp_path / "out"))  # fmt: skip
    done = [
        rec(m, lr, 0, 1000, acc=96.0 + (lr == (0.4 if m == "base" else 0.2)))
        for m in lp.MLP_MODELS
        for lr in GRID
    ]
    todo = [(r.model, r.lr, r.seed) for r in size_study.plan(args, done)]
    assert (lp.CONTROL, 0.2, 0) in todo and (lp.CONTROL, 0.2, 1) in todo  # GAAF's rate, not base's 0.4
    assert all(r.model != lp.CONTROL for r in size_study.plan(args_of("--datasets", "mnist"), done))
    done += [rec(m, lr, 1, 1000, test_acc=90.0) for m, lr in (("base", 0.4), ("dropout", 0.2), ("gaaf", 0.2))]
    done += [rec(lp.CONTROL, 0.2, s, 1000, test_acc=89.0 + s, train_eval_acc=99.0) for s in range(2)]
    (path,) = write_tables(args, done)
    text = path.read_text()
    assert "--size-study --datasets mnist --protocol no_momentum --control --train-sizes 1000" in text
    assert next(x for x in text.splitlines() if x.startswith(f"| 1000 | {lp.CONTROL} | 0.2 | 2 |"))
    assert any(x.startswith(f"| {lp.CONTROL} - gaaf | 2 |") for x in text.splitlines())
    assert any(x.startswith(f"| {lp.CONTROL} - gaaf | running train - test | 2 |") for x in text.splitlines())


def test_one_control_option_with_each_studys_default():
    """``--control`` / ``--no-control`` in both studies: on by default in the learning-rate study, off here."""
    assert lr_study_module.parse_args([]).control is True
    assert lr_study_module.parse_args(["--no-control"]).control is False
    assert size_study.parse_args([]).control is False
    assert size_study.parse_args(["--control"]).control is True
