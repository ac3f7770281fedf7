"""StepLog: the numbers the monitors of one trainer logged for one step, handed to the loggers as one record."""

from __future__ import annotations

import weakref
from collections.abc import Mapping

import numpy as np
import pytorch_lightning as pl
import torch

from lightning_gaaf.callbacks._loggers import (
    Histogram,
    finite,
    nonempty_histograms,
    send_scalars,
    tensorboard_histograms,
)


class StepLog:
    """The monitors' numbers of one step, collected until the step is complete.

    All monitors of a trainer share one ``StepLog`` (see ``Monitor.step_log``): every logger then
    gets one record per step for all of them together (one ``log_metrics`` call, one W&B history
    row), rather than one per monitor (a W&B call costs about a millisecond). The record is handed
    on when a number of another step arrives or :meth:`flush` is called (a monitor saving its
    statistics, a checkpoint being saved, or an exception ending the run). It belongs to one trainer.
    """

    def __init__(self, trainer: pl.Trainer) -> None:
        self._trainer = weakref.ref(trainer)
        self.step: int | None = None
        self.scalars: dict[str, float] = {}
        self.histograms: dict[str, tuple[np.ndarray, np.ndarray]] = {}

    def belongs_to(self, trainer: pl.Trainer) -> bool:
        return self._trainer() is trainer

    def add(
        self,
        trainer: pl.Trainer,
        step: int,
        scalars: Mapping[str, float | None],
        histograms: Mapping[str, Histogram] | None = None,
        sums: Mapping[str, tuple[float, float]] | None = None,
    ) -> None:
        """Finite scalars to ``trainer.callback_metrics`` now (all ranks) and, with the histograms, to
        the step's record (rank 0); TensorBoard takes the histograms at once (its own call per key).

        ``callback_metrics`` is the dict ``EarlyStopping`` and ``ModelCheckpoint`` read; the values
        are written into it directly rather than through ``LightningModule.log``: every key logged
        that way is carried by Lightning's result collection and re-read at every later batch of
        the epoch, which would make the monitors cost time on steps where they record nothing.
        """
        clean = finite(scalars)
        trainer.callback_metrics.update({key: torch.tensor(value) for key, value in clean.items()})
        if not trainer.is_global_zero:
            return
        hists = nonempty_histograms(histograms or {})
        tensorboard_histograms(trainer, hists, step, sums)
        if self.step is not None and self.step != step:
            self.flush(trainer)
        self.step = step
        self.scalars.update(clean)
        self.histograms.update(hists)

    def flush(self, trainer: pl.Trainer) -> None:
        """Hand the collected record (if any) to every logger."""
        step, scalars, histograms = self.step, self.scalars, self.histograms
        self.step, self.scalars, self.histograms = None, {}, {}
        if step is not None:
            send_scalars(trainer, scalars, histograms, step)
