"""SaturationMonitor: how many nets (pre-activations) sit where the activation passes no gradient."""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pytorch_lightning as pl
import torch
from pytorch_lightning.trainer.states import TrainerFn
from pytorch_lightning.utilities.rank_zero import rank_zero_warn
from torch import nn
from typing_extensions import override

from lightning_gaaf.callbacks._accumulator import NetAccumulator
from lightning_gaaf.callbacks._args import check_bins, check_include, check_split
from lightning_gaaf.callbacks._base import StepHistory
from lightning_gaaf.callbacks._hooks import HookSet
from lightning_gaaf.callbacks._layers import activation_modules, plain_activation, require_layers
from lightning_gaaf.callbacks._loggers import wants_media
from lightning_gaaf.callbacks.thresholds import Interval, check_override, resolve_intervals
from lightning_gaaf.stats import plots


class SaturationMonitor(StepHistory):
    """Fraction of nets in each activation's saturation area, their mean, std and histogram.

    The net of an activation is its input ``z`` (pre-activation). It is read by forward
    *pre*-hooks on every activation module (GAAF or plain, found by type; or modules whose
    qualified name matches ``include`` globs), attached only for logging steps and removed after
    the step, so an in-place ReLU cannot overwrite it first and other steps pay nothing.

    Saturation area: the nets where ``|phi'(z)| < 0.1 * max |phi'|`` (one rule for all, computed
    from the activation by :func:`~lightning_gaaf.callbacks.thresholds.saturation_intervals`; a GAAF
    module uses its ``.base``). Values for default parameters:

    ================  =============================================  ======================
    activation        saturation area                                closed form
    ================  =============================================  ======================
    Tanh              ``|z| > 1.8184``                               ``atanh(sqrt(0.9))``
    Sigmoid           ``|z| > 3.6369``                               ``2 atanh(sqrt(0.9))``
    Hardtanh / ReLU6  ``z < min_val`` or ``z > max_val``             (-1, 1) / (0, 6)
    ReLU              ``z < 0``                                      derivative is 0
    LeakyReLU(0.01)   ``z < 0`` (none if ``negative_slope >= 0.1``)  slope below 10 %
    ELU(alpha=1)      ``z < -2.3026``                                ``ln 0.1``
    Softplus(beta=1)  ``z < -2.1972``                                ``-ln 9``
    SiLU              ``z < -0.8825``                                numeric
    GELU              ``z < -1.7282`` or ``-1.1583 < z < -0.5324``   numeric
    ================  =============================================  ======================

    Held-out statistics (paper Figures 3 and 5) are collected inside Lightning's own loops: with
    ``split="test"`` during ``trainer.test(...)`` (gaaf-fit runs it once after fit), with
    ``split="val"`` during every validation run (the last one is kept), on whatever data, device,
    precision and sharding those loops use. After a plain ``trainer.fit`` call ``trainer.test(...)``
    to get them; no hidden pass over the data is made.

    Args:
        log_every_n_steps: record after optimizer steps N-1, 2N-1, ... (Lightning's meaning); None:
            the trainer's ``log_every_n_steps``.
        include: qualified-name globs selecting the modules whose input is the net (any type);
            None: all GAAF / supported activation modules.
        bins: histogram bins on fixed, equal-width edges over ``value_range`` (at most 512).
        value_range: histogram range. Nets outside it are not clamped into the edge bins (that
            would fake mass at the edges) but counted as ``below`` / ``above`` in the saved stats.
        thresholds: overrides, keyed by layer-name glob or plain activation class name (``"Tanh"``):
            a number ``t`` (saturated when ``|z| > t``) or a pair ``(lo, hi)`` (saturated when
            ``z < lo`` or ``z > hi``; None = no bound). A module whose area cannot be computed (not
            elementwise) and has no override reports NaN saturation.
        split: ``"test"`` or ``"val"``: the evaluation loop whose data gives the held-out statistics.

    Logged every N steps (after one ``all_reduce`` of the sums over ranks): ``gaaf/saturation/<layer>``,
    ``gaaf/net_mean/<layer>``, ``gaaf/net_std/<layer>`` to every logger and ``callback_metrics``;
    ``gaaf/net_hist/<layer>`` histograms to W&B and TensorBoard. Held-out: the same keys with
    ``_test`` / ``_val`` (``gaaf/saturation_test/<layer>``, ``gaaf/net_hist_test/<layer>``...).
    Files: ``stats/saturation.json``, ``report/saturation.png``, ``report/net_hist_<split>.png``.
    With gradient accumulation a logged step covers all micro-batches of that optimizer step. std is
    the population standard deviation.
    """

    statistic = "saturation"
    summary_is_logged = True

    def __init__(
        self,
        log_every_n_steps: int | None = None,
        include: list[str] | None = None,
        bins: int = 50,
        value_range: tuple[float, float] = (-5.0, 5.0),
        thresholds: dict[str, float | tuple[float | None, float | None]] | None = None,
        split: Literal["test", "val"] = "test",
    ) -> None:
        owner = type(self).__name__
        super().__init__(log_every_n_steps)
        self.include = check_include(owner, include)
        self.bins = check_bins(owner, bins)
        try:
            lo, hi = (float(v) for v in value_range)
        except (TypeError, ValueError):
            raise ValueError(
                f"{owner}: value_range must be a pair (low, high), got {value_range!r}"
            ) from None
        if not (math.isfinite(lo) and math.isfinite(hi) and lo < hi):
            raise ValueError(f"{owner}: value_range must be finite with low < high, got {value_range!r}")
        self.split = check_split(owner, split)
        if thresholds is not None and not isinstance(thresholds, Mapping):
            raise ValueError(
                f"{owner}: thresholds must be a dict such as {{'Tanh': 2.0}}, got {thresholds!r}"
            )
        self.value_range = (lo, hi)
        self.thresholds = dict(thresholds or {})
        for key, value in self.thresholds.items():
            check_override(key, value)
        self.edges = np.linspace(lo, hi, bins + 1)

        self._layers: dict[str, nn.Module] = {}
        self._intervals: dict[str, list[Interval] | None] = {}
        self._acc: NetAccumulator | None = None
        self._eval_acc: NetAccumulator | None = None
        self._hooks = HookSet()
        self._eval_hooks = HookSet()
        self._pending_step: int | None = None
        self.eval_stats: dict[str, dict[str, Any]] | None = None

    @override
    def _state_key_args(self) -> dict[str, Any]:
        return {
            **super()._state_key_args(),
            "include": self.include,
            "bins": self.bins,
            "value_range": self.value_range,
            "split": self.split,
        }

    # -- setup ---------------------------------------------------------------------------------

    def _find_layers(self, pl_module: pl.LightningModule) -> None:
        # After every setup(): GAAF surgery in GAAFCallback.setup has already replaced modules.
        self._layers = activation_modules(pl_module, self.include)
        require_layers(type(self).__name__, self._layers, "activation modules")
        self._intervals = resolve_intervals(self._layers, self.thresholds)
        unknown = [name for name, iv in self._intervals.items() if iv is None]
        if unknown:
            rank_zero_warn(
                f"SaturationMonitor: cannot derive the saturation area of {', '.join(unknown)} (not an "
                "elementwise activation); their saturation reads NaN unless thresholds={'<layer>': t} is given"
            )

    @override
    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._find_layers(pl_module)
        self._acc = self._accumulator(pl_module.device)
        self.start_history(trainer, self._layers, self._empty_records)

    def _empty_records(self, n: int) -> dict[str, list[Any]]:
        return {
            "count": [0] * n,
            **{k: [math.nan] * n for k in ("saturation", "mean", "std")},
            "below": [0] * n,
            "above": [0] * n,
            "hist": [[0] * self.bins for _ in range(n)],
        }

    def _accumulator(self, device: torch.device) -> NetAccumulator:
        return NetAccumulator(list(self._layers), self._intervals, self.bins, self.value_range, device)

    # -- training steps ------------------------------------------------------------------------

    @override
    def on_train_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        step = trainer.global_step
        if self._pending_step is not None and step != self._pending_step:
            self._flush(trainer)
        if self._layers and self.is_due(step):
            self._acc.attach(self._layers, self._hooks, pl_module)
            self._pending_step = step

    @override
    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        self._hooks.remove()
        if self._pending_step is not None and trainer.global_step != self._pending_step:
            self._flush(trainer)

    @override
    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._pending_step is not None:
            self._flush(trainer)

    def _flush(self, trainer: pl.Trainer) -> None:
        """Reduce the pending step's sums over ranks, append them to the history and log them."""
        step, self._pending_step = self._pending_step, None
        stats = self._acc.summarize(self._acc.reduce(trainer))
        self.mark_recorded()
        self.steps.append(step)
        for name, s in stats.items():
            for key in self.history[name]:
                self.history[name][key].append(s[key])
        self._log(trainer, stats, "", step)

    def _log(
        self, trainer: pl.Trainer, stats: Mapping[str, Mapping[str, Any]], suffix: str, step: int
    ) -> None:
        metrics = {}
        for name, s in stats.items():
            metrics[f"gaaf/saturation{suffix}/{name}"] = s["saturation"]
            metrics[f"gaaf/net_mean{suffix}/{name}"] = s["mean"]
            metrics[f"gaaf/net_std{suffix}/{name}"] = s["std"]
        hists = sums = None
        if wants_media(trainer):
            hists = {f"gaaf/net_hist{suffix}/{name}": (s["hist"], self.edges) for name, s in stats.items()}
            sums = {f"gaaf/net_hist{suffix}/{name}": (s["sum"], s["sumsq"]) for name, s in stats.items()}
        self.log_step(trainer, metrics, step, hists, sums)

    @override
    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._hooks.remove()
        if self._pending_step is not None:
            self._flush(trainer)
        self.save(trainer)

    @override
    def release(self) -> None:
        self._hooks.remove()
        self._eval_hooks.remove()
        self._pending_step = None  # its sums were not reduced across ranks yet
        self._eval_acc = None

    # -- held-out data, in Lightning's evaluation loops ------------------------------------------

    def _eval_start(self, pl_module: pl.LightningModule) -> None:
        if not self._layers:
            self._find_layers(pl_module)
        if self._layers:
            self._eval_acc = self._accumulator(pl_module.device)
            self._eval_acc.attach(self._layers, self._eval_hooks)

    def _eval_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._eval_hooks.remove()
        acc, self._eval_acc = self._eval_acc, None
        if acc is None:
            return
        self.eval_stats = acc.summarize(acc.reduce(trainer))
        self.mark_recorded()
        self._log(trainer, self.eval_stats, f"_{self.split}", trainer.global_step)

    @override
    def on_test_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.split == "test":
            self._eval_start(pl_module)

    @override
    def on_test_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.split == "test":
            self._eval_end(trainer, pl_module)

    @override
    def on_test_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.split == "test":
            self.save(trainer)

    @override
    def on_validation_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.split == "val" and not trainer.sanity_checking:
            self._eval_start(pl_module)

    @override
    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.split == "val" and not trainer.sanity_checking:
            self._eval_end(trainer, pl_module)

    @override
    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # During fit the file is written at the end of training; trainer.validate() writes it here.
        if self.split == "val" and trainer.state.fn == TrainerFn.VALIDATING:
            self.save(trainer)

    # -- files -----------------------------------------------------------------------------------

    @override
    def summary(self) -> dict[str, float]:
        out: dict[str, float] = {}
        for name, s in (self.eval_stats or {}).items():
            for key, field in (("saturation", "saturation"), ("net_mean", "mean"), ("net_std", "std")):
                out[f"gaaf/{key}_{self.split}/{name}"] = s[field]
        return out

    @override
    def stats(self) -> dict[str, Any]:
        return {
            "log_every_n_steps": self._every,
            "bins": self.bins,
            "range": list(self.value_range),
            "edges": self.edges.tolist(),
            "thresholds": {
                name: {
                    "activation": type(plain_activation(module)).__name__,
                    "intervals": None
                    if self._intervals.get(name) is None
                    else [list(iv) for iv in self._intervals[name]],
                }
                for name, module in self._layers.items()
            },
            "steps": list(self.steps),
            "layers": self.history,
            "eval": None
            if self.eval_stats is None
            else {
                "split": self.split,
                "layers": {
                    name: {k: v for k, v in s.items() if k not in ("sum", "sumsq")}
                    for name, s in self.eval_stats.items()
                },
            },
        }

    @override
    def draw(self, stats: Mapping[str, Any], out: Path) -> dict[str, Path]:
        images = {}
        if stats["steps"]:
            images["gaaf/report/saturation"] = plots.plot_saturation([("", stats)], out / "saturation.png")
        if stats["eval"] is not None:
            name = f"net_hist_{self.split}"
            images[f"gaaf/report/{name}"] = plots.plot_net_hist([("", stats)], out / f"{name}.png")
        return images
