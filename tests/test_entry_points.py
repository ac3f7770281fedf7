"""Where users come in: bundled configs by name, their own LightningModule, any Lightning logger.

gaaf-fit runs in this process (``_fit_helpers.fit_in_process``); the logger test reads the shared
``reference_run``.
"""

from __future__ import annotations

import csv
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import tomllib
import torch
import yaml
from _cli_helpers import REPO, TINY, fit_env, history, wandb_records
from _fit_helpers import ReferenceRun, fit_in_process

from lightning_gaaf.cli.fit import main
from lightning_gaaf.run.bundled import ConfigNotFoundError, bundled_configs, configs_dir, resolve_config

PAPER_CONFIGS = 15

#: A LightningModule and a DataModule that exist only in this test: gaaf-fit imports them by class path.
USER_MODULE = """
import pytorch_lightning as pl
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset


class TinyData(pl.LightningDataModule):
    def __init__(self, n: int = 64, features: int = 6):
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.x = torch.randn(n, features, generator=g)
        self.y = (self.x.sum(1) > 0).long()

    def train_dataloader(self):
        return DataLoader(TensorDataset(self.x, self.y), batch_size=16, shuffle=True)

    def val_dataloader(self):
        return DataLoader(TensorDataset(self.x, self.y), batch_size=32)


class TinyModule(pl.LightningModule):
    def __init__(self, hidden: int = 8, lr: float = 0.1, fail_at_step: int = -1):
        super().__init__()
        self.save_hyperparameters()
        self.net = nn.Sequential(nn.Linear(6, hidden), nn.Tanh(), nn.Linear(hidden, 2))

    def training_step(self, batch, batch_idx):
        if self.global_step == self.hparams.fail_at_step:
            raise ValueError("deliberate failure inside training_step")
        x, y = batch
        loss = nn.functional.cross_entropy(self.net(x), y)
        self.log("train/loss", loss)
        return loss

    def validation_step(self, batch, batch_idx):
        x, y = batch
        self.log("val/loss", nn.functional.cross_entropy(self.net(x), y))

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=self.hparams.lr)
"""

QUICK = ["--trainer.max_epochs", "1", "--trainer.enable_progress_bar", "false"]


@pytest.fixture
def user_env(tmp_path: Path, mnist_dir: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, str]]:
    """A gaaf-fit environment in which ``usermods`` (the module above) is importable: on ``sys.path``
    for gaaf-fit in this process; afterwards the import is forgotten, as a program's would be."""
    (tmp_path / "usermods.py").write_text(USER_MODULE)
    monkeypatch.syspath_prepend(str(tmp_path))
    yield fit_env(mnist_dir)
    sys.modules.pop("usermods", None)


# ----------------------------------------------------------------------------- bundled configs
def test_every_paper_config_is_bundled_and_found_by_name(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)  # not the checkout: names must not depend on the working directory
    configs = bundled_configs()
    assert len(configs) >= PAPER_CONFIGS
    assert (configs_dir() / "defaults" / "base.yaml").is_file()
    for config in configs:
        assert config.description.startswith("Paper Table") or config.description, config
        assert resolve_config(config.name) == config.path == resolve_config(f"{config.name}.yaml")
        assert resolve_config(f"configs/{config.name}.yaml") == config.path
    # A file that exists wins over the bundled config of the same name.
    own = tmp_path / "mnist_gaaf.yaml"
    own.write_text("trainer: {max_epochs: 1}\n")
    assert resolve_config("mnist_gaaf.yaml") == Path("mnist_gaaf.yaml")
    with pytest.raises(ConfigNotFoundError, match=r"'mnist_gaf': no such file.*bundled: .*mnist_gaaf"):
        resolve_config("mnist_gaf")


def test_list_configs_prints_names_with_their_paper_rows(capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["--list-configs"])
    assert exit_info.value.code == 0
    lines = capsys.readouterr().out.splitlines()
    rows = {line.split()[0]: line for line in lines}
    assert "cifar100_bn_gaaf" in rows and "Table 5" in rows["cifar100_bn_gaaf"]
    assert "mnist_dropout" in rows and "Table 4" in rows["mnist_dropout"]
    assert len(rows) == len(bundled_configs())


def test_unknown_config_name_lists_the_bundled_ones(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as exit_info:
        main(["--config", "cifar100_bn_gaf.yaml"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("gaaf-fit: error: config 'cifar100_bn_gaf.yaml'")
    assert "cifar100_bn_gaaf" in err[0]
    assert not (tmp_path / "runs").exists()


def test_setuptools_lists_every_subpackage() -> None:
    """The wheel's packages are listed by hand (configs/ is mapped in): a new subpackage must be listed."""
    listed = set(tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    on_disk = {
        ".".join(init.parent.relative_to(REPO).parts)
        for init in (REPO / "lightning_gaaf").rglob("__init__.py")
    }
    assert on_disk | {"lightning_gaaf.configs"} == listed


# ----------------------------------------------------------------------------- any LightningModule
def test_user_lightning_module_from_command_line_and_yaml(tmp_path: Path, user_env: dict[str, str]) -> None:
    args = ["--model", "usermods.TinyModule", "--data", "usermods.TinyData", "--gaaf.enabled", "true"]
    result = fit_in_process(*args, "--model.hidden", "5", *QUICK, cwd=tmp_path, env=user_env)
    assert result.returncode == 0, result.stderr[-3000:]
    run_dir = tmp_path / "runs" / "gaaf-fit" / "version_0"
    ckpt = torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    gaaf_state = next(v for k, v in ckpt["callbacks"].items() if k.startswith("GAAFCallback"))
    assert gaaf_state["modules"] == ["net.1"]  # the test's own Tanh went through surgery
    assert ckpt["state_dict"]["net.0.weight"].shape == (5, 6)
    saved = yaml.safe_load((run_dir / "config.yaml").read_text())
    assert saved["model"]["class_path"] == "usermods.TinyModule"
    assert "no test: the model has no test_step" in result.stderr + result.stdout

    # The same through a YAML file; the saved config of the first run re-runs as it is.
    config = tmp_path / "mine.yaml"
    config.write_text(
        "model:\n  class_path: usermods.TinyModule\n  init_args: {hidden: 3}\n"
        "data: {class_path: usermods.TinyData}\ngaaf: {enabled: true}\n"
    )
    for rerun, expected_hidden in ((config, 3), (run_dir / "config.yaml", 5)):
        result = fit_in_process("--config", str(rerun), *QUICK, cwd=tmp_path, env=user_env)
        assert result.returncode == 0, result.stderr[-3000:]
        name = "mine" if rerun == config else "gaaf-fit"
        last = sorted((tmp_path / "runs" / name).glob("version_*"))[-1] / "checkpoints" / "last.ckpt"
        state = torch.load(last, map_location="cpu", weights_only=False)["state_dict"]
        assert state["net.0.weight"].shape == (expected_hidden, 6)


def test_internal_error_keeps_its_traceback(tmp_path: Path, user_env: dict[str, str]) -> None:
    args = ["--model", "usermods.TinyModule", "--data", "usermods.TinyData", "--model.fail_at_step", "2"]
    result = fit_in_process(*args, *QUICK, cwd=tmp_path, env=user_env, wandb=True)
    assert result.returncode == 1, result.stderr[-3000:]
    assert "Traceback (most recent call last)" in result.stderr
    assert "ValueError: deliberate failure inside training_step" in result.stderr
    assert "gaaf-fit: error:" not in result.stderr
    # Two steps were trained: the run is kept (with its W&B run, marked failed).
    run_dir = tmp_path / "runs" / "gaaf-fit" / "version_0"
    records = wandb_records(run_dir)
    exits = [r["exit"]["exit_code"] for r in records if r.get("type") == "exit"]
    assert exits == [1]


def test_failure_before_the_first_step_leaves_nothing(tmp_path: Path, user_env: dict[str, str]) -> None:
    args = ["--model", "usermods.TinyModule", "--data", "usermods.TinyData", "--model.fail_at_step", "0"]
    result = fit_in_process(*args, *QUICK, cwd=tmp_path, env=user_env, wandb=True)
    assert result.returncode == 1 and "deliberate failure" in result.stderr
    assert not (tmp_path / "runs").exists()
    assert not list(tmp_path.rglob("offline-run-*"))


def test_runs_folder_ignores_itself_for_git(tmp_path: Path, user_env: dict[str, str]) -> None:
    result = fit_in_process(
        "--model", "usermods.TinyModule", "--data", "usermods.TinyData", *QUICK, cwd=tmp_path, env=user_env
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert (tmp_path / "runs" / ".gitignore").read_text().splitlines()[-1] == "*"


# ----------------------------------------------------------------------------- loggers
def _csv_rows(root: Path) -> list[dict[str, str]]:
    files = sorted(root.rglob("metrics.csv"))
    assert len(files) == 1, files
    with files[0].open() as handle:
        return list(csv.DictReader(handle))


def _tensorboard_scalars(root: Path) -> dict[str, list[float]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = sorted(root.rglob("events.out.tfevents.*"))
    assert events, f"no TensorBoard event file under {root}"
    accumulator = EventAccumulator(str(events[0].parent), size_guidance={"scalars": 0})
    accumulator.Reload()
    return {tag: [e.value for e in accumulator.Scalars(tag)] for tag in accumulator.Tags()["scalars"]}


def _mlflow_metrics(database: Path) -> dict[str, list[float]]:
    """Every metric history of the single MLflow run in a local SQLite store (MLflow's own client reads it).

    MLflow 3 keeps its plain-file store in maintenance mode and refuses it by default; SQLite is the
    local store it recommends.
    """
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{database}")
    experiment = client.get_experiment_by_name("gaaf")
    runs = client.search_runs([experiment.experiment_id])
    assert len(runs) == 1, runs
    run = runs[0]
    return {
        key: [m.value for m in sorted(client.get_metric_history(run.info.run_id, key), key=lambda m: m.step)]
        for key in run.data.metrics
    }


@pytest.mark.slow
def test_every_logger_gets_the_scalars_and_the_config_reruns(
    reference_run: ReferenceRun, tmp_path: Path, mnist_dir: Path
) -> None:
    """The shared reference run logs to W&B, CSV, TensorBoard and MLflow (``_fit_helpers.ALL_LOGGERS_YAML``)."""
    run_dir, cwd = reference_run.run_dir, reference_run.cwd

    wandb = history(wandb_records(run_dir))
    rows = _csv_rows(cwd / "csv")
    csv_values = {key: [float(r[key]) for r in rows if r.get(key)] for key in rows[0]}
    board = _tensorboard_scalars(cwd / "tb")
    mlflow = _mlflow_metrics(cwd / "mlflow.db")
    for key in ("train/loss", "val/acc", "test/acc", "gaaf/grad_info/backbone.fc1"):
        expected = wandb[key]
        assert expected, key
        for name, logged in (("csv", csv_values), ("tensorboard", board), ("mlflow", mlflow)):
            assert logged.get(key) == pytest.approx(expected, rel=1e-5), (
                name,
                key,
                logged.get(key),
                expected,
            )

    # The saved config names every logger with its own save_dir and runs again as it is (elsewhere:
    # the reference run is shared and stays as it is).
    saved = yaml.safe_load((run_dir / "config.yaml").read_text())
    kinds = [entry["class_path"].rsplit(".", 1)[1] for entry in saved["trainer"]["logger"]]
    assert kinds == ["WandbLogger", "CSVLogger", "TensorBoardLogger", "MLFlowLogger"]
    assert saved["trainer"]["logger"][1]["init_args"]["save_dir"] == "csv"
    # The W&B folder gaaf-fit chose (the run directory) is not saved: WandbLogger's own default is.
    assert saved["trainer"]["logger"][0]["init_args"]["save_dir"] == "."
    again = fit_in_process(
        "--config", str(run_dir / "config.yaml"), cwd=tmp_path, env=fit_env(mnist_dir), wandb=True
    )
    assert again.returncode == 0, again.stderr[-3000:]
    assert len(_csv_rows(tmp_path / "csv" / "version_0")) > 0
    assert (tmp_path / "runs" / "mnist_gaaf" / "version_0" / "wandb").is_dir()
    # MLflow's records of this rerun are not read: MLflow keeps one store per tracking URI and process,
    # so the relative "sqlite:///mlflow.db" still points at the reference run's database here (the
    # reference run's MLflow records are checked above).


def test_csv_logger_alone(tmp_path: Path, mnist_dir: Path) -> None:
    args = ["--config", "mnist_base", *TINY, "--trainer.logger", "pytorch_lightning.loggers.CSVLogger"]
    args += ["--trainer.logger.save_dir", "csv"]
    # W&B on as in a program run: the check that no offline W&B run is made could not fail without it.
    result = fit_in_process(*args, cwd=tmp_path, env=fit_env(mnist_dir), wandb=True)
    assert result.returncode == 0, result.stderr[-3000:]
    rows = _csv_rows(tmp_path / "csv")
    assert any(r.get("test/acc") for r in rows) and any(r.get("val/acc") for r in rows)
    assert not list(tmp_path.rglob("offline-run-*"))  # the user's logger replaced the default W&B one
