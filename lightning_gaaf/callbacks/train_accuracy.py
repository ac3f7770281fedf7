"""TrainSetAccuracy: the tested weights' accuracy on the training images, for the generalisation gap."""

from __future__ import annotations

import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from pytorch_lightning.utilities.rank_zero import rank_zero_warn
from typing_extensions import override

__all__ = ["TrainSetAccuracy"]


class TrainSetAccuracy(pl.Callback):
    """At the end of every test run, evaluate the tested model on the DataModule's training images and
    log ``test/train_acc`` and ``test/train_loss`` beside the test metrics.

    Train and test accuracy then come from the same weights in the same (eval) mode, so their
    difference is the generalisation gap; the running ``train/acc`` of an epoch is neither (the
    weights change during the epoch and dropout is active). Batches of the DataModule's batch size
    go through its ``on_after_batch_transfer`` (normalised; not augmented, the trainer is testing).
    The values go through ``pl_module.log`` so that they join the test metrics every logger and
    ``MetricsMonitor`` record. Needs a DataModule with a ``train_dataset`` (set up for ``"fit"``
    when it has none yet); without one it warns and logs nothing. Each rank evaluates every image.
    """

    @property
    @override
    def state_key(self) -> str:
        return "TrainSetAccuracy"

    @override
    def on_test_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        dm = trainer.datamodule
        if dm is not None and getattr(dm, "train_dataset", "absent") is None:
            dm.setup("fit")
        dataset = getattr(dm, "train_dataset", None)
        if dataset is None or len(dataset) == 0:
            rank_zero_warn("TrainSetAccuracy: the DataModule has no training images; nothing logged")
            return
        batch_size = getattr(dm, "batch_size", 256)
        correct, loss_sum = 0, 0.0
        with torch.no_grad():
            for start in range(0, len(dataset), batch_size):
                idx = list(range(start, min(start + batch_size, len(dataset))))
                if hasattr(dataset, "__getitems__"):
                    x, y = dataset.__getitems__(idx)
                else:
                    x, y = (torch.stack(v) for v in zip(*(dataset[i] for i in idx), strict=True))
                x, y = dm.on_after_batch_transfer((x.to(pl_module.device), y.to(pl_module.device)), 0)
                logits = pl_module(x)
                correct += int((logits.argmax(-1) == y).sum())
                loss_sum += float(F.cross_entropy(logits, y, reduction="sum"))
        pl_module.log("test/train_acc", correct / len(dataset))
        pl_module.log("test/train_loss", loss_sum / len(dataset))
