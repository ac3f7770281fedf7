"""WeightHistMonitor: the weight distribution of each layer at the start and at the end of fit."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pytorch_lightning as pl
from torch import nn
from typing_extensions import override

from lightning_gaaf.callbacks._args import check_bins
from lightning_gaaf.callbacks._base import Monitor
from lightning_gaaf.callbacks._layers import require_layers, weight_layers
from lightning_gaaf.stats import plots


class WeightHistMonitor(Monitor):
    """Histogram, mean and std of every Linear/Conv weight when training starts and when it ends.

    Weights are identical on all ranks under DDP, so rank 0 alone computes them (once per fit, on
    the host). Edges span each tensor's own min..max with ``bins`` equal bins.

    Args:
        bins: number of histogram bins (at most 512, W&B's limit).

    Logged: ``gaaf/weight_hist/<layer>`` histograms (W&B and TensorBoard) at the first and the last
    step. Files: ``stats/weight_hist.json`` and ``report/weight_hist.png``. The start-of-fit record
    is checkpointed, so a resumed fit still compares against the first start.
    """

    statistic = "weight_hist"

    def __init__(self, bins: int = 64) -> None:
        super().__init__()
        self.bins = check_bins(type(self).__name__, bins)
        self._layers: dict[str, nn.Module] = {}
        self.records: dict[str, dict[str, dict[str, Any]]] = {}

    @override
    def _state_key_args(self) -> dict[str, Any]:
        return {"bins": self.bins}

    @override
    def state_dict(self) -> dict[str, Any]:
        return {"records": self.records}

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if not self.records:
            self.records = dict(state_dict.get("records", {}))

    def _capture(self, trainer: pl.Trainer, when: str) -> None:
        if not trainer.is_global_zero:
            return
        captured = []
        for name, layer in self._layers.items():
            if when == "init" and "init" in self.records.get(name, {}):
                continue  # a resumed fit keeps the first start (and does not log it again)
            captured.append(name)
            self.mark_recorded()
            w = layer.weight.detach().float().cpu().numpy().ravel()
            counts, edges = np.histogram(w, bins=self.bins)
            self.records.setdefault(name, {})[when] = {
                "counts": counts.tolist(),
                "edges": edges.tolist(),
                "mean": float(w.mean()),
                "std": float(w.std()),
                "numel": int(w.size),
            }
        hists = {
            f"gaaf/weight_hist/{name}": (
                self.records[name][when]["counts"],
                self.records[name][when]["edges"],
            )
            for name in captured
        }
        self.log_step(trainer, {}, trainer.global_step, hists)

    @override
    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._layers = weight_layers(pl_module)
        require_layers(type(self).__name__, self._layers, "Linear/Conv layers")
        self._capture(trainer, "init")

    @override
    def stats(self) -> dict[str, Any]:
        return {"bins": self.bins, "layers": self.records}

    @override
    def draw(self, stats: Mapping[str, Any], out: Path) -> dict[str, Path]:
        if not stats["layers"]:
            return {}
        return {"gaaf/report/weight_hist": plots.plot_weight_hist([("", stats)], out / "weight_hist.png")}

    @override
    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._capture(trainer, "final")
        self.save(trainer)
