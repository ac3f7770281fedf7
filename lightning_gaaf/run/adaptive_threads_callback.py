"""The thread count that follows the load (:mod:`lightning_gaaf.run.adaptive_threads`) in a Lightning fit.

gaaf-fit, gaaf-tune and gaaf-reproduce add :class:`AdaptiveThreadsCallback` (through
:func:`adaptive_threads_callbacks`) when their thread policy is ``GAAF_THREADS=auto``.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any

import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import Callback
from typing_extensions import override

from lightning_gaaf.run.adaptive_threads import AdaptiveThreads
from lightning_gaaf.run.threads import applied_thread_policy

__all__ = ["AdaptiveThreadsCallback", "adaptive_threads_callbacks"]


class AdaptiveThreadsCallback(Callback):
    """:class:`AdaptiveThreads` in a Lightning fit: each training batch's time decides the count.

    The count at ``on_fit_start`` is the start; ``top`` (default: that count) the most threads
    tried. Each change is logged as the metric ``threads`` (``logger.log_metrics``, at the global
    step), and the start count when training starts; the start count is back when the fit ends,
    also after an error. ``clock``, ``waiting`` and the chooser's options as for
    :class:`AdaptiveThreads`.
    """

    def __init__(
        self,
        top: int | None = None,
        clock: Callable[[], float] = time.perf_counter,
        waiting: Callable[[], float | None] | None | str = "kernel",
        **chooser_options: Any,
    ) -> None:
        self.top, self.clock, self.waiting, self.chooser_options = top, clock, waiting, chooser_options
        self.adaptive: AdaptiveThreads | None = None
        self._trainer: pl.Trainer | None = None
        self._batch_start: float | None = None

    @override
    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._trainer = trainer
        # Several processes: the strategy divided the cores, each keeps its own count at most.
        top = self.top if trainer.world_size == 1 else None
        self.adaptive = AdaptiveThreads(
            top, clock=self.clock, waiting=self.waiting, on_change=self._log, **self.chooser_options
        )

    @override
    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.adaptive is not None:
            self._log(self.adaptive.threads)

    @override
    def on_train_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        self._batch_start = self.clock()

    @override
    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        if self.adaptive is not None and self._batch_start is not None:
            now = self.clock()
            self.adaptive.step(now - self._batch_start, now)
            self._batch_start = None

    @override
    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._close()

    @override
    def on_exception(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException
    ) -> None:
        self._close()

    def _close(self) -> None:
        if self.adaptive is not None:
            self.adaptive.close()
        self.adaptive, self._trainer = None, None

    def _log(self, count: int) -> None:
        trainer = self._trainer
        if trainer is None:
            return
        for logger in trainer.loggers:
            logger.log_metrics({"threads": float(count)}, step=trainer.global_step)


def adaptive_threads_callbacks(existing: Sequence[Callback] = ()) -> list[Callback]:
    """``[AdaptiveThreadsCallback(top)]`` when this process applied a thread policy that follows the
    load (``GAAF_THREADS=auto`` without the user's ``OMP_NUM_THREADS``) and ``existing`` has none,
    else ``[]``.

    ``top`` is the policy's usable cores while torch still runs the count the policy chose; a count
    changed since (a program dividing the cores among its workers) is the most it tries. A fit with
    several processes (DDP) keeps the count each process starts with at most.
    """
    policy = applied_thread_policy()
    if any(isinstance(c, AdaptiveThreadsCallback) for c in existing):
        return []
    if policy is None or not policy.follows_load or policy.threads is None:
        return []
    current = torch.get_num_threads()
    top = (policy.cores or policy.threads) if current == policy.threads else current
    return [AdaptiveThreadsCallback(top=top)] if top > 1 else []
