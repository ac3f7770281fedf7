"""WeightHistograms: the weight distribution of each layer at the start and at the end of fit."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytorch_lightning as pl
from pytorch_lightning.callbacks import Callback
from torch import nn

from lightning_gaaf.callbacks import plots
from lightning_gaaf.callbacks._utils import (
    log_images,
    log_step,
    report_dir,
    require_layers,
    stats_dir,
    wandb_runs,
    weight_layers,
    write_json,
)


class WeightHistograms(Callback):
    """Histogram, mean and std of every Linear/Conv weight when training starts and when it ends.

    Weights are identical on all ranks under DDP, so rank 0 alone computes them (once per fit, on
    the host). Edges span each tensor's own min..max with ``bins`` equal bins.

    Args:
        bins: number of histogram bins (at most 512, W&B's limit).

    Logged on rank 0 (W&B only): ``gaaf/weight_hist/<layer>`` (``wandb.Histogram``) at the first
    and the last step. Saved: ``<run_dir>/stats/weights.json`` and ``<run_dir>/report/weight_hist.png``.
    """

    def __init__(self, bins: int = 64) -> None:
        if isinstance(bins, bool) or not isinstance(bins, int) or not 1 <= bins <= 512:
            raise ValueError(f"WeightHistograms: bins must be an integer in [1, 512], got {bins!r}")
        self.bins = bins
        self._layers: dict[str, nn.Module] = {}
        self.records: dict[str, dict[str, dict[str, Any]]] = {}

    def _capture(self, trainer: pl.Trainer, when: str) -> None:
        if not trainer.is_global_zero:
            return
        for name, layer in self._layers.items():
            w = layer.weight.detach().float().cpu().numpy().ravel()
            counts, edges = np.histogram(w, bins=self.bins)
            self.records.setdefault(name, {})[when] = {
                "counts": counts.tolist(),
                "edges": edges.tolist(),
                "mean": float(w.mean()),
                "std": float(w.std()),
                "numel": int(w.size),
            }
        if wandb_runs(trainer):
            import wandb

            payload = {
                f"gaaf/weight_hist/{name}": wandb.Histogram(
                    np_histogram=(np.asarray(rec[when]["counts"]), np.asarray(rec[when]["edges"]))
                )
                for name, rec in self.records.items()
                if when in rec
            }
            log_step(trainer, {}, trainer.global_step, payload)

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._layers = weight_layers(pl_module)
        require_layers(type(self).__name__, self._layers, "Linear/Conv layers")
        self._capture(trainer, "init")

    def stats(self) -> dict[str, Any]:
        """The format of ``stats/weights.json``."""
        return {"statistic": "weights", "bins": self.bins, "layers": self.records}

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._capture(trainer, "final")
        if not trainer.is_global_zero:
            return
        stats = self.stats()
        write_json(stats_dir(trainer) / "weights.json", stats)
        if self.records:
            path = plots.plot_weight_hist([("", stats)], report_dir(trainer) / "weight_hist.png")
            log_images(trainer, {"gaaf/report/weight_hist": path})
