"""EpochTimer: the wall-clock time of every epoch, recorded beside the epoch's metrics."""

from __future__ import annotations

import time
from typing import Any

import pytorch_lightning as pl
from typing_extensions import override

__all__ = ["EpochTimer"]


class EpochTimer(pl.Callback):
    """Log ``time/epoch_s``: seconds from the start of a training epoch to its end, validation included.

    Logged with ``pl_module.log`` at the end of the epoch, so it reaches the loggers and
    ``trainer.callback_metrics`` and :class:`~lightning_gaaf.callbacks.MetricsMonitor` writes it
    into that epoch's record of ``stats/metrics.json``: wall time to a validation target is then
    the sum over the epochs up to it. Wall time depends on the load of the machine; optimizer steps
    do not.
    """

    def __init__(self) -> None:
        self._start: float | None = None

    @property
    @override
    def state_key(self) -> str:
        return "EpochTimer"

    @override
    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._start = time.perf_counter()

    @override
    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._start is None:  # resumed at the end of an epoch: its start was not seen
            return
        elapsed = time.perf_counter() - self._start
        self._start = None
        pl_module.log("time/epoch_s", elapsed, on_step=False, on_epoch=True)

    @override
    def state_dict(self) -> dict[str, Any]:
        return {}
