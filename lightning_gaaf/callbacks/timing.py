"""EpochTimer: the wall-clock and CPU time of every epoch, recorded beside the epoch's metrics."""

from __future__ import annotations

import time
from typing import Any

import pytorch_lightning as pl
from typing_extensions import override

__all__ = ["EpochTimer"]


class EpochTimer(pl.Callback):
    """Log ``time/epoch_s`` (wall clock) and ``time/epoch_cpu_s`` (CPU time of this process, all its
    threads) from the start of a training epoch to its end, validation included.

    Logged with ``pl_module.log`` at the end of the epoch, so they reach the loggers and
    ``trainer.callback_metrics`` and :class:`~lightning_gaaf.callbacks.MetricsMonitor` writes them
    into that epoch's record of ``stats/metrics.json``: time to a validation target is then the sum
    over the epochs up to it. On a shared machine wall time grows with the other processes' load;
    CPU time much less (it is the compute the run itself used); optimizer steps not at all.
    """

    def __init__(self) -> None:
        self._start: float | None = None
        self._cpu_start = 0.0

    @property
    @override
    def state_key(self) -> str:
        return "EpochTimer"

    @override
    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._start = time.perf_counter()
        self._cpu_start = time.process_time()

    @override
    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._start is None:  # resumed at the end of an epoch: its start was not seen
            return
        elapsed, cpu = time.perf_counter() - self._start, time.process_time() - self._cpu_start
        self._start = None
        pl_module.log("time/epoch_s", elapsed, on_step=False, on_epoch=True)
        pl_module.log("time/epoch_cpu_s", cpu, on_step=False, on_epoch=True)

    @override
    def state_dict(self) -> dict[str, Any]:
        return {}
