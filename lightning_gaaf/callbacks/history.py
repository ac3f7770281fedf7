"""MetricsHistory: the epoch metrics of a run, saved in its run directory (no W&B needed to read them)."""

from __future__ import annotations

import math
from typing import Any

import pytorch_lightning as pl
import torch

from lightning_gaaf.callbacks._utils import stats_dir, write_json

__all__ = ["MetricsHistory"]


def _plain(value: Any) -> float | None:
    if isinstance(value, torch.Tensor):
        value = value.detach().float().cpu().item() if value.numel() == 1 else None
    if isinstance(value, (int, float)) and math.isfinite(float(value)):
        return float(value)
    return None


class MetricsHistory(pl.Callback):
    """Write ``<run_dir>/stats/metrics.json``: one record per epoch and the test metrics.

    Each record holds the epoch (1-based), the global step and every scalar in
    ``trainer.callback_metrics`` at the end of that training epoch (``train/acc``, ``val/loss``,
    ``val/acc``, ...), already reduced across ranks; ``test`` holds the metrics of the last test run.
    The file is rewritten after every epoch, so an interrupted run keeps what it had; NaN/inf are
    saved as null.
    ``gaaf-reproduce`` and ``gaaf-report`` read it.
    """

    def __init__(self, filename: str = "metrics.json") -> None:
        self.filename = filename
        self.epochs: list[dict[str, float]] = []
        self.test: dict[str, float] = {}

    def _scalars(self, trainer: pl.Trainer, prefix: str | None = None) -> dict[str, float]:
        out = {}
        for key, value in trainer.callback_metrics.items():
            if prefix is not None and not key.startswith(prefix):
                continue
            plain = _plain(value)
            if plain is not None:
                out[key] = plain
        return out

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.sanity_checking:
            return
        record = {"epoch": trainer.current_epoch + 1, "step": trainer.global_step}
        record.update(self._scalars(trainer))
        self.epochs = [r for r in self.epochs if r["epoch"] < record["epoch"]] + [record]
        self._save(trainer)

    def on_test_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.test = self._scalars(trainer, prefix="test/")
        self._save(trainer)

    def _save(self, trainer: pl.Trainer) -> None:
        if trainer.is_global_zero:
            write_json(stats_dir(trainer) / self.filename, {"epochs": self.epochs, "test": self.test})

    def state_dict(self) -> dict[str, Any]:
        return {"epochs": self.epochs}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        # Only a fresh process resuming a fit takes the checkpoint's history. ``trainer.test(ckpt_path=
        # "best")`` restores callback state too, and must not cut the history back to the best epoch.
        if not self.epochs:
            self.epochs = list(state_dict.get("epochs", []))
