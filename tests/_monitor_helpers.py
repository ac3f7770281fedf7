"""Tiny models, data and trainers for the monitor tests; also a script for the multi-process check.

As a script: ``python tests/_monitor_helpers.py OUT_DIR DEVICES BATCH_SIZE`` fits the tiny MLP
with every monitor (DDP over ``DEVICES`` CPU processes when > 1), tests it and leaves the
statistics in ``OUT_DIR/stats``.
"""

from __future__ import annotations

import os
import sys
import warnings
from pathlib import Path

os.environ.setdefault("GAAF_BACKEND", "eager")

import pytorch_lightning as pl  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch import nn  # noqa: E402
from torch.utils.data import DataLoader, DistributedSampler, TensorDataset  # noqa: E402

warnings.filterwarnings("ignore", ".*does not have many workers.*")
warnings.filterwarnings("ignore", ".*GPU available but not used.*")
warnings.filterwarnings("ignore", ".*is a bit too small.*")


def mlp(dim: int = 6, hidden: tuple[int, ...] = (8, 8), classes: int = 3, act=nn.Tanh, dropout: float = 0.0):
    """Linear -> act (-> Dropout) per hidden layer, then a Linear head: an nn.Sequential."""
    layers: list[nn.Module] = []
    width = dim
    for h in hidden:
        layers += [nn.Linear(width, h), act()]
        if dropout:
            layers.append(nn.Dropout(dropout))
        width = h
    layers.append(nn.Linear(width, classes))
    return nn.Sequential(*layers)


class TinyModule(pl.LightningModule):
    """Classifier around any backbone; ``self.backbone`` gives names like ``backbone.1``."""

    def __init__(self, backbone: nn.Module, lr: float = 0.1) -> None:
        super().__init__()
        self.backbone = backbone
        self.lr = lr

    def forward(self, x):
        return self.backbone(x)

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = F.cross_entropy(self(x), y)
        self.log("train/loss", loss)
        return loss

    def validation_step(self, batch, batch_idx):
        x, y = batch
        self.log("val/loss", F.cross_entropy(self(x), y))

    def test_step(self, batch, batch_idx):
        x, y = batch
        self.log("test/loss", F.cross_entropy(self(x), y))

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=self.lr)


class TinyData(pl.LightningDataModule):
    """Deterministic Gaussian data. On the device every batch is multiplied by ``scale`` (like
    normalisation) and training batches also get ``+ train_shift`` (like augmentation)."""

    def __init__(
        self,
        n_train: int = 64,
        n_test: int = 40,
        dim: int = 6,
        classes: int = 3,
        batch_size: int = 8,
        scale: float = 1.0,
        train_shift: float = 0.0,
        seed: int = 0,
    ) -> None:
        super().__init__()
        self.n_train, self.n_test, self.dim, self.classes = n_train, n_test, dim, classes
        self.batch_size, self.scale, self.train_shift, self.seed = batch_size, scale, train_shift, seed
        self.test_setups = 0
        g = torch.Generator().manual_seed(seed)
        self.x_train = torch.randn(n_train, dim, generator=g)
        self.y_train = torch.randint(0, classes, (n_train,), generator=g)
        self.x_test = torch.randn(n_test, dim, generator=g) * 2
        self.y_test = torch.randint(0, classes, (n_test,), generator=g)
        self.test_set: TensorDataset | None = None

    def setup(self, stage: str | None = None) -> None:
        if stage in (None, "test"):
            self.test_setups += 1
            self.test_set = TensorDataset(self.x_test, self.y_test)

    def train_dataloader(self):
        data = TensorDataset(self.x_train, self.y_train)
        sampler = None
        if self.trainer is not None and self.trainer.world_size > 1:
            # Lightning would inject a *shuffling* sampler; this one gives rank r samples r, r+W, ...
            sampler = DistributedSampler(
                data, num_replicas=self.trainer.world_size, rank=self.trainer.global_rank, shuffle=False
            )
        return DataLoader(data, batch_size=self.batch_size, shuffle=False, sampler=sampler)

    def val_dataloader(self):
        return DataLoader(TensorDataset(self.x_test[:16], self.y_test[:16]), batch_size=self.batch_size)

    def test_dataloader(self):
        if self.test_set is None:
            raise RuntimeError("setup('test') must run before test_dataloader()")
        return DataLoader(self.test_set, batch_size=self.batch_size)

    def on_after_batch_transfer(self, batch, dataloader_idx):
        x, y = batch
        x = x * self.scale
        if self.trainer is not None and self.trainer.training:
            x = x + self.train_shift
        return x, y


def trainer(root: Path, callbacks, max_steps: int = 4, logger=False, **kwargs) -> pl.Trainer:
    """A quiet CPU trainer whose run directory is ``root``."""
    options = dict(
        accelerator="cpu",
        devices=1,
        max_steps=max_steps,
        logger=logger,
        callbacks=callbacks,
        default_root_dir=str(root),
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=0,
        num_sanity_val_steps=0,
        log_every_n_steps=1,
    )
    options.update(kwargs)
    return pl.Trainer(**options)


def monitors():
    from lightning_gaaf.callbacks import (
        GradInfoMonitor,
        NetVarMonitor,
        NodeCorrelationMonitor,
        SaturationMonitor,
        WeightHistMonitor,
    )

    return [
        GradInfoMonitor(log_every_n_steps=1),
        SaturationMonitor(log_every_n_steps=1, bins=20, value_range=(-3, 3)),
        NetVarMonitor(log_every_n_steps=2, repeats=4),
        NodeCorrelationMonitor(),
        WeightHistMonitor(bins=16),
    ]


def main(out: str, devices: int, batch_size: int) -> None:
    pl.seed_everything(0, verbose=False)
    model = TinyModule(mlp(dim=6, hidden=(8, 8)))
    data = TinyData(batch_size=batch_size)
    strategy = "ddp" if devices > 1 else "auto"
    fit = trainer(Path(out), monitors(), max_steps=3, devices=devices, strategy=strategy)
    fit.fit(model, datamodule=data)
    fit.test(model, datamodule=data)  # the test-set statistics come from Lightning's test loop


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]))
