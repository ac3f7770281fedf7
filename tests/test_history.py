"""MetricsMonitor keeps every epoch with its own values, also after testing the best checkpoint."""

import json

import pytest
import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import ModelCheckpoint
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from lightning_gaaf.callbacks import MetricsMonitor
from lightning_gaaf.stats import SCHEMA_VERSION, read_stats


class Scored(pl.LightningModule):
    """Logs a validation score that is best at the first epoch, and ``train/acc`` in its own
    ``on_train_epoch_end`` (after the callbacks' hook), with a value known per epoch."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(4, 2)

    def training_step(self, batch, batch_idx):
        x, y = batch
        return nn.functional.cross_entropy(self.lin(x), y)

    def on_train_epoch_end(self):
        self.log("train/acc", 0.1 * (self.current_epoch + 1))

    def validation_step(self, batch, batch_idx):
        self.log("val/score", float(-self.current_epoch))

    def test_step(self, batch, batch_idx):
        self.log("test/acc", 0.5)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def loader():
    return DataLoader(TensorDataset(torch.randn(16, 4), torch.randint(0, 2, (16,))), batch_size=8)


def fit_trainer(root, history, max_epochs, **kwargs):
    return pl.Trainer(
        default_root_dir=root,
        max_epochs=max_epochs,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[
            history,
            ModelCheckpoint(dirpath=root / "ckpt", monitor="val/score", mode="max", save_last=True),
        ],
        **kwargs,
    )


def test_every_epoch_has_its_own_values_and_survives_testing_the_best_checkpoint(tmp_path):
    history = MetricsMonitor()
    trainer = fit_trainer(tmp_path, history, max_epochs=3)
    model = Scored()
    trainer.fit(model, loader(), loader())
    trainer.test(model, loader(), ckpt_path="best")
    saved = json.loads((tmp_path / "stats" / "metrics.json").read_text())
    assert [e["epoch"] for e in saved["epochs"]] == [1, 2, 3]
    assert [e["train/acc"] for e in saved["epochs"]] == pytest.approx([0.1, 0.2, 0.3])
    assert [e["val/score"] for e in saved["epochs"]] == [0.0, -1.0, -2.0]
    assert [e["step"] for e in saved["epochs"]] == [2, 4, 6]
    assert saved["test"] == {"test/acc": 0.5}
    assert saved["schema_version"] == SCHEMA_VERSION and saved["partial"] is False
    assert (tmp_path / "report" / "metrics.png").is_file()


def test_resuming_from_the_last_checkpoint_keeps_every_epoch_once(tmp_path):
    first = MetricsMonitor()
    fit_trainer(tmp_path, first, max_epochs=2).fit(Scored(), loader(), loader())
    resumed = MetricsMonitor()
    fit_trainer(tmp_path, resumed, max_epochs=4).fit(
        Scored(), loader(), loader(), ckpt_path=tmp_path / "ckpt" / "last.ckpt"
    )
    stats = read_stats(tmp_path / "stats" / "metrics.json")
    assert [e["epoch"] for e in stats["epochs"]] == [1, 2, 3, 4]
    assert [e["train/acc"] for e in stats["epochs"]] == pytest.approx([0.1, 0.2, 0.3, 0.4])
    assert [e["val/score"] for e in stats["epochs"]] == [0.0, -1.0, -2.0, -3.0]
