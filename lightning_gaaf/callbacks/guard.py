"""GradScaleMonitor: warns when gradients explode or vanish across depth or over training steps.

GAAF adds ``g(x) * s(x)`` to each activation; its derivative adds about ``s(x)`` to ``phi'(x)`` at
every activation (``phi' + s`` is about 2 where ``s`` is about 1). In a deep network these factors
multiply: measured on one batch, the first layer of a 10-layer Linear+BatchNorm+ReLU stack gets a
mean ``|dE/dW|`` 7e2 times the last layer's with GAAF (0.5 without), a 30-layer Linear+BatchNorm+SiLU
stack 2e10 (6.5 without). This monitor says so at the first optimizer step, before a NaN loss does.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from pytorch_lightning.utilities.rank_zero import rank_zero_warn
from torch import nn
from typing_extensions import override

from lightning_gaaf.callbacks._args import is_log_step
from lightning_gaaf.callbacks._base import StepHistory
from lightning_gaaf.callbacks._layers import has_gaaf, require_layers, weight_layers
from lightning_gaaf.callbacks.gradient import gradient_means
from lightning_gaaf.stats import plots

#: Default factor: a layer's gradient information more than 100x (or less than 1/100) the last layer's.
DEFAULT_FACTOR = 100.0

_LR_CAUSE = (
    "a learning rate too large for this model is a likely cause of gradients that grow during "
    "training or turn inf/NaN ({lr}); remedies: a smaller learning rate, a warm-up, or gradient clipping"
)
_GAAF_REMEDIES = (
    "GAAF multiplies the backward signal at every activation; remedies: a smaller shape "
    "(shape_kwargs, or a narrower shape such as 'gauss'), a larger K, GAAF on fewer layers "
    "(include/exclude patterns of apply_gaaf / GAAFCallback), or a surgery policy that skips deep "
    "stacks; see docs/monitors.md"
)
_PLAIN_REMEDIES = (
    "remedies: normalisation (BatchNorm/LayerNorm), residual connections, another initialisation, "
    "a smaller learning rate or gradient clipping"
)


def _listing(items: list[tuple[str, float]], limit: int = 5) -> str:
    shown = ", ".join(f"{name} ({value:.3g}x)" for name, value in items[:limit])
    return shown + (f" and {len(items) - limit} more" if len(items) > limit else "")


class GradScaleMonitor(StepHistory):
    """Gradient information of every weight layer relative to the last one; warns once on explosion.

    At the first optimizer step of a fit and then every ``log_every_n_steps`` steps it reads the
    mean ``|dE/dW|`` of every Linear/Conv weight (as :class:`GradInfoMonitor` does) and divides it by
    the last weight layer's (registration order: usually the output layer). It warns once per fit,
    naming the layers and suggesting remedies, when

    * **across depth** a layer's ratio is above ``factor`` (explosion towards the input) or below
      ``1 / factor`` (vanishing), or
    * **over steps** a layer's gradient information grew by more than ``factor`` since the first
      check, or became inf/NaN.

    (Gradients shrinking over steps is what training does as the loss falls, so it is not flagged.)

    Args:
        log_every_n_steps: check after optimizer steps N-1, 2N-1, ... besides the first step; None:
            the trainer's ``log_every_n_steps``.
        factor: the ratio beyond which it warns (default 100; measured first/last ratios: plain
            networks with BatchNorm 0.5-7, GAAF on 10+ BatchNorm layers 7e2 and more).

    Logged: ``gaaf/grad_scale/<layer>`` (ratio to the last layer) to every logger and
    ``callback_metrics``; ``stats/grad_scale.json`` (history, warnings) and ``report/grad_scale.png``.
    """

    statistic = "grad_scale"

    def __init__(self, log_every_n_steps: int | None = None, factor: float = DEFAULT_FACTOR) -> None:
        super().__init__(log_every_n_steps)
        owner = type(self).__name__
        if isinstance(factor, bool) or not isinstance(factor, (int, float)) or not factor > 1:
            raise ValueError(f"{owner}: factor must be a number > 1, got {factor!r}")
        self.factor = float(factor)
        self.warnings: list[dict[str, Any]] = []
        self._layers: dict[str, nn.Module] = {}
        self._first: dict[str, float] = {}
        self._gaaf = False

    @override
    def _state_key_args(self) -> dict[str, Any]:
        return {**super()._state_key_args(), "factor": self.factor}

    @override
    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "warnings": self.warnings, "first": self._first}

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if not self.steps:
            super().load_state_dict(state_dict)
            self.warnings = list(state_dict.get("warnings", []))
            self._first = dict(state_dict.get("first", {}))

    @property
    def reference(self) -> str | None:
        """The layer the ratios are taken against (the last weight layer)."""
        return next(reversed(self._layers), None)

    @override
    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._layers = weight_layers(pl_module)
        require_layers(type(self).__name__, self._layers, "Linear/Conv layers")
        self.start_history(trainer, self._layers)
        self._gaaf = has_gaaf(pl_module)

    @override
    def on_before_optimizer_step(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, optimizer: torch.optim.Optimizer
    ) -> None:
        step = trainer.global_step
        # The very first step is always checked; a resumed run has its history and keeps the interval.
        due = not self.steps or is_log_step(step, self._every)
        if len(self._layers) < 2 or not due or not self.record_step(step):
            return
        values = gradient_means(self._layers)
        with_grad = {n for n, layer in self._layers.items() if layer.weight.grad is not None}
        ref = values[self.reference] if self.reference in with_grad else math.nan
        ratios = {n: (v / ref if math.isfinite(ref) and ref > 0 else math.nan) for n, v in values.items()}
        self.append(step, ratios)
        self.log_step(trainer, {f"gaaf/grad_scale/{n}": r for n, r in ratios.items()}, step)
        problems = self._problems(step, values, ratios, with_grad)
        if problems and not self.warnings:
            message = self._message(trainer, step, problems)
            self.warnings.append({"step": step, "message": message})
            rank_zero_warn(message, category=UserWarning)

    def _problems(
        self, step: int, values: Mapping[str, float], ratios: Mapping[str, float], with_grad: set[str]
    ) -> list[str]:
        f = self.factor
        found = []
        bad = [n for n in with_grad if not math.isfinite(values[n])]
        if bad:
            found.append(f"non-finite gradients in {', '.join(sorted(bad))}")
        up = sorted(((n, r) for n, r in ratios.items() if r > f), key=lambda x: -x[1])
        if up:
            found.append(
                f"gradients explode towards the input: mean |dE/dW| of {_listing(up)} is more than "
                f"{f:g}x that of the last layer {self.reference}"
            )
        down = sorted(((n, r) for n, r in ratios.items() if r < 1 / f), key=lambda x: x[1])
        if down:
            found.append(
                f"gradients vanish towards the input: mean |dE/dW| of {_listing(down)} is less than "
                f"1/{f:g} of that of the last layer {self.reference}"
            )
        grown = []
        for name in with_grad:
            value = values[name]
            if not math.isfinite(value):
                continue
            first = self._first.setdefault(name, value)
            if first > 0 and value / first > f:
                grown.append((name, value / first))
        if grown:
            grown.sort(key=lambda x: -x[1])
            found.append(f"gradients grew more than {f:g}x since step {self.steps[0]}: {_listing(grown)}")
        return found

    def _message(self, trainer: pl.Trainer, step: int, problems: list[str]) -> str:
        """The problems and their likely causes. Ratios across depth at the first check come from the
        architecture (no update has been made yet); anything that appears later (growth, inf/NaN,
        ratios that drifted) can come from the learning rate; GAAF is named only when the model has
        GAAF modules."""
        causes = []
        if step > self.steps[0] or any(p.startswith(("non-finite", "gradients grew")) for p in problems):
            causes.append(_LR_CAUSE.format(lr=_learning_rates(trainer)))
        causes.append(_GAAF_REMEDIES if self._gaaf else _PLAIN_REMEDIES)
        return (
            f"{type(self).__name__} at step {step}: " + "; ".join(problems) + ". " + ". ".join(causes) + "."
        )

    @override
    def stats(self) -> dict[str, Any]:
        return {
            "definition": "mean |dE/dW| of each weight layer divided by that of the last weight layer",
            "reference": self.reference,
            "factor": self.factor,
            **self.history_stats(),
            "warnings": list(self.warnings),
        }

    @override
    def draw(self, stats: Mapping[str, Any], out: Path) -> dict[str, Path]:
        if not stats["steps"]:
            return {}
        return {"gaaf/report/grad_scale": plots.plot_grad_scale([("", stats)], out / "grad_scale.png")}


def _learning_rates(trainer: pl.Trainer) -> str:
    """The optimizers' current learning rates, for the warning (``lr 0.05``, ``lr 0.1, 0.01``)."""
    rates = [g["lr"] for opt in trainer.optimizers for g in opt.param_groups if "lr" in g]
    unique = list(dict.fromkeys(float(r) for r in rates))
    return "learning rate unknown" if not unique else "lr " + ", ".join(f"{r:g}" for r in unique)
