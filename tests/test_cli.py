"""gaaf-fit as users run it: on CPU with synthetic data and offline W&B.

Most runs are gaaf-fit's main in this process (``_fit_helpers.fit_in_process``) or the shared
``reference_run``; a real program only where the process is what is tested: exit status and stderr
of the program, and DDP, whose launcher restarts the program once per rank.
"""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import pytest
import torch
import yaml
from _cli_helpers import (
    CONFIGS,
    TINY,
    config_updates,
    fit_command,
    fit_env,
    history,
    run_fit,
    run_meta,
    tiny,
    wandb_records,
)
from _cli_runs import DDPRun
from _fit_helpers import ReferenceRun, fit_in_process

from lightning_gaaf.cli.fit import main


def test_fit_writes_run_dir_checkpoint_config_and_wandb_metrics(reference_run: ReferenceRun) -> None:
    """The shared reference run (mnist_gaaf, 3 epochs of 6 steps): what a finished run leaves behind."""
    result, run_dir = reference_run.result, reference_run.run_dir
    assert f"gaaf-fit: run directory: {run_dir}" in result.stdout

    # Checkpoints: the best on val/acc (used by the test stage) and the last epoch.
    ckpts = sorted(p.name for p in (run_dir / "checkpoints").iterdir())
    best_names = [n for n in ckpts if re.fullmatch(r"epoch00[0-2]-val_acc\d\.\d{4}\.ckpt", n)]
    assert "last.ckpt" in ckpts and len(best_names) == 1, ckpts
    best = run_dir / "checkpoints" / best_names[0]
    assert f"best checkpoint: {best}" in result.stdout
    assert f"Restoring states from the checkpoint path at {best}" in result.stderr

    # The model that was trained and checkpointed had GAAF on each hidden tanh.
    ckpt = torch.load(best, map_location="cpu", weights_only=False)
    gaaf_state = next(v for k, v in ckpt["callbacks"].items() if k.startswith("GAAFCallback"))
    assert gaaf_state["modules"] == ["backbone.act1", "backbone.act2", "backbone.act3"]
    assert gaaf_state["options"]["K"] == 10000

    # The resolved config: the composed experiment plus the overrides, without the run's location.
    saved = yaml.safe_load((run_dir / "config.yaml").read_text())
    assert saved["gaaf"]["enabled"] is True
    assert saved["model"]["class_path"] == "lightning_gaaf.models.ImageClassifier"  # the default model
    model_args = saved["model"]["init_args"]
    assert model_args["backbone"]["class_path"] == "lightning_gaaf.models.MLP"
    assert model_args["optimizer"]["init_args"]["lr"] == 0.05
    # From the data by parse-time links (model and backbone), whose targets jsonargparse leaves out of
    # the saved file (the links set them again when the file is run).
    assert "num_classes" not in model_args["backbone"]["init_args"] and "num_classes" not in model_args
    assert saved["trainer"]["limit_train_batches"] == 6 and saved["trainer"]["max_epochs"] == 3
    assert saved["run_dir"] is None and saved["trainer"]["default_root_dir"] is None

    records = wandb_records(run_dir)
    meta = run_meta(records)
    assert meta["project"] == "lightning-gaaf" and meta["display_name"] == "mnist_gaaf"
    logged = history(records)
    for key in ("val/acc", "test/acc", "train/acc"):
        assert logged[key], key
        assert all(0.0 <= v <= 1.0 for v in logged[key]), (key, logged[key])
    assert len(logged["test/acc"]) == 1
    assert all(v > 0 for v in logged["train/loss"]) and all(v > 0 for v in logged["test/loss"])
    # Monitors enabled by the config log per layer (qualified module names).
    assert any(k.startswith("gaaf/grad_info/backbone.fc1") for k in logged)
    assert any(k.startswith("gaaf/saturation/backbone.act1") for k in logged)
    config = config_updates(records)
    assert config["gaaf/modules"] == ["backbone.act1", "backbone.act2", "backbone.act3"]
    assert config["model"]["init_args"]["backbone"]["init_args"]["activation"] == "tanh"


def test_fit_with_a_per_layer_policy_from_yaml(tmp_path: Path, mnist_dir: Path) -> None:
    """``gaaf.policy`` as a glob mapping in a config file: the first matching glob gives each layer
    its options, null leaves one plain; the saved config keeps the mapping in its order."""
    config = tmp_path / "mnist_policy.yaml"
    config.write_text(
        f"defaults: {CONFIGS / 'mnist_gaaf.yaml'}\n"
        "gaaf:\n"
        "  policy:\n"
        "    backbone.act1: {K: 100, shape: one}\n"
        "    backbone.act3: null\n"
        "    backbone.act*: {K: 1000}\n"
    )
    args = ["--config", str(config), *tiny(train_batches=2)]
    args += ["--trainer.logger", "pytorch_lightning.loggers.CSVLogger", "--trainer.logger.save_dir", "csv"]
    result = fit_in_process(*args, cwd=tmp_path, env=fit_env(mnist_dir))
    assert result.returncode == 0, result.stderr[-3000:]

    # The report, as printed when the callback applied it, and as logged.
    log = result.stdout + result.stderr
    assert "backbone.act1: Tanh() -> GAAF(Tanh, shape=one(), K=100)" in log
    assert "backbone.act2: Tanh() -> GAAF(Tanh, shape=gauss(c=3.0), K=1000)" in log
    assert "backbone.act3: the policy returned None" in log
    (hparams_file,) = (tmp_path / "csv").rglob("hparams.yaml")
    hparams = yaml.safe_load(hparams_file.read_text())
    assert hparams["gaaf/modules"] == ["backbone.act1", "backbone.act2"]
    assert hparams["gaaf/shapes"] == ["gauss(c=3.0)", "one()"]

    run_dir = tmp_path / "runs" / "mnist_policy" / "version_0"
    saved = yaml.safe_load((run_dir / "config.yaml").read_text())
    assert saved["gaaf"]["K"] == 10000 and saved["gaaf"]["enabled"] is True
    assert list(saved["gaaf"]["policy"].items()) == [
        ("backbone.act1", {"K": 100, "shape": "one"}),
        ("backbone.act3", None),
        ("backbone.act*", {"K": 1000}),
    ]


@pytest.mark.xdist_group("ddp")
def test_ddp_two_cpu_processes_share_one_run(ddp_run: DDPRun) -> None:
    result, cwd = ddp_run.result, ddp_run.cwd
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Initializing distributed: GLOBAL_RANK: 1, MEMBER: 2/2" in result.stderr
    runs = sorted((cwd / "runs" / "mnist_gaaf").iterdir())
    assert [p.name for p in runs] == ["version_0"]
    run_dir = runs[0]
    assert len(list((run_dir / "wandb").glob("offline-run-*"))) == 1
    assert len(list(cwd.rglob("checkpoints"))) == 1
    assert result.stdout.count("gaaf-fit: run directory:") == 1
    assert run_dir == ddp_run.run_dir
    logged = history(ddp_run.wandb_records)
    assert len(logged["test/acc"]) == 1 and 0.0 <= logged["test/acc"][0] <= 1.0


@pytest.mark.xdist_group("ddp")
def test_ddp_ranks_build_and_share_the_native_kernels(ddp_run: DDPRun) -> None:
    """GAAF with its native kernels under 2-process DDP: both ranks build into one fresh cache at once."""
    result, cache = ddp_run.result, ddp_run.cache
    assert result.returncode == 0, result.stderr[-3000:]
    assert "native kernels unavailable" not in result.stderr
    assert len(list(cache.glob("gaaf_kernels_*.so"))) == 1  # same key on both ranks, no leftovers
    assert not [p for p in cache.iterdir() if p.is_dir()]  # temporary build folders removed
    checkpoint = ddp_run.run_dir / "checkpoints" / "last.ckpt"
    gaaf_state = next(
        v
        for k, v in torch.load(checkpoint, map_location="cpu", weights_only=False)["callbacks"].items()
        if k.startswith("GAAFCallback")
    )
    assert gaaf_state["modules"] == ["backbone.act1", "backbone.act2", "backbone.act3"]
    logged = history(ddp_run.wandb_records)
    assert len(logged["test/acc"]) == 1 and 0.0 <= logged["test/acc"][0] <= 1.0


# ----------------------------------------------------------------------------- user errors
def _bad_file(tmp: Path, name: str, text: str) -> str:
    path = tmp / name
    path.write_text(text)
    return str(path)


def _error_cases(tmp: Path, data: Path, empty: Path) -> dict[str, tuple[list[str], Path, list[str]]]:
    """name -> (arguments, GAAF_DATA_DIR, substrings the one-line error must contain)."""
    base = str(CONFIGS / "mnist_base.yaml")
    typo = _bad_file(tmp, "typo.yaml", f"defaults: {base}\ntrainer:\n  max_epoch: 3\n")
    _bad_file(tmp, "a.yaml", "defaults: b.yaml\n")
    loop = _bad_file(tmp, "b.yaml", "defaults: a.yaml\n")
    return {
        "unknown_cli_key": (["--config", base, "--trainer.max_epoch", "3"], data, ["--trainer.max_epoch"]),
        "unknown_file_key": (["--config", typo], data, ["trainer", "max_epoch"]),
        "unknown_backbone_arg": (
            ["--config", base, "--model.backbone.init_args.widths", "[3]"],
            data,
            ["backbone", "lightning_gaaf.models.MLP", "'widths' is not accepted"],
        ),
        "unknown_activation": (
            ["--config", base, "--model.backbone.init_args.activation", "swish"],
            data,
            ["activation", "'swish'", "tanh", "leaky_relu"],
        ),
        "missing_dataset": (
            ["--config", base, "--data.download", "false", *TINY],
            empty,
            ["MNIST dataset not found", "data.root", "GAAF_DATA_DIR"],
        ),
        "gpu_unavailable": (["--config", base, "--trainer.accelerator", "gpu"], data, ["accelerator=gpu"]),
        "missing_config": (["--config", str(tmp / "nope.yaml")], data, ["config", "nope.yaml"]),
        "bad_policy_option": (
            ["--config", base, "--gaaf.enabled", "true", "--gaaf.policy", '{"backbone.act*": {"k": 100}}'],
            data,
            ["policy glob 'backbone.act*': unknown option 'k'; allowed: K, shape, shape_kwargs"],
        ),
        "defaults_cycle": (["--config", loop], data, ["defaults", "cycle"]),
    }


ERROR_CASES = [
    "unknown_cli_key",
    "unknown_file_key",
    "unknown_backbone_arg",
    "unknown_activation",
    "missing_dataset",
    "gpu_unavailable",
    "missing_config",
    "bad_policy_option",
    "defaults_cycle",
]


def _assert_one_line_error(err: str, expected: list[str]) -> None:
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.startswith("gaaf-fit: error: ")]
    assert len(lines) == 1, err[-2000:]
    for text in expected:
        assert text in lines[0], (text, lines[0])


@pytest.mark.parametrize("case", ERROR_CASES)
def test_user_error_is_one_line_with_exit_status_2(
    case: str, tmp_path: Path, mnist_dir: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    empty = tmp_path / "empty_data"
    empty.mkdir()
    args, data, expected = _error_cases(tmp_path, mnist_dir, empty)[case]
    for key, value in fit_env(data).items():
        monkeypatch.setenv(key, value)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as exit_info:
        main(args)
    assert exit_info.value.code == 2
    _assert_one_line_error(capsys.readouterr().err, expected)
    # A run that failed before training leaves nothing: no version directory, no W&B run, no runs/.
    assert not (tmp_path / "runs").exists(), sorted(str(p) for p in (tmp_path / "runs").rglob("*"))
    assert not list(tmp_path.rglob("offline-run-*"))


def test_program_exits_2_without_traceback(tmp_path: Path, mnist_dir: Path) -> None:
    """The same errors through the real program: a parse-time one and one raised inside fit."""
    empty = tmp_path / "empty_data"
    empty.mkdir()
    cases = _error_cases(tmp_path, mnist_dir, empty)
    procs = {}
    for name in ("unknown_cli_key", "missing_dataset"):
        args, data, _ = cases[name]
        procs[name] = subprocess.Popen(
            fit_command(*args),
            cwd=tmp_path,
            env=fit_env(data),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
    for name, proc in procs.items():
        out, err = proc.communicate(timeout=240)
        assert proc.returncode == 2, (name, out[-2000:], err[-2000:])
        _assert_one_line_error(err, cases[name][2])


@pytest.mark.realdata
@pytest.mark.slow
def test_real_mnist_gaaf_learns(tmp_path: Path) -> None:
    """A short real-MNIST fit of the paper's GAAF MLP reaches well above chance on the test set."""
    data_dir = os.environ.get("GAAF_DATA_DIR")
    if not data_dir:
        pytest.skip("GAAF_DATA_DIR is not set")
    args = ["--config", str(CONFIGS / "mnist_gaaf.yaml"), "--data.download", "false"]
    args += ["--trainer.max_epochs", "1", "--trainer.limit_train_batches", "60"]
    args += ["--trainer.limit_val_batches", "5", "--trainer.limit_test_batches", "10"]
    args += ["--trainer.enable_progress_bar", "false"]
    # A program of its own: it reads the W&B run that a fresh process's W&B service writes.
    result = run_fit(*args, cwd=tmp_path, env=fit_env(data_dir), timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    logged = history(wandb_records(tmp_path / "runs" / "mnist_gaaf" / "version_0"))
    assert logged["test/acc"][0] > 0.85
