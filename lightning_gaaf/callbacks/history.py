"""MetricsMonitor: the epoch metrics of a run, saved in its run directory (no W&B needed to read them)."""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from typing_extensions import override

from lightning_gaaf.callbacks._base import Monitor
from lightning_gaaf.callbacks._loggers import flush_logs, report_dir, stats_dir
from lightning_gaaf.stats import plots, write_stats

__all__ = ["MetricsMonitor"]


def _plain(value: Any) -> float | None:
    if isinstance(value, torch.Tensor):
        value = value.detach().float().cpu().item() if value.numel() == 1 else None
    if isinstance(value, (int, float)) and math.isfinite(float(value)):
        return float(value)
    return None


class MetricsMonitor(Monitor):
    """Write ``<run_dir>/stats/metrics.json`` (one record per epoch, the test metrics) and
    ``<run_dir>/report/metrics.png``.

    Each record holds the epoch (1-based), the global step and every scalar in
    ``trainer.callback_metrics`` once the epoch is complete: after the LightningModule's own
    ``on_train_epoch_end`` (where e.g. ``train/acc`` is often logged) has run, so every epoch has
    its own values. ``test`` holds the metrics of the last test run. The file is rewritten after
    every epoch; an interrupted run keeps what it had (``"partial": true``). ``gaaf-fit`` adds this
    monitor to every run; ``gaaf-reproduce`` and ``gaaf-report`` read the file.
    """

    statistic = "metrics"

    def __init__(self) -> None:
        self.epochs: list[dict[str, float]] = []
        self.test: dict[str, float] = {}
        self._pending: dict[str, int] | None = None
        self._trainer: pl.Trainer | None = None

    @staticmethod
    def _scalars(trainer: pl.Trainer, prefix: str | None = None) -> dict[str, float]:
        out = {}
        for key, value in trainer.callback_metrics.items():
            if prefix is not None and not key.startswith(prefix):
                continue
            plain = _plain(value)
            if plain is not None:
                out[key] = plain
        return out

    @override
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        self._trainer = trainer

    @override
    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # Callbacks run before the LightningModule's on_train_epoch_end: the record is completed at
        # the next moment (next epoch start, end of training, checkpoint, exception).
        if not trainer.sanity_checking:
            self._pending = {"epoch": trainer.current_epoch + 1, "step": trainer.global_step}

    def _complete(self) -> None:
        if self._pending is None or self._trainer is None:
            return
        record: dict[str, float] = dict(self._pending)
        record.update(self._scalars(self._trainer))
        self._pending = None
        self.epochs = [r for r in self.epochs if r["epoch"] < record["epoch"]] + [record]
        self._write(self._trainer, partial=False)

    @override
    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._complete()

    @override
    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._complete()
        self.save(trainer)

    @override
    def on_test_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.test = self._scalars(trainer, prefix="test/")
        self.save(trainer)

    @override
    def on_exception(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException
    ) -> None:
        self._complete()
        super().on_exception(trainer, pl_module, exception)

    def _write(self, trainer: pl.Trainer, partial: bool) -> None:
        if trainer.is_global_zero:
            write_stats(stats_dir(trainer), self.statistic, self.stats(), partial=partial)

    @override
    def stats(self) -> dict[str, Any]:
        return {"epochs": list(self.epochs), "test": dict(self.test)}

    @override
    def draw(self, stats: Mapping[str, Any], out: Path) -> dict[str, Path]:
        if not stats["epochs"]:
            return {}
        return {"gaaf/report/metrics": plots.plot_metrics([("", stats)], out / "metrics.png")}

    @override
    def summary(self) -> dict[str, float]:
        return {}

    @override
    def save(self, trainer: pl.Trainer, partial: bool = False) -> None:
        # Only the figure: the loggers already have these metrics.
        flush_logs(trainer)
        if trainer.is_global_zero:
            stats = self.stats()
            write_stats(stats_dir(trainer), self.statistic, stats, partial=partial)
            self.draw(stats, report_dir(trainer))

    @override
    def state_dict(self) -> dict[str, Any]:
        self._complete()  # a checkpoint at the end of an epoch holds that epoch
        return {"epochs": list(self.epochs)}

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        # Only a fresh process resuming a fit takes the checkpoint's history. ``trainer.test(ckpt_path=
        # "best")`` restores callback state too, and must not cut the history back to the best epoch.
        if not self.epochs:
            self.epochs = list(state_dict.get("epochs", []))
