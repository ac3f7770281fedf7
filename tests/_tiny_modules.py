"""Test-only LightningModules that log different validation metrics (gaaf-fit imports them by class path)."""

from __future__ import annotations

import pytorch_lightning as pl
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset


class TinyData(pl.LightningDataModule):
    """64 points in 6 dimensions, two classes."""

    num_classes = 2

    def __init__(self, n: int = 64) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.x = torch.randn(n, 6, generator=g)
        self.y = (self.x.sum(1) > 0).long()

    def train_dataloader(self) -> DataLoader:
        return DataLoader(TensorDataset(self.x, self.y), batch_size=16)

    def val_dataloader(self) -> DataLoader:
        return DataLoader(TensorDataset(self.x, self.y), batch_size=32)


class LogsLoss(pl.LightningModule):
    """Logs ``val/loss`` only; takes no ``num_classes``."""

    def __init__(self, lr: float = 0.5) -> None:
        super().__init__()
        self.lr = lr
        self.net = nn.Sequential(nn.Linear(6, 8), nn.Tanh(), nn.Linear(8, 2))

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = nn.functional.cross_entropy(self.net(x), y)
        self.log("train/loss", loss)
        return loss

    def validation_step(self, batch, batch_idx):
        x, y = batch
        logits = self.net(x)
        self.log("val/loss", nn.functional.cross_entropy(logits, y))
        return logits, y

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=self.lr)


class LogsAcc(LogsLoss):
    """Logs ``val/acc`` and ``val/loss``; takes ``num_classes`` (linked from the data)."""

    def __init__(self, num_classes: int = 10, lr: float = 0.5) -> None:
        super().__init__(lr)
        self.num_classes = num_classes

    def validation_step(self, batch, batch_idx):
        logits, y = super().validation_step(batch, batch_idx)
        self.log("val/acc", (logits.argmax(1) == y).float().mean())


class LogsNothing(LogsLoss):
    """Validates, but logs no validation metric."""

    def validation_step(self, batch, batch_idx):
        return None
