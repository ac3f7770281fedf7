"""The CNN study: planning the four SmallCNN variants, its options, its tables, one real run on Fashion-MNIST."""

import json
import os
import re
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from _study_helpers import InProcessExecutor
from _tune_helpers import run_program

from lightning_gaaf.cli.reproduce import cnn_study, grad_gain
from lightning_gaaf.cli.reproduce import lr_plan as lp
from lightning_gaaf.cli.reproduce import lr_study as lr_study_module
from lightning_gaaf.cli.reproduce.lr_tables import selected_runs
from lightning_gaaf.cli.reproduce.main import main as reproduce_main
from lightning_gaaf.run.bundled import configs_dir

VARIANTS = ("base", "bn", "gaaf", "bn_gaaf")
GRID = (0.00625, 0.0125, 0.025, 0.05, 0.1)
N_IMAGES = 300


def rec(model, lr, seed, acc=85.0, loss=0.4, size=10000, test_acc=88.0, hits=(), predictions=None):
    """A finished run's record; ``hits``: the epochs (1..10) whose val accuracy is 90 %."""
    epochs = [
        {"epoch": e, "step": 79 * e, "val_acc": 90.0 if e in hits else 87.0, "val_loss": 0.5, "time_s": 2.0}
        for e in range(1, 11)
    ]
    return {
        "dataset": "fashion_mnist", "protocol": "small_cnn", "model": model, "lr": lr, "seed": seed,
        "train_size": size, "best_val_acc": acc, "best_val_loss": loss, "best_epoch": 10, "epochs_trained": 10,
        "hit_cap": False, "max_epochs": 15, "steps_per_epoch": 79, "test_acc": test_acc,
        "predictions": predictions, "epochs": epochs,
    }  # fmt: skip


def planned(args, records):
    return [(r.model, r.lr, r.seed, r.train_size) for r in cnn_study.plan(args, records)]


def test_the_protocol_is_the_four_variants_on_their_configs_without_control():
    proto = lp.PROTOCOLS["small_cnn"]
    assert (proto.models, proto.grid, proto.control) == (VARIANTS, GRID, False)
    assert proto.targets == {"fashion_mnist": (88.0, 89.0, 90.0)} and proto.datasets == ("fashion_mnist",)
    assert [proto.config(m) for m in VARIANTS] == [f"fashion_mnist_cnn_{m}.yaml" for m in VARIANTS]
    assert all((configs_dir() / proto.config(m)).is_file() for m in VARIANTS)


def test_plan_runs_each_variants_grid_then_its_seeds_at_its_own_rate():
    args = cnn_study.parse_args(["--seeds", "3", "--max-extensions", "1"])
    assert planned(args, []) == [(m, lr, 0, 10000) for m in VARIANTS for lr in GRID]
    best = {"base": 0.025, "bn": 0.1, "gaaf": 0.00625, "bn_gaaf": 0.05}  # bn: high edge, gaaf: low edge
    done = [rec(m, lr, 0, acc=90.0 if lr == best[m] else 85.0) for m in VARIANTS for lr in GRID]
    done[VARIANTS.index("gaaf") * len(GRID) + 3]["best_val_loss"] = float("nan")  # gaaf at 0.05 diverged
    assert planned(args, done) == [
        ("bn", 0.2, 0, 10000), ("gaaf", 0.003125, 0, 10000),  # one more grid point at the edge
        ("base", 0.025, 1, 10000), ("base", 0.025, 2, 10000),
        ("bn_gaaf", 0.05, 1, 10000), ("bn_gaaf", 0.05, 2, 10000),
    ]  # fmt: skip
    done += [rec("bn", 0.2, 0, acc=80.0), rec("gaaf", 0.003125, 0, acc=95.0)]  # gaaf: still at the edge
    assert [r for r in planned(args, done) if r[0] in ("bn", "gaaf")] == [
        ("bn", 0.1, 1, 10000), ("bn", 0.1, 2, 10000), ("gaaf", 0.003125, 1, 10000), ("gaaf", 0.003125, 2, 10000),
    ]  # fmt: skip
    assert not {r[0] for r in planned(args, done)} - set(VARIANTS)  # never the control
    # another training size's records do not count for this one
    other = cnn_study.parse_args(["--train-size", "50000", "--models", "gaaf"])
    assert planned(other, done) == [("gaaf", lr, 0, 50000) for lr in GRID]


def test_a_run_trains_its_variants_config_at_its_rate_on_its_subset(tmp_path):
    args = cnn_study.parse_args(["--out", str(tmp_path / "out"), "--work-dir", str(tmp_path / "work")])
    run = lp.Run("fashion_mnist", "small_cnn", "gaaf", 0.0125, 2, train_size=10000)
    cmd = lr_study_module.fit_args(args, run, tmp_path / "run")
    assert cmd[cmd.index("--config") + 1] == str(configs_dir() / "fashion_mnist_cnn_gaaf.yaml")
    assert cmd[cmd.index("--model.optimizer.init_args.lr") + 1] == "0.0125"
    assert cmd[cmd.index("--data.init_args.train_size") + 1] == "10000"
    assert cmd[cmd.index("--trainer.max_epochs") + 1] == "15" and "--model.layer_lr_scale" not in cmd
    # the study's callbacks replace the config's (its LearningRateMonitor needs a logger)
    assert cmd[cmd.index("--trainer.logger") + 1] == "false"
    assert "LearningRateMonitor" not in cmd[cmd.index("--trainer.callbacks") + 1]
    assert lr_study_module.record_path(args.out, run) == (
        tmp_path / "out" / "fashion_mnist" / "small_cnn" / "n10000" / "runs" / "gaaf_lr0.0125_seed2.json"
    )


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--train-size", "0"], r"--train-size: 0 not in 1\.\.50000 \(the training split after validation\)"),
        (["--train-size", "50001"], r"--train-size: 50001 not in 1\.\.50000"),
        (["--val-size", "20000", "--train-size", "45000"], r"--train-size: 45000 not in 1\.\.40000"),
        (["--models", "base", "dropout"], r"argument --models: invalid choice: 'dropout'"),
        (["--seeds", "0"], r"--seeds, --max-epochs, --patience and --jobs must be >= 1"),
    ],
)
def test_bad_options_are_one_clear_error(argv, message, capsys):
    with pytest.raises(SystemExit) as exc:
        cnn_study.parse_args(argv)
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("gaaf-reproduce --cnn-study: error: ") and re.search(message, err[-1])
    assert not any("Traceback" in line for line in err)


def test_the_study_checks_only_its_own_configs(tmp_path, capsys):
    configs = tmp_path / "configs"
    configs.mkdir()
    for m in VARIANTS[:3]:
        (configs / f"fashion_mnist_cnn_{m}.yaml").write_text("{}")
    argv = ["--tables-only", "--configs", str(configs), "--out", str(tmp_path / "out")]
    with pytest.raises(SystemExit) as exc:
        cnn_study.main(argv)
    assert str(exc.value) == (
        f"gaaf-reproduce --cnn-study: error: fashion_mnist_cnn_bn_gaaf.yaml not found in {configs}; "
        "pass --configs DIR"
    )
    cnn_study.main([*argv, "--models", "base", "gaaf"])  # no MLP config asked for
    assert "wrote nothing (no finished runs)" in capsys.readouterr().out


def test_main_help_lists_the_cnn_study(capsys):
    with pytest.raises(SystemExit) as exc:
        reproduce_main(["--help"])
    assert exc.value.code == 0
    assert re.search(r"--cnn-study +the Fashion-MNIST SmallCNN", capsys.readouterr().out)


def row(text: str, start: str) -> list[str]:
    line = next(x for x in text.splitlines() if x.startswith(start))
    return [c.strip() for c in line.strip("|").split("|")]


def test_tables_compare_the_variants_with_and_without_batch_norm(tmp_path):
    args = cnn_study.parse_args(["--out", str(tmp_path / "out"), "--max-extensions", "0"])
    folder = tmp_path / "out" / "fashion_mnist" / "small_cnn" / "n10000"
    (folder / "predictions").mkdir(parents=True)
    label = np.arange(N_IMAGES, dtype=np.uint8) % 10
    best = {"base": 0.05, "bn": 0.1, "gaaf": 0.0125, "bn_gaaf": 0.025}
    test_acc = {"base": 90.0, "bn": 91.0, "gaaf": 89.5, "bn_gaaf": 91.5}
    wrong = {"base": 30, "bn": 27, "gaaf": 32, "bn_gaaf": 25}  # images 0..wrong-1 are wrong
    records = [rec(m, lr, 0) for m in VARIANTS for lr in GRID if lr != best[m]]
    for m in VARIANTS:
        for seed in range(3):
            name = f"predictions/{m}_lr{lp.lr_label(best[m])}_seed{seed}.npz"
            pred = np.where(np.arange(N_IMAGES) < wrong[m] + seed, (label + 1) % 10, label).astype(np.uint8)
            np.savez(folder / name, pred=pred, label=label)
            hits = range(3 + seed if m.startswith("bn") else 6, 11)  # epochs at 90 % val acc
            acc = 90.0 if seed == 0 else 85.0
            records.append(
                rec(m, best[m], seed, acc, test_acc=test_acc[m] + 0.1 * seed, hits=hits, predictions=name)
            )
    records.append(rec("gaaf", 0.05, 0, size=5000))  # another training size: not in these tables
    written = cnn_study.write_tables(args, records)
    assert written == [folder / "tables.md", folder / "val_acc.png"] and written[1].stat().st_size > 0
    text = written[0].read_text()
    lines = text.splitlines()
    assert lines[0] == (
        "# CNN study: fashion_mnist, SmallCNN, SGD with momentum 0.9, weight decay 5e-4, cosine decay, "
        "10000 training images"
    )
    assert lines[2].startswith(
        "Budget: 10000 of the 50000 training images, at most 15 epochs per run (the cosine decay spans "
        "them), 3 seeds per variant at its selected rate. 28 finished runs; cap 15 epochs"
    )
    assert (
        "`gaaf-reproduce --cnn-study --train-size 10000 --seeds 3 --max-epochs 15 --patience 10" in lines[2]
    )
    assert row(text, "| gaaf | ")[-2:] == ["0.0125", "yes"]  # the selection table's row
    assert row(text, "| bn | ")[-2:] == ["0.1", "yes (best at high edge)"]
    assert [row(text, f"| {m} | {lp.lr_label(best[m])} | 3 |")[7] for m in VARIANTS] == [
        "90.10 (0.10)", "91.10 (0.10)", "89.60 (0.10)", "91.60 (0.10)",
    ]  # fmt: skip
    assert row(text, "| bn | 0.1 | 90.0 |")[3:5] == ["3/3", "4.0 (1.0)"]
    comparisons = [x.split("|")[1].strip() for x in lines if re.match(r"\| [a-z_]+ - [a-z_]+ \| 3 \|", x)]
    assert comparisons == ["gaaf - base", "bn_gaaf - bn", "bn - base", "bn_gaaf - base"]
    # McNemar on the pooled seeds: base is wrong on images 0..29+s, bn_gaaf on 0..24+s
    assert row(text, "| bn_gaaf - base | 3 |")[5] == "15 / 0"
    # epochs to 90 %: bn 3, 4, 5 against base 6, 6, 6
    assert row(text, "| bn - base | 90.0 |")[2:4] == ["3 (0)", "-2.0 (1.0) [-4.5, +0.5]"]
    assert "adjusted across the 4 comparisons of this table" in text
    assert "12 comparisons of this table" in text  # 4 comparisons x 3 targets
    assert lp.CONTROL not in text and "Control" not in text and "dropout" not in text


def _fashion_mnist_root() -> Path:
    root = os.environ.get("GAAF_DATA_DIR")
    if not root or not (Path(root) / "FashionMNIST" / "raw" / "t10k-labels-idx1-ubyte").is_file():
        pytest.skip("needs real Fashion-MNIST: GAAF_DATA_DIR with FashionMNIST/raw/*")
    return Path(root)


@pytest.mark.realdata
@pytest.mark.slow
def test_a_quick_study_on_real_fashion_mnist(tmp_path, monkeypatch):
    """Two variants, two seeds each at one rate, on 500 real training images (the grid's planning and
    selection: the synthetic tests above)."""
    data = _fashion_mnist_root()
    monkeypatch.setattr(lr_study_module, "ProcessPoolExecutor", InProcessExecutor)
    argv = [
        "--cnn-study", "--quick", "--grid", "0.02", "--max-extensions", "0", "--models", "base", "gaaf",
        "--seeds", "2", "--train-size", "500", "--jobs", "1", "--data-dir", str(data),
        "--out", str(tmp_path / "out"), "--work-dir", str(tmp_path / "work"),
    ]  # fmt: skip
    env = {k: v for k, v in os.environ.items() if k != "WANDB_SERVICE"}
    proc = run_program(reproduce_main, argv, tmp_path, env)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "trained 4 run(s); 0 failed" in proc.stdout
    folder = tmp_path / "out" / "fashion_mnist" / "small_cnn" / "n500"
    records = [json.loads(p.read_text()) for p in sorted((folder / "runs").glob("*.json"))]
    assert sorted((r["model"], r["lr"], r["seed"]) for r in records) == [
        (m, 0.02, s) for m in ("base", "gaaf") for s in (0, 1)
    ]
    for r in records:
        assert (r["dataset"], r["protocol"], r["train_size"]) == ("fashion_mnist", "small_cnn", 500)
        assert r["config"] == f"configs/fashion_mnist_cnn_{r['model']}.yaml" and r["layer_lr_scale"] is None
        assert r["steps_per_epoch"] == 4 and 0 <= r["test_acc"] <= 100  # 500 images, batch 128
        preds = np.load(folder / r["predictions"])
        assert preds["pred"].shape == preds["label"].shape == (256,)  # --quick: 2 test batches of 128
        assert 100 * np.mean(preds["pred"] == preds["label"]) == pytest.approx(r["test_acc"], abs=1e-3)
    for r in records:  # the study's callbacks replaced the config's; the cosine period is the cap (2), not 30
        run_dir = tmp_path / "work" / "fashion_mnist" / "small_cnn" / "n500" / Path(r["predictions"]).stem
        config = (run_dir / "config.yaml").read_text()
        assert "LearningRateMonitor" not in config and "SaturationMonitor" not in config
        (scheduler,) = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=False)["lr_schedulers"]
        assert scheduler["max_epochs"] == 2 and scheduler["base_lrs"] == [0.02]
    text = (folder / "tables.md").read_text()
    assert text.startswith("# CNN study: fashion_mnist, SmallCNN")
    assert "Budget: 500 of the 59500 training images, at most 2 epochs per run" in text
    assert "| gaaf - base | 2 |" in text and "| bn_gaaf - bn | 0 |" in text
    assert (folder / "val_acc.png").stat().st_size > 0


def test_a_diverged_run_is_recorded_and_its_rate_scores_lowest(tmp_path, monkeypatch, recwarn):
    """GAAF diverges at too large a rate: the run is a result of the grid (its cell says so), not a failure."""
    from lightning_gaaf.datamodules.synthetic import write_mnist

    write_mnist(tmp_path / "data", n_train=1000, n_test=200, variant="FashionMNIST")
    monkeypatch.setattr(lr_study_module, "ProcessPoolExecutor", InProcessExecutor)
    argv = [
        "--cnn-study", "--quick", "--grid", "50", "--max-extensions", "0", "--models", "gaaf", "--seeds", "1",
        "--train-size", "300", "--data-dir", str(tmp_path / "data"),
        "--out", str(tmp_path / "out"), "--work-dir", str(tmp_path / "work"),
    ]  # fmt: skip
    env = {k: v for k, v in os.environ.items() if k != "WANDB_SERVICE"}
    proc = run_program(reproduce_main, argv, tmp_path, env)
    assert any("the run diverged" in str(w.message) for w in recwarn)  # the fit's own warning
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "fashion_mnist/small_cnn/n300/gaaf_lr50_seed0: diverged (" in proc.stdout
    assert "trained 1 run(s); 0 failed" in proc.stdout
    folder = tmp_path / "out" / "fashion_mnist" / "small_cnn" / "n300"
    record = json.loads((folder / "runs" / "gaaf_lr50_seed0.json").read_text())
    assert record["diverged"]["key"] and record["best_val_loss"] is None
    assert lp.score(record) == (-np.inf, -np.inf)
    assert row((folder / "tables.md").read_text(), "| gaaf | ")[1] == "diverged"


def test_the_gain_table_shows_each_gaaf_variant_over_its_plain_twin_per_layer():
    """Every layer the runs record, per rate both trained; a diverged run's rate is named, not a ratio."""
    layers = ["backbone.features.conv1", "backbone.features.conv2", "backbone.classifier.out"]
    plain = dict(zip(layers, (1e-3, 2e-3, 4e-3), strict=True))
    gain = dict(zip(layers, (40.0, 8.0, 1.5), strict=True))
    nan = dict.fromkeys(layers, float("nan"))
    recs = [
        {**rec(m, lr, 0, acc=86.0), "grad_info": plain} for m in ("base", "bn") for lr in (0.00625, 0.0125)
    ] + [
        {**rec("gaaf", 0.00625, 0, acc=87.0), "grad_info": {k: v * gain[k] for k, v in plain.items()}},
        {**rec("gaaf", 0.0125, 0, acc=None), "grad_info": nan, "diverged": {"step": 48}},
        {**rec("bn_gaaf", 0.0125, 0, acc=88.0), "grad_info": {k: 2 * v for k, v in plain.items()}},
        {**rec("bn_gaaf", 0.0125, 1, acc=88.0), "grad_info": plain},  # not seed 0: no row
    ]
    proto = lp.PROTOCOLS["small_cnn"]
    assert grad_gain.gaaf_pairs(proto) == [("gaaf", "base"), ("bn_gaaf", "bn")]
    lines = grad_gain.gain_table(recs, proto)
    assert lines[0].startswith("GAAF / base gradient information per layer")
    assert "| lr | conv1 | conv2 | out | val acc % at best epoch: base / GAAF |" in lines
    assert "| lr | conv1 | conv2 | out | val acc % at best epoch: bn / bn_gaaf |" in lines
    rows = [line for line in lines if line.startswith("| 0")]
    assert rows == [
        "| 0.00625 | 40.00 | 8.00 | 1.50 | 86.00 / 87.00 |",
        "| 0.0125 | n/a | n/a | n/a | 86.00 / diverged |",
        "| 0.0125 | 2.00 | 2.00 | 2.00 | 86.00 / 88.00 |",
    ]
    assert grad_gain.gain_table([r for r in recs if r["model"] in ("base", "bn")], proto) == []


def test_each_published_config_trains_at_the_rate_the_published_study_selected():
    """The configs carry the CNN study's choices: recomputed from the committed run records, not copied."""
    out = Path(__file__).resolve().parents[1] / "docs" / "results" / "fashion_mnist_cnn"
    records = [r for r in lr_study_module.load_records(out) if r["train_size"] == 10000]
    sels, _ = selected_runs(records, "fashion_mnist", "small_cnn", max_extensions=2, grids=None)
    assert set(sels) == set(VARIANTS) and all(sels[v].final for v in VARIANTS)
    for variant in VARIANTS:
        config = yaml.safe_load((configs_dir() / f"fashion_mnist_cnn_{variant}.yaml").read_text())
        assert config["model"]["optimizer"]["init_args"]["lr"] == sels[variant].best_lr, variant
