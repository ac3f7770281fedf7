"""GradientInformation: how much gradient reaches each weight layer (paper Eq. 5, Table 2)."""

from __future__ import annotations

import math
from typing import Any

import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import Callback
from torch import nn

from lightning_gaaf.callbacks import plots
from lightning_gaaf.callbacks._utils import (
    StepHistory,
    check_interval,
    finite_means,
    is_log_step,
    log_step,
    require_layers,
    weight_layers,
)


class GradientInformation(StepHistory, Callback):
    """Mean ``|dE/dW|`` over each weight tensor (Linear, Conv1d/2d/3d), every N optimizer steps.

    Read in ``on_before_optimizer_step``: gradients are complete there (all micro-batches
    accumulated), already averaged across DDP ranks and unscaled under AMP. All layers' means are
    computed on the device into one tensor and copied to the host once per logging step.

    Args:
        log_every_n_steps: record every N optimizer steps (None: the trainer's ``log_every_n_steps``).

    Logged on rank 0: ``gaaf/grad_info/<layer>`` (``<layer>`` = qualified module name such as
    ``backbone.layers.0``) at the global step. At the end of fit: the mean over all logged steps per
    layer (the paper's Table 2) as ``gaaf/grad_info_mean/<layer>`` in the W&B run summary (other
    loggers: ``log_metrics``), the full history in ``<run_dir>/stats/grad_info.json`` and the
    figure ``<run_dir>/report/grad_info.png``. A layer without a gradient at a step records NaN.
    """

    def __init__(self, log_every_n_steps: int | None = None) -> None:
        self.log_every_n_steps = check_interval(type(self).__name__, "log_every_n_steps", log_every_n_steps)
        self._layers: dict[str, nn.Module] = {}
        self._every = 0
        self.steps: list[int] = []
        self.history: dict[str, list[float]] = {}

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._layers = weight_layers(pl_module)
        require_layers(type(self).__name__, self._layers, "Linear/Conv layers")
        self._every = (
            self.log_every_n_steps if self.log_every_n_steps is not None else trainer.log_every_n_steps
        )
        for name in self._layers:
            self.history.setdefault(name, [math.nan] * len(self.steps))

    def on_before_optimizer_step(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, optimizer: torch.optim.Optimizer
    ) -> None:
        step = trainer.global_step
        if not self._layers or not is_log_step(step, self._every) or (self.steps and self.steps[-1] == step):
            return
        names, means = [], []
        for name, layer in self._layers.items():
            grad = layer.weight.grad
            if grad is not None:
                names.append(name)
                means.append(
                    torch.linalg.vector_norm(grad.detach(), ord=1, dtype=torch.float32) / grad.numel()
                )
        values = dict.fromkeys(self._layers, math.nan)
        if means:
            values.update(zip(names, torch.stack(means).cpu().tolist(), strict=True))  # one transfer
        self.steps.append(step)
        for name, value in values.items():
            self.history[name].append(value)
        log_step(trainer, {f"gaaf/grad_info/{name}": v for name, v in values.items()}, step)

    def summary(self) -> dict[str, float]:
        """Mean gradient information over all logged steps, per layer (paper Table 2)."""
        return finite_means(self.history)

    def stats(self) -> dict[str, Any]:
        """Everything recorded, in the format of ``stats/grad_info.json``."""
        return {
            "statistic": "grad_info",
            "definition": "mean |dE/dW| over the weight tensor of each layer (paper Eq. 5)",
            "log_every_n_steps": self._every,
            "steps": list(self.steps),
            "layers": {name: list(values) for name, values in self.history.items()},
            "summary": self.summary(),
        }

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.publish(trainer, "grad_info", plots.plot_grad_info)
