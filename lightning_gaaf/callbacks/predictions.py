"""TestPredictions: the predicted label of every test image, for paired tests over images."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch
from typing_extensions import override

from lightning_gaaf.callbacks._base import run_directory

__all__ = ["FILENAME", "TestPredictions"]

FILENAME = "test_predictions.npz"


class TestPredictions(pl.Callback):
    """Write ``<run_dir>/stats/test_predictions.npz``: arrays ``pred`` and ``label``, one entry per
    test image in the test loader's order, after every test run (the file holds the last one).

    Two runs on the same test split can then be compared image by image (McNemar's test, a
    bootstrap over images). Predictions are the ``test_step`` output when it is a tensor of labels
    or logits, else the argmax of ``pl_module(x)``. Labels are ``uint8`` below 256 classes, else
    ``int16``. Single process only: under DDP each rank sees part of the split.
    """

    def __init__(self) -> None:
        self._pred: list[torch.Tensor] = []
        self._label: list[torch.Tensor] = []

    @property
    @override
    def state_key(self) -> str:
        return "TestPredictions"

    @override
    def on_test_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._pred, self._label = [], []

    @override
    def on_test_batch_end(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        x, y = batch[0], batch[1]
        if isinstance(outputs, torch.Tensor):
            pred = outputs if outputs.ndim == 1 else outputs.argmax(-1)
        else:
            with torch.no_grad():
                pred = pl_module(x).argmax(-1)
        self._pred.append(pred.detach().cpu())
        self._label.append(y.detach().cpu())

    @override
    def on_test_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not trainer.is_global_zero or not self._pred:
            return
        pred, label = torch.cat(self._pred).numpy(), torch.cat(self._label).numpy()
        dtype = np.uint8 if max(int(pred.max()), int(label.max())) < 256 else np.int16
        out = run_directory(trainer) / "stats"
        out.mkdir(parents=True, exist_ok=True)
        np.savez_compressed(out / FILENAME, pred=pred.astype(dtype), label=label.astype(dtype))
