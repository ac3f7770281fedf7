"""Every paper config parses and builds; config composition, overrides and run directories."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest
import torch
import yaml
from _cli_helpers import CONFIGS, EXPERIMENTS, REPO
from pytorch_lightning.callbacks import RichProgressBar
from pytorch_lightning.loggers import WandbLogger
from torch import nn

from lightning_gaaf import GAAFCallback
from lightning_gaaf.callbacks import GradInfoMonitor, GradScaleMonitor, NetVarMonitor, SaturationMonitor
from lightning_gaaf.cli.fit import main
from lightning_gaaf.datamodules import (
    CIFAR10DataModule,
    CIFAR100DataModule,
    FashionMNISTDataModule,
    MNISTDataModule,
    SVHNDataModule,
)
from lightning_gaaf.models import MLP, VGG, CosineAnnealing, SmallCNN
from lightning_gaaf.run.builder import GaafCLI
from lightning_gaaf.run.checkpoints import BEST_RULE, BestCheckpoint
from lightning_gaaf.run.composition import UsageError, config_name, expand_config_args
from lightning_gaaf.run.directory import RUN_DIR_ENV, next_run_dir

EXPECTED = {
    "mnist_base",
    "mnist_dropout",
    "mnist_gaaf",
    *(f"{d}_{v}" for d in ("cifar10", "cifar100", "svhn") for v in ("base", "bn", "gaaf", "bn_gaaf")),
    # Beyond the paper: its SVHN network on Fashion-MNIST, and its MNIST models trained slowly.
    *(f"fashion_mnist_cnn_{v}" for v in ("base", "bn", "gaaf", "bn_gaaf")),
    *(f"mnist_slow_{v}" for v in ("base", "dropout", "gaaf")),
}
DATA = {
    "mnist": MNISTDataModule,
    "cifar10": CIFAR10DataModule,
    "cifar100": CIFAR100DataModule,
    "svhn": SVHNDataModule,
    "fashion": FashionMNISTDataModule,
}


@pytest.fixture
def build(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """Build a GaafCLI (model, data, trainer; nothing is fitted) with its run directory in tmp_path."""
    monkeypatch.delenv(RUN_DIR_ENV, raising=False)
    monkeypatch.delenv("WANDB_MODE", raising=False)

    def _build(*args: str, run_dir: bool = True) -> GaafCLI:
        extra = ["--run_dir", str(tmp_path / "run")] if run_dir else []
        return GaafCLI(args=[*args, *extra])

    return _build


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def test_the_paper_experiments_and_our_variants_exist() -> None:
    assert {p.stem for p in EXPERIMENTS} == EXPECTED


@pytest.mark.parametrize("path", EXPERIMENTS, ids=lambda p: p.stem)
def test_config_is_small_names_its_paper_row_and_builds(path: Path, build, tmp_path: Path) -> None:
    name = path.stem
    dataset = name.split("_")[0]
    lines = path.read_text().splitlines()
    table = 4 if dataset == "mnist" else 5
    slow = name.startswith("mnist_slow")
    if dataset == "fashion":  # not a paper row: our own study of Table 5's question, and it says so
        assert re.match(
            r"# Our study of Paper Table 5's question on Fashion-MNIST \(the paper has no Fashion-MNIST row\), "
            r"\"[^\"]+\": ",
            lines[0],
        ), lines[0]
        assert 'row "' not in lines[0]
    else:
        assert re.match(rf"# Paper Table {table}, \S+ row \"[^\"]+\": ", lines[0]), lines[0]
    assert len(lines) <= 12 and "defaults" in yaml.safe_load(path.read_text())  # shared settings included

    cli = build("--config", str(path))
    model, data, trainer = cli.model, cli.datamodule, cli.trainer
    batch_norm, gaaf = "_bn" in name, "gaaf" in name
    assert type(data) is DATA[dataset]
    assert model.num_classes == data.num_classes
    backbone = model.backbone
    if dataset == "mnist":
        dropout = 0.5 if name.endswith("dropout") else 0.0
        assert n_params(backbone) == n_params(MLP(dropout=dropout))
        assert backbone.act1.__class__ is nn.Tanh
        assert any(isinstance(m, nn.Dropout) and m.p == 0.5 for m in backbone.modules()) == (dropout > 0)
    elif dataset == "svhn":
        assert n_params(backbone) == n_params(SmallCNN(num_classes=10, batch_norm=batch_norm))
    elif dataset == "fashion":
        expected = SmallCNN(num_classes=10, in_channels=1, input_size=28, batch_norm=batch_norm)
        assert n_params(backbone) == n_params(expected)
    else:
        assert n_params(backbone) == n_params(VGG(num_classes=data.num_classes, batch_norm=batch_norm))
    assert any(isinstance(m, nn.BatchNorm2d | nn.BatchNorm1d) for m in backbone.modules()) == batch_norm

    callbacks = trainer.callbacks
    assert isinstance(callbacks[0], GAAFCallback) == gaaf  # surgery runs before any other callback
    assert sum(isinstance(c, GAAFCallback) for c in callbacks) == int(gaaf)
    if gaaf:
        assert callbacks[0].options["K"] == 10000 and callbacks[0].options["shape"] is None
    assert any(isinstance(c, GradInfoMonitor) for c in callbacks)
    assert any(isinstance(c, GradScaleMonitor) for c in callbacks)  # the exploding/vanishing guard
    assert any(isinstance(c, SaturationMonitor) for c in callbacks)
    assert any(isinstance(c, NetVarMonitor) for c in callbacks) == name.endswith("dropout")
    assert isinstance(trainer.progress_bar_callback, RichProgressBar)

    run_dir = tmp_path / "run"
    assert trainer.default_root_dir == str(run_dir)
    ckpt = trainer.checkpoint_callback
    # The best epoch on the first metric of BEST_RULE the model logs (ImageClassifier: val/acc, max),
    # chosen at the first validation.
    assert isinstance(ckpt, BestCheckpoint) and BEST_RULE[0] == ("val/acc", "max")
    assert ckpt.dirpath == str(run_dir / "checkpoints") and ckpt.monitor is None
    logger = trainer.logger
    assert isinstance(logger, WandbLogger)
    assert logger._wandb_init["name"] == name and logger.save_dir == str(run_dir)
    assert logger.name == "lightning-gaaf"  # WandbLogger.name is the project
    assert logger._offline  # WANDB_MODE unset: offline

    model.trainer = trainer
    optim = model.configure_optimizers()
    if dataset == "mnist":
        assert isinstance(optim, torch.optim.SGD)
        assert (optim.defaults["lr"], optim.defaults["momentum"]) == ((0.013, 0.0) if slow else (0.05, 0.9))
    else:
        optimizer, scheduler = optim["optimizer"], optim["lr_scheduler"]["scheduler"]
        # Fashion-MNIST: each variant's rate from the CNN study (test_reproduce_cnn checks which)
        own_rate = dataset == "fashion"
        assert (optimizer.defaults["lr"] == 0.05) != own_rate and optimizer.defaults["weight_decay"] == 5e-4
        assert isinstance(scheduler, CosineAnnealing) and scheduler.max_epochs == trainer.max_epochs


def test_file_overrides_defaults_and_command_line_overrides_both(build) -> None:
    cli = build("--config", str(CONFIGS / "mnist_dropout.yaml"))
    assert cli.model.backbone.drop1.p == 0.5 and cli.trainer.max_epochs == 20
    cli = build(
        "--config",
        str(CONFIGS / "mnist_dropout.yaml"),
        "--model.backbone.init_args.dropout",
        "0.2",
        "--trainer.max_epochs",
        "3",
        "--model.optimizer.init_args.lr",
        "0.3",
        "--gaaf.enabled",
        "true",
        "--gaaf.K",
        "100",
    )
    assert cli.model.backbone.drop1.p == 0.2 and cli.trainer.max_epochs == 3
    assert cli.model.backbone.act1.__class__ is nn.Tanh  # built plain; the callback does the surgery
    assert isinstance(cli.trainer.callbacks[0], GAAFCallback) and cli.trainer.callbacks[0].options["K"] == 100
    cli.model.trainer = cli.trainer
    assert cli.model.configure_optimizers().defaults["lr"] == 0.3


def test_gaaf_policy_from_the_command_line(build, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``--gaaf.policy`` takes the import path of a callable or a glob mapping; both are saved as given."""
    (tmp_path / "my_layer_policies.py").write_text(
        "def first_only(name, module):\n    return {'K': 100} if name == 'backbone.act1' else None\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    gaaf = str(CONFIGS / "mnist_gaaf.yaml")
    cli = build("--config", gaaf, "--gaaf.policy", "my_layer_policies.first_only")
    policy = cli.trainer.callbacks[0].policy
    assert policy.__module__ == "my_layer_policies" and policy("backbone.act2", nn.Tanh()) is None
    assert yaml.safe_load(cli.parser.dump(cli.config))["gaaf"]["policy"] == "my_layer_policies.first_only"

    cli = build("--config", gaaf, "--gaaf.policy", '{"backbone.act1": {"K": 100}, "*": null}')
    policy = cli.trainer.callbacks[0].policy
    assert policy("backbone.act1", nn.Tanh()) == {"K": 100} and policy("backbone.act2", nn.Tanh()) is None
    assert yaml.safe_load(cli.parser.dump(cli.config))["gaaf"]["policy"] == {
        "backbone.act1": {"K": 100},
        "*": None,
    }


def test_cosine_schedule_spans_an_overridden_epoch_budget(build) -> None:
    cli = build("--config", str(CONFIGS / "cifar100_base.yaml"), "--trainer.max_epochs", "5")
    cli.model.trainer = cli.trainer
    assert cli.model.configure_optimizers()["lr_scheduler"]["scheduler"].max_epochs == 5
    assert cli.model.backbone.classifier.out.out_features == 100  # linked from the data


def test_configs_resolve_relative_to_their_file_from_any_cwd(
    build, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    relative = os.path.relpath(CONFIGS / "svhn_bn_gaaf.yaml", elsewhere)
    assert isinstance(build("--config", relative).model.backbone, SmallCNN)
    monkeypatch.chdir(REPO)
    before = set(REPO.glob("runs/mnist_gaaf/*"))
    with pytest.raises(SystemExit) as exit_info:
        main(["--config", "configs/mnist_gaaf.yaml", "--trainer.max_epochs", "2", "--print_config"])
    assert exit_info.value.code == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["gaaf"]["enabled"] is True and printed["trainer"]["max_epochs"] == 2
    assert printed["data"]["class_path"] == "lightning_gaaf.datamodules.MNISTDataModule"
    assert printed["data"]["init_args"]["root"] is None  # GAAF_DATA_DIR, else ./data
    assert set(REPO.glob("runs/mnist_gaaf/*")) == before  # printing the config starts no run


def test_run_directory_defaults_to_next_version_under_runs(
    build, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    first = build("--config", str(CONFIGS / "mnist_base.yaml"), run_dir=False)
    second = build("--config", str(CONFIGS / "mnist_base.yaml"), run_dir=False)
    assert first.run_dir == Path("runs/mnist_base/version_0")
    assert second.run_dir == Path("runs/mnist_base/version_1")
    explicit = build(
        "--config", str(CONFIGS / "mnist_base.yaml"), "--trainer.default_root_dir", "mine", run_dir=False
    )
    assert explicit.run_dir == Path("mine") and explicit.trainer.default_root_dir == "mine"


def test_next_run_dir_and_config_name(tmp_path: Path) -> None:
    (tmp_path / "version_5").mkdir()
    (tmp_path / "other").mkdir()
    assert next_run_dir(tmp_path) == tmp_path / "version_6"
    assert next_run_dir(tmp_path) == tmp_path / "version_7"
    assert next_run_dir(tmp_path / "fresh") == tmp_path / "fresh" / "version_0"

    saved = tmp_path / "mnist_gaaf" / "version_3" / "config.yaml"
    saved.parent.mkdir(parents=True)
    saved.write_text("{}")
    exp = tmp_path / "exp.yaml"
    exp.write_text("{}")
    assert config_name(["--config", str(exp), "--trainer.max_epochs", "1"]) == "exp"
    assert config_name([f"--config={saved}"]) == "mnist_gaaf"  # re-running a saved config keeps its name
    assert config_name(["--trainer.max_epochs", "1"]) == "gaaf-fit"


def test_wandb_is_offline_unless_the_user_chose_a_mode(build, monkeypatch: pytest.MonkeyPatch) -> None:
    assert build("--config", str(CONFIGS / "mnist_base.yaml")).trainer.logger._offline is True
    monkeypatch.setenv("WANDB_MODE", "online")
    assert build("--config", str(CONFIGS / "mnist_base.yaml")).trainer.logger._offline is False
    monkeypatch.delenv("WANDB_MODE")
    # A saved config always holds offline: false (the logger's default); run as written it stays offline.
    cli = build("--config", str(CONFIGS / "mnist_base.yaml"), "--trainer.logger.init_args.offline", "false")
    assert cli.trainer.logger._offline is True


# ----------------------------------------------------------------------------- `defaults` expansion
def _write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def test_defaults_expand_depth_first_relative_to_each_file(tmp_path: Path) -> None:
    b = _write(tmp_path / "b.yaml", "trainer:\n  max_epochs: 1\n")
    d = _write(tmp_path / "d.yaml", "seed_everything: 4\n")
    _write(tmp_path / "sub" / "c.yaml", "defaults: ../d.yaml\ntrainer:\n  max_epochs: 2\n")
    a = _write(tmp_path / "a.yaml", "defaults: [b.yaml, sub/c.yaml]\nseed_everything: 5\n")
    argv = ["--trainer.devices", "1", f"--config={a}", "--trainer.max_epochs", "9"]
    out = expand_config_args(argv)
    assert out[:2] == ["--trainer.devices", "1"] and out[-2:] == ["--trainer.max_epochs", "9"]
    configs = [out[i + 1] for i in range(len(out)) if out[i] == "--config"]
    assert configs[:2] == [str(b), str(d)]
    assert [yaml.safe_load(c) for c in configs[2:]] == [
        {"trainer": {"max_epochs": 2}},
        {"seed_everything": 5},
    ]
    assert expand_config_args(["-c", str(b)]) == ["--config", str(b)]  # no defaults: passed as is
    assert expand_config_args(["--config", "{trainer: {max_epochs: 1}}"]) == [
        "--config",
        "{trainer: {max_epochs: 1}}",
    ]


def test_defaults_errors_name_the_file(tmp_path: Path) -> None:
    missing = _write(tmp_path / "m.yaml", "defaults: [nothere.yaml]\n")
    with pytest.raises(UsageError, match=r"m\.yaml: 'defaults' entry 'nothere.yaml' not found"):
        expand_config_args(["--config", str(missing)])
    _write(tmp_path / "x.yaml", "defaults: y.yaml\n")
    y = _write(tmp_path / "y.yaml", "defaults: x.yaml\n")
    with pytest.raises(UsageError, match="cycle"):
        expand_config_args(["--config", str(y)])
    wrong = _write(tmp_path / "w.yaml", "defaults: {a: 1}\n")
    with pytest.raises(UsageError, match="must be a file path or a list"):
        expand_config_args(["--config", str(wrong)])
    broken = _write(tmp_path / "broken.yaml", "a: [1,\n")
    with pytest.raises(UsageError, match="not valid YAML"):
        expand_config_args(["--config", str(broken)])
