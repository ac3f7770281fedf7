"""A run as one library call: fit_and_test returns its RunResult; the defaults any model gets."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest
import yaml
from _cli_helpers import CONFIGS, TINY, fit_env
from _fit_helpers import fit_in_process

from lightning_gaaf.run import RunResult, fit_and_test

HERE = Path(__file__).resolve().parent
QUICK = ["--trainer.max_epochs", "2", "--trainer.enable_progress_bar", "false"]


@pytest.fixture
def in_tmp(tmp_path: Path, mnist_dir: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Run in ``tmp_path`` with W&B disabled and the tiny MNIST as data."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("WANDB_MODE", "disabled")
    monkeypatch.setenv("GAAF_DATA_DIR", str(mnist_dir))
    monkeypatch.setenv("GAAF_BACKEND", "eager")
    monkeypatch.delenv("GAAF_FIT_RUN_DIR", raising=False)
    return tmp_path


def test_fit_and_test_returns_the_runs_result(in_tmp: Path) -> None:
    result = fit_and_test(["--config", str(CONFIGS / "mnist_gaaf.yaml"), *TINY, "--trainer.max_epochs", "2"])
    assert isinstance(result, RunResult)
    assert result.exit_code == 0 and not result.interrupted and not result.pruned
    assert result.run_dir == in_tmp / "runs" / "mnist_gaaf" / "version_0"
    assert [e["epoch"] for e in result.epochs] == [1, 2]
    assert all(0.0 <= e["val/acc"] <= 1.0 for e in result.epochs)
    assert 0.0 <= result.test["test/acc"] <= 1.0
    best = result.best_epoch("val/acc")
    assert result.best_checkpoint is not None and result.best_checkpoint.is_file()
    assert result.best_checkpoint.name == f"epoch{best['epoch'] - 1:03d}-val_acc{best['val/acc']:.4f}.ckpt"
    assert result.last_checkpoint == result.run_dir / "checkpoints" / "last.ckpt"
    saved = yaml.safe_load((result.run_dir / "config.yaml").read_text())
    # The saved config describes the experiment: no run directory, no W&B folder, id or mode of this run.
    assert saved["run_dir"] is None and saved["trainer"]["default_root_dir"] is None
    wandb = saved["trainer"]["logger"]["init_args"]
    assert wandb["save_dir"] in (None, ".") and wandb["id"] is None and wandb["offline"] is False


def test_trial_callbacks_and_no_test(in_tmp: Path) -> None:
    """Extra callbacks reach the Trainer, not the saved config; ``test=False`` never runs the test set."""
    from pytorch_lightning.callbacks import Callback

    class CountEpochs(Callback):
        epochs = 0

        def on_train_epoch_end(self, trainer, pl_module) -> None:
            CountEpochs.epochs += 1

    result = fit_and_test(["--config", "mnist_base", *TINY], callbacks=[CountEpochs()], test=False)
    assert CountEpochs.epochs == 1 and result.test == {} and len(result.epochs) == 1
    assert "CountEpochs" not in (result.run_dir / "config.yaml").read_text()


@pytest.mark.parametrize(
    ("model", "monitor", "mode"),
    [("LogsAcc", "val/acc", "max"), ("LogsLoss", "val/loss", "min"), ("LogsNothing", None, "min")],
)
def test_any_model_gets_the_defaults_and_a_best_checkpoint_by_the_rule(
    in_tmp: Path, monkeypatch: pytest.MonkeyPatch, model: str, monitor: str | None, mode: str
) -> None:
    """Without a config: the paper configs' monitors, and the best epoch on val/acc, else val/loss, else latest."""
    import torch

    monkeypatch.syspath_prepend(str(HERE))
    # Monitors log on logging steps only (and write nothing they did not record): log every step.
    args = ["--model", f"_tiny_modules.{model}", "--data", "_tiny_modules.TinyData", *QUICK]
    result = fit_and_test([*args, "--trainer.log_every_n_steps", "1"])
    assert result.exit_code == 0
    assert (result.run_dir / "stats" / "grad_info.json").is_file()  # a monitor of configs/defaults/base.yaml
    saved = yaml.safe_load((result.run_dir / "config.yaml").read_text())
    assert saved["gaaf"]["enabled"] is False and "K" in saved["gaaf"]
    if model == "LogsAcc":  # num_classes linked from the data
        assert torch.load(result.best_checkpoint, weights_only=False)["state_dict"] is not None
    state = torch.load(result.last_checkpoint, weights_only=False)["callbacks"]
    (best,) = [v for k, v in state.items() if k.startswith("BestCheckpoint")]
    assert (best["monitor"], best["mode"]) == (monitor, mode)
    if monitor is None:  # the latest epoch
        assert result.best_checkpoint.name == "epoch001.ckpt"
    else:
        chosen = result.best_epoch(monitor, "maximize" if mode == "max" else "minimize")
        assert best["best_model_score"].item() == pytest.approx(chosen[monitor])


def test_num_classes_is_linked_into_models_that_take_it(
    in_tmp: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import torch

    from lightning_gaaf.run.builder import GaafCLI

    monkeypatch.syspath_prepend(str(HERE))
    cli = GaafCLI(["--model", "_tiny_modules.LogsAcc", "--data", "_tiny_modules.TinyData", "--run_dir", "r"])
    assert cli.model.num_classes == 2  # the data's, not the model's default of 10
    cli = GaafCLI(["--config", "mnist_base", "--data.class_path", "lightning_gaaf.datamodules.CIFAR100DataModule",
                   "--model.backbone.init_args.in_features", "3072", "--run_dir", "r2"])  # fmt: skip
    linears = [m for m in cli.model.backbone.modules() if isinstance(m, torch.nn.Linear)]
    assert cli.model.num_classes == 100 and linears[-1].out_features == 100  # model and backbone


def test_a_model_next_to_the_command_is_importable(
    tmp_path: Path, mnist_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``gaaf-fit --model mymod.MyModel`` beside mymod.py works as for a script (cwd importable)."""
    (tmp_path / "mymod.py").write_text((HERE / "_tiny_modules.py").read_text())
    # Like the console script: the program's own folder, not the current directory, is on sys.path.
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p not in ("", ".", str(tmp_path))])
    env = fit_env(mnist_dir, WANDB_MODE="disabled")
    try:
        result = fit_in_process(
            "--model", "mymod.LogsAcc", "--data", "mymod.TinyData", *QUICK, "--trainer.max_epochs", "1",
            cwd=tmp_path, env=env,
        )  # fmt: skip
    finally:
        sys.modules.pop("mymod", None)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "No module named" not in result.stderr


def test_config_help_shows_the_configs_values_and_describes_every_gaaf_option(
    capsys: pytest.CaptureFixture[str],
) -> None:
    from lightning_gaaf.cli.fit import main

    with pytest.raises(SystemExit) as exc:
        main(["--help"])
    assert exc.value.code == 0
    plain = capsys.readouterr().out
    with pytest.raises(SystemExit) as exc:
        main(["--config", "mnist_gaaf", "--help"])
    assert exc.value.code == 0
    configured = capsys.readouterr().out
    assert plain != configured
    entries = {}
    for entry in re.split(r"\n  (?=--)", configured):
        text = " ".join(entry.split())
        match = re.match(r"--gaaf\.(\w+) \S+ (.*)", text)
        if match and match.group(1) != "help":
            entries[match.group(1)] = match.group(2)
    assert {"enabled", "targets", "K", "shape", "shape_kwargs", "functional", "policy"} <= set(entries)
    assert (
        "default: True" in entries["enabled"]
        and "default: True" not in plain.split("--gaaf.enabled {")[-1][:200]
    )
    for name, text in entries.items():  # every option says what it does, beyond its type and default
        assert re.sub(r"\(type:.*", "", text).strip(), name

    def default(help_text: str, option: str) -> str:
        """The ``default: ...`` of ``option``'s entry (``--model CONFIG | ...``), on one line."""
        entry = next(e for e in re.split(r"\n  (?=--)", help_text) if e.startswith(f"{option} CONFIG"))
        return " ".join(entry.split()).split("default: ", 1)[1]

    # The model with its backbone and optimizer, and the DataModule, as the config gives them.
    model, data = default(configured, "--model"), default(configured, "--data")
    for value in ("'lightning_gaaf.models.MLP'", "'hidden': [512, 256, 256]", "'activation': 'tanh'",
                  "'torch.optim.SGD'", "'lr': 0.05", "'momentum': 0.9"):  # fmt: skip
        assert value in model, (value, model)
    assert "'lightning_gaaf.datamodules.MNISTDataModule'" in data and "'batch_size': 128" in data, data
    assert "MLP" not in default(plain, "--model") and default(plain, "--data").startswith("null")


# ----------------------------------------------------------------------------- library changes
def test_model_checkpoint_keeps_its_last_saved_step() -> None:
    """LastCheckpoint sets ModelCheckpoint's private ``_last_global_step_saved`` (no public way): it must
    still exist and still be what ModelCheckpoint checks before saving an epoch's checkpoint."""
    import inspect

    from pytorch_lightning.callbacks import ModelCheckpoint

    assert ModelCheckpoint()._last_global_step_saved == 0
    assert "self._last_global_step_saved == trainer.global_step" in inspect.getsource(ModelCheckpoint)


def test_optuna_trial_constructor_reaches_a_running_trial() -> None:
    """StoredTrialPruning builds ``optuna.trial.Trial(study, trial_id)`` (documented, "not recommended"):
    it must still report into the running trial that the storage names."""
    import optuna

    storage = optuna.storages.InMemoryStorage()
    study = optuna.create_study(storage=storage, study_name="s")
    asked = study.ask()
    study_id = storage.get_study_id_from_name("s")
    trial_id = storage.get_trial_id_from_study_id_trial_number(study_id, asked.number)
    trial = optuna.trial.Trial(study, trial_id)
    trial.report(0.25, step=0)
    assert trial.number == asked.number
    assert study.get_trials()[0].intermediate_values == {0: 0.25}
