"""GAAFCallback on LightningModules that never heard of GAAF."""

import pytest
import pytorch_lightning as pl
import torch
import yaml
from pytorch_lightning.cli import LightningCLI
from pytorch_lightning.demos.boring_classes import BoringDataModule, DemoModel
from pytorch_lightning.loggers import CSVLogger
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from lightning_gaaf import GAAF, GAAFCallback


class PlainClassifier(pl.LightningModule):
    """A small tanh MLP written without any knowledge of GAAF."""

    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(10, 16), nn.Tanh(), nn.Linear(16, 16), nn.Tanh(), nn.Linear(16, 3))

    def forward(self, x):
        return self.net(x)

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = nn.functional.cross_entropy(self(x), y)
        self.log("train/loss", loss)
        return loss

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def loader() -> DataLoader:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(64, 10, generator=g) * 3
    y = torch.randint(0, 3, (64,), generator=g)
    return DataLoader(TensorDataset(x, y), batch_size=16)


def trainer(tmp_path, callbacks, **kwargs) -> pl.Trainer:
    return pl.Trainer(
        default_root_dir=tmp_path,
        accelerator="cpu",
        callbacks=callbacks,
        logger=CSVLogger(tmp_path, name="csv"),
        enable_progress_bar=False,
        enable_model_summary=False,
        **kwargs,
    )


def test_fit_applies_surgery_before_optimizers_and_logs_the_report(tmp_path):
    pl.seed_everything(0)
    model = PlainClassifier()
    callback = GAAFCallback(shape="gauss", shape_kwargs={"c": 2.0})
    t = trainer(tmp_path, [callback], max_steps=4)
    t.fit(model, train_dataloaders=loader())
    assert isinstance(model.net[1], GAAF) and isinstance(model.net[3], GAAF)
    assert repr(model.net[1]) == "GAAF(Tanh, shape=gauss(c=2.0), K=10000)"
    assert callback.report is not None and callback.report.count == 2
    optimizer_params = {id(p) for group in t.optimizers[0].param_groups for p in group["params"]}
    assert optimizer_params == {id(p) for p in model.parameters()}
    hparams = yaml.safe_load((tmp_path / "csv" / "version_0" / "hparams.yaml").read_text())
    assert hparams["gaaf/replaced"] == 2
    assert hparams["gaaf/modules"] == ["net.1", "net.3"]
    assert hparams["gaaf/shapes"] == ["gauss(c=2.0)"]
    assert torch.isfinite(t.callback_metrics["train/loss"])


def test_training_with_gaaf_differs_from_plain_training(tmp_path):
    """The callback really changes the backward pass (same seed, same data)."""
    weights = []
    for callbacks in ([], [GAAFCallback()]):
        pl.seed_everything(0)
        model = PlainClassifier()
        trainer(tmp_path, callbacks, max_steps=4).fit(model, train_dataloaders=loader())
        weights.append(model.net[0].weight.detach().clone())
    assert not torch.allclose(weights[0], weights[1])


def test_functional_option_on_a_module_with_torch_relu(tmp_path):
    model = DemoModel()
    callback = GAAFCallback(functional=True)
    dm = BoringDataModule()
    trainer(tmp_path, [callback], max_steps=2, limit_val_batches=0).fit(model, datamodule=dm)
    assert callback.report.functional == ["relu"]
    assert isinstance(model.gaaf_relu, GAAF)


def test_resume_from_checkpoint_gives_the_same_model(tmp_path):
    pl.seed_everything(0)
    model = PlainClassifier()
    t = trainer(tmp_path, [GAAFCallback()], max_steps=3)
    t.fit(model, train_dataloaders=loader())
    ckpt = tmp_path / "gaaf.ckpt"
    t.save_checkpoint(ckpt)
    state = {k: v.clone() for k, v in model.state_dict().items()}

    resumed = PlainClassifier()
    t2 = trainer(tmp_path, [GAAFCallback()], max_steps=3)
    t2.fit(resumed, train_dataloaders=loader(), ckpt_path=ckpt)
    assert t2.global_step == 3
    assert repr(resumed) == repr(model)
    for key, value in resumed.state_dict().items():
        assert torch.equal(value, state[key]), key
    # A plain model loads the GAAF checkpoint directly (identical state_dict keys).
    plain = PlainClassifier()
    plain.load_state_dict(torch.load(ckpt, weights_only=False)["state_dict"])


def test_usable_from_a_lightning_cli_config(tmp_path):
    config = {
        "trainer": {
            "callbacks": [
                {
                    "class_path": "lightning_gaaf.GAAFCallback",
                    "init_args": {
                        "K": 5000,
                        "shape": "shifted_sigmoid",
                        "shape_kwargs": {"a": 2.0, "b": 0.5},
                    },
                }
            ],
            "max_steps": 1,
            "logger": False,
            "enable_progress_bar": False,
            "default_root_dir": str(tmp_path),
        },
        "model": {"learning_rate": 0.01},
    }
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    cli = LightningCLI(DemoModel, BoringDataModule, run=False, args=["--config", str(path)])
    (callback,) = [c for c in cli.trainer.callbacks if isinstance(c, GAAFCallback)]
    assert callback.options["K"] == 5000 and callback.options["shape_kwargs"] == {"a": 2.0, "b": 0.5}
    assert callback.options["functional"] is False


def test_policy_mapping_gives_each_layer_its_options(tmp_path):
    pl.seed_everything(0)
    model = PlainClassifier()
    callback = GAAFCallback(K=5000, policy={"net.3": None, "net.*": {"K": 100, "shape": "one"}})
    trainer(tmp_path, [callback], max_steps=2).fit(model, train_dataloaders=loader())
    assert repr(model.net[1]) == "GAAF(Tanh, shape=one(), K=100)"
    assert type(model.net[3]) is nn.Tanh  # the first matching glob maps it to None
    assert callback.report.skipped["net.3"] == "the policy returned None"
    hparams = yaml.safe_load((tmp_path / "csv" / "version_0" / "hparams.yaml").read_text())
    assert hparams["gaaf/modules"] == ["net.1"] and hparams["gaaf/shapes"] == ["one()"]


def layer_policy(name, module):
    """A policy named by its import path in the config below."""
    return {"K": 100} if name == "net.1" else None


@pytest.mark.parametrize(
    "policy",
    [{"net.1": {"K": 100}, "*": None}, "test_gaaf_callback.layer_policy"],
    ids=["mapping", "import path"],
)
def test_policy_from_a_lightning_cli_config(tmp_path, policy):
    config = {
        "trainer": {
            "callbacks": [{"class_path": "lightning_gaaf.GAAFCallback", "init_args": {"policy": policy}}],
            "logger": False,
            "enable_progress_bar": False,
            "default_root_dir": str(tmp_path),
        },
    }
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    cli = LightningCLI(DemoModel, BoringDataModule, run=False, args=["--config", str(path)])
    (callback,) = [c for c in cli.trainer.callbacks if isinstance(c, GAAFCallback)]
    assert callback.policy("net.1", nn.Tanh()) == {"K": 100}
    assert callback.policy("net.3", nn.Tanh()) is None


def test_bad_options_fail_at_construction():
    with pytest.raises(ValueError, match="unknown shape 'gaus'"):
        GAAFCallback(shape="gaus")
    with pytest.raises(ValueError, match="K must be a positive"):
        GAAFCallback(K=-1)
    with pytest.raises(ValueError, match="unknown target 'relux'"):
        GAAFCallback(targets=["relux"])
    with pytest.raises(
        ValueError, match=r"^policy glob 'net\.\*': unknown option 'k'; allowed: K, shape, shape_kwargs$"
    ):
        GAAFCallback(policy={"net.1": None, "net.*": {"k": 100}})
    with pytest.raises(ValueError, match=r"^policy glob 'net\.1': GAAF: unknown shape 'gaus'"):
        GAAFCallback(policy={"net.1": {"shape": "gaus"}})
