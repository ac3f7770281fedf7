"""MetricsHistory keeps every epoch, also after testing the best checkpoint."""

import json

import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import ModelCheckpoint
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from lightning_gaaf.callbacks import MetricsHistory


class Scored(pl.LightningModule):
    """Logs a validation score that is best at the first epoch."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(4, 2)

    def training_step(self, batch, batch_idx):
        x, y = batch
        return nn.functional.cross_entropy(self.lin(x), y)

    def validation_step(self, batch, batch_idx):
        self.log("val/score", float(-self.current_epoch))

    def test_step(self, batch, batch_idx):
        self.log("test/acc", 0.5)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def test_history_survives_testing_the_best_checkpoint(tmp_path):
    data = DataLoader(TensorDataset(torch.randn(16, 4), torch.randint(0, 2, (16,))), batch_size=8)
    history = MetricsHistory()
    trainer = pl.Trainer(
        default_root_dir=tmp_path,
        max_epochs=3,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[history, ModelCheckpoint(dirpath=tmp_path / "ckpt", monitor="val/score", mode="max")],
    )
    model = Scored()
    trainer.fit(model, data, data)
    trainer.test(model, data, ckpt_path="best")
    saved = json.loads((tmp_path / "stats" / "metrics.json").read_text())
    assert [e["epoch"] for e in saved["epochs"]] == [1, 2, 3]
    assert [e["val/score"] for e in saved["epochs"]] == [0.0, -1.0, -2.0]
    assert [e["step"] for e in saved["epochs"]] == [2, 4, 6]
    assert saved["test"] == {"test/acc": 0.5}

    # A new process resuming from a checkpoint starts from the checkpoint's history.
    resumed = MetricsHistory()
    resumed.load_state_dict(history.state_dict())
    assert [e["epoch"] for e in resumed.epochs] == [1, 2, 3]
