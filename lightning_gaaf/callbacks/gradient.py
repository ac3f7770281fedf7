"""GradInfoMonitor: how much gradient reaches each weight layer (paper Eq. 5, Table 2)."""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from torch import Tensor, nn
from typing_extensions import override

from lightning_gaaf.callbacks._base import StepHistory, finite_means
from lightning_gaaf.callbacks._layers import require_layers, weight_layers
from lightning_gaaf.stats import plots


def gradient_means(layers: Mapping[str, nn.Module]) -> dict[str, float]:
    """Mean ``|grad|`` of each layer's weight (NaN without a gradient): one device tensor, one copy."""
    names, means = [], []
    for name, layer in layers.items():
        grad: Tensor | None = layer.weight.grad
        if grad is not None:
            names.append(name)
            means.append(torch.linalg.vector_norm(grad.detach(), ord=1, dtype=torch.float32) / grad.numel())
    values = dict.fromkeys(layers, math.nan)
    if means:
        values.update(zip(names, torch.stack(means).cpu().tolist(), strict=True))
    return values


class GradInfoMonitor(StepHistory):
    """Mean ``|dE/dW|`` over each weight tensor (Linear, Conv1d/2d/3d), every N optimizer steps.

    Read in ``on_before_optimizer_step``: gradients are complete there (all micro-batches
    accumulated), already averaged across DDP ranks and unscaled under AMP. All layers' means are
    computed on the device into one tensor and copied to the host once per logging step.

    Args:
        log_every_n_steps: record after optimizer steps N-1, 2N-1, ... (Lightning's meaning); None:
            the trainer's ``log_every_n_steps``.

    Logged: ``gaaf/grad_info/<layer>`` (``<layer>`` = qualified module name such as
    ``backbone.layers.0``) at the global step, to every logger and ``trainer.callback_metrics``. At
    the end of fit: the mean over all logged steps per layer (the paper's Table 2) as
    ``gaaf/grad_info_mean/<layer>`` in the run summary, the history in ``stats/grad_info.json`` and
    ``report/grad_info.png``. A layer without a gradient at a step records NaN.
    """

    statistic = "grad_info"

    def __init__(self, log_every_n_steps: int | None = None) -> None:
        super().__init__(log_every_n_steps)
        self._layers: dict[str, nn.Module] = {}

    @override
    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._layers = weight_layers(pl_module)
        require_layers(type(self).__name__, self._layers, "Linear/Conv layers")
        self.start_history(trainer, self._layers)

    @override
    def on_before_optimizer_step(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, optimizer: torch.optim.Optimizer
    ) -> None:
        step = trainer.global_step
        if not self._layers or not self.is_due(step):
            return
        values = gradient_means(self._layers)
        self.append(step, values)
        self.log_step(trainer, {f"gaaf/grad_info/{name}": v for name, v in values.items()}, step)

    @override
    def summary(self) -> dict[str, float]:
        """Mean gradient information over all logged steps per layer (paper Table 2), by summary key."""
        return {f"gaaf/grad_info_mean/{name}": v for name, v in finite_means(self.history).items()}

    @override
    def stats(self) -> dict[str, Any]:
        return {
            "definition": "mean |dE/dW| over the weight tensor of each layer (paper Eq. 5)",
            **self.history_stats(),
            "summary": finite_means(self.history),
        }

    @override
    def draw(self, stats: Mapping[str, Any], out: Path) -> dict[str, Path]:
        if not stats["steps"]:
            return {}
        return {"gaaf/report/grad_info": plots.plot_grad_info([("", stats)], out / "grad_info.png")}
