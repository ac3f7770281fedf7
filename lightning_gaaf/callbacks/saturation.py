"""SaturationMonitor: how many nets (pre-activations) sit where the activation passes no gradient."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any, Literal

import numpy as np
import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import Callback
from pytorch_lightning.utilities.rank_zero import rank_zero_warn
from torch import Tensor, nn

from lightning_gaaf.callbacks import plots
from lightning_gaaf.callbacks._utils import (
    SPLITS,
    HookSet,
    StepHistory,
    activation_modules,
    all_reduce_sum,
    check_include,
    check_interval,
    evaluation_pass,
    in_extra_forward,
    is_log_step,
    log_images,
    log_step,
    log_summary,
    plain_activation,
    report_dir,
    require_layers,
    stats_dir,
    wandb_runs,
    write_json,
)
from lightning_gaaf.callbacks.thresholds import Interval, check_override, resolve_intervals

_FIELDS = ("count", "sum", "sumsq", "saturated", "below", "above")
_N = len(_FIELDS)


class NetAccumulator:
    """Per-layer sums of nets kept on the device, one ``(layers, 6 + bins)`` float64 tensor.

    Columns: count, sum, sum of squares, saturated count, count below ``range``, count above
    ``range``, then the histogram counts on the fixed edges. Sums add up across batches and ranks,
    so one ``all_reduce(SUM)`` of the tensor gives the statistics of the union of all data.
    """

    def __init__(
        self,
        names: Sequence[str],
        intervals: Mapping[str, list[Interval] | None],
        bins: int,
        value_range: tuple[float, float],
        device: torch.device,
    ) -> None:
        self.names = list(names)
        self.bins = bins
        self.lo, self.hi = float(value_range[0]), float(value_range[1])
        self.intervals = [intervals.get(n) for n in self.names]
        self.buf = torch.zeros(len(self.names), _N + bins, dtype=torch.float64, device=device)

    def _saturated(self, i: int, z: Tensor) -> Tensor:
        intervals = self.intervals[i] or []
        if len(intervals) == 2 and intervals[0][0] == -math.inf and intervals[1][1] == math.inf:
            (_, a), (b, _) = intervals
            if a == -b:  # symmetric (tanh, sigmoid, hardtanh): one pass
                return (z.abs() > b).sum()
        count = torch.zeros((), dtype=torch.int64, device=z.device)
        for lo, hi in intervals:
            if lo == -math.inf:
                count = count + (z < hi).sum()
            elif hi == math.inf:
                count = count + (z > lo).sum()
            else:
                count = count + ((z > lo) & (z < hi)).sum()
        return count

    def update(self, i: int, net: Tensor) -> None:
        z = net.detach().reshape(-1).float()
        counts = torch.stack([self._saturated(i, z), (z < self.lo).sum(), (z > self.hi).sum()])
        row = self.buf[i]
        row[0] += z.numel()
        row[1:3] += torch.stack([z.sum(), torch.dot(z, z)]).double()
        row[3:6] += counts.double()
        row[_N:] += torch.histc(z, bins=self.bins, min=self.lo, max=self.hi).double()

    def pre_hook(self, i: int, skip_extra: bool):
        """A forward pre-hook recording the module's input: the net, before any in-place activation."""

        def hook(module: nn.Module, args: tuple[Any, ...]) -> None:
            if args and isinstance(args[0], Tensor) and not (skip_extra and in_extra_forward()):
                self.update(i, args[0])

        return hook

    def attach(self, layers: Mapping[str, nn.Module], hooks: HookSet, skip_extra: bool = True) -> None:
        """Pre-hooks on ``layers``; with ``skip_extra`` they ignore other monitors' probe forwards."""
        for i, name in enumerate(self.names):
            hooks.add(layers[name].register_forward_pre_hook(self.pre_hook(i, skip_extra)))

    def reduce(self, trainer: pl.Trainer) -> np.ndarray:
        """Sum over ranks (one collective), copy to the host (one transfer), reset the sums."""
        reduced = all_reduce_sum(trainer, self.buf)
        host = reduced.to("cpu", copy=True).numpy()
        self.buf.zero_()
        return host

    def summarize(self, host: np.ndarray) -> dict[str, dict[str, Any]]:
        """Per layer: count, saturation fraction, mean, std (population), below/above, histogram."""
        out = {}
        for i, name in enumerate(self.names):
            count, total, sumsq, saturated, below, above = (float(v) for v in host[i, :_N])
            mean = total / count if count else math.nan
            var = max(sumsq / count - mean * mean, 0.0) if count else math.nan
            known = self.intervals[i] is not None
            out[name] = {
                "count": int(count),
                "saturation": saturated / count if count and known else math.nan,
                "mean": mean,
                "std": math.sqrt(var) if count else math.nan,
                "below": int(below),
                "above": int(above),
                "hist": [int(c) for c in np.rint(host[i, _N:])],
            }
        return out


class SaturationMonitor(StepHistory, Callback):
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

    Args:
        log_every_n_steps: record every N optimizer steps (None: the trainer's ``log_every_n_steps``).
        include: qualified-name globs selecting the modules whose input is the net (any type);
            None: all GAAF / supported activation modules.
        bins: histogram bins on fixed, equal-width edges over ``range`` (at most 512, W&B's limit).
        range: histogram range. Nets outside it are not clamped into the edge bins (that would fake
            mass at the edges) but counted separately as ``below`` / ``above`` in the saved stats.
        thresholds: overrides, keyed by layer-name glob or plain activation class name (``"Tanh"``):
            a number ``t`` (saturated when ``|z| > t``) or a pair ``(lo, hi)`` (saturated when
            ``z < lo`` or ``z > hi``; None = no bound). A module whose area cannot be computed (not
            elementwise) and has no override reports NaN saturation.
        on_fit_end_split: at the end of fit, the same statistics over this whole dataloader of the
            datamodule (paper Figures 3 and 5), model in eval mode.

    Logged every N steps (rank 0, after one ``all_reduce`` of the sums over ranks):
    ``gaaf/saturation/<layer>``, ``gaaf/net_mean/<layer>``, ``gaaf/net_std/<layer>`` to all
    loggers, ``gaaf/net_hist/<layer>`` (``wandb.Histogram``) to W&B only. At the end:
    ``gaaf/{saturation,net_mean,net_std}_<split>/<layer>`` in the run summary,
    ``gaaf/net_hist_<split>/<layer>`` histograms, ``<run_dir>/stats/saturation.json`` and the
    figures ``report/saturation.png`` and ``report/net_hist_<split>.png``. With gradient
    accumulation a logged step covers all micro-batches of that optimizer step. std is the
    population standard deviation.
    """

    def __init__(
        self,
        log_every_n_steps: int | None = None,
        include: list[str] | None = None,
        bins: int = 50,
        range: tuple[float, float] = (-5.0, 5.0),  # noqa: A002 - the public name
        thresholds: dict[str, float | tuple[float | None, float | None]] | None = None,
        on_fit_end_split: Literal["test", "val"] = "test",
    ) -> None:
        owner = type(self).__name__
        self.log_every_n_steps = check_interval(owner, "log_every_n_steps", log_every_n_steps)
        self.include = check_include(owner, include)
        if isinstance(bins, bool) or not isinstance(bins, int) or not 1 <= bins <= 512:
            raise ValueError(
                f"{owner}: bins must be an integer in [1, 512] (W&B's histogram limit), got {bins!r}"
            )
        try:
            lo, hi = (float(v) for v in range)
        except (TypeError, ValueError):
            raise ValueError(f"{owner}: range must be a pair (low, high), got {range!r}") from None
        if not (math.isfinite(lo) and math.isfinite(hi) and lo < hi):
            raise ValueError(f"{owner}: range must be finite with low < high, got {range!r}")
        if on_fit_end_split not in SPLITS:
            raise ValueError(f"{owner}: on_fit_end_split must be 'test' or 'val', got {on_fit_end_split!r}")
        if thresholds is not None and not isinstance(thresholds, Mapping):
            raise ValueError(
                f"{owner}: thresholds must be a dict such as {{'Tanh': 2.0}}, got {thresholds!r}"
            )
        self.bins = bins
        self.range = (lo, hi)
        self.thresholds = dict(thresholds or {})
        for key, value in self.thresholds.items():
            check_override(key, value)
        self.on_fit_end_split = on_fit_end_split
        self.edges = np.linspace(lo, hi, bins + 1)

        self._layers: dict[str, nn.Module] = {}
        self._intervals: dict[str, list[Interval] | None] = {}
        self._acc: NetAccumulator | None = None
        self._hooks = HookSet()
        self._pending_step: int | None = None
        self._every = 0
        self.steps: list[int] = []
        self.history: dict[str, dict[str, list]] = {}
        self.eval_stats: dict[str, dict[str, Any]] | None = None

    # -- setup ---------------------------------------------------------------------------------

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
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
        self._every = (
            self.log_every_n_steps if self.log_every_n_steps is not None else trainer.log_every_n_steps
        )
        self._acc = self._accumulator(pl_module.device)
        n = len(self.steps)  # a layer new to a resumed history gets empty records for earlier steps
        for name in self._layers:
            self.history.setdefault(
                name,
                {
                    "count": [0] * n,
                    **{k: [math.nan] * n for k in ("saturation", "mean", "std")},
                    "below": [0] * n,
                    "above": [0] * n,
                    "hist": [[0] * self.bins for _ in range(n)],
                },
            )

    def _accumulator(self, device: torch.device) -> NetAccumulator:
        return NetAccumulator(list(self._layers), self._intervals, self.bins, self.range, device)

    # -- training steps ------------------------------------------------------------------------

    def on_train_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        step = trainer.global_step
        if self._pending_step is not None and step != self._pending_step:
            self._flush(trainer)
        if self._layers and is_log_step(step, self._every):
            self._acc.attach(self._layers, self._hooks)
            self._pending_step = step

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        self._hooks.remove()
        if self._pending_step is not None and trainer.global_step != self._pending_step:
            self._flush(trainer)

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._pending_step is not None:
            self._flush(trainer)

    def on_exception(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException
    ) -> None:
        self._hooks.remove()

    def _flush(self, trainer: pl.Trainer) -> None:
        step, self._pending_step = self._pending_step, None
        stats = self._acc.summarize(self._acc.reduce(trainer))
        self.steps.append(step)
        for name, s in stats.items():
            for key in self.history[name]:
                self.history[name][key].append(s[key])
        metrics = {}
        for name, s in stats.items():
            metrics[f"gaaf/saturation/{name}"] = s["saturation"]
            metrics[f"gaaf/net_mean/{name}"] = s["mean"]
            metrics[f"gaaf/net_std/{name}"] = s["std"]
        log_step(trainer, metrics, step, self._histograms(trainer, "net_hist", stats))

    def _histograms(self, trainer: pl.Trainer, prefix: str, stats: Mapping[str, Mapping]) -> dict[str, Any]:
        """``wandb.Histogram`` per layer on the fixed edges (only built when W&B is logging)."""
        if not wandb_runs(trainer):
            return {}
        import wandb

        return {
            f"gaaf/{prefix}/{name}": wandb.Histogram(np_histogram=(np.asarray(s["hist"]), self.edges))
            for name, s in stats.items()
            if s["count"]
        }

    # -- end of fit ----------------------------------------------------------------------------

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # on_train_end, not on_fit_end: the model is still on its device and the ranks still joined.
        self._hooks.remove()
        if self._pending_step is not None:
            self._flush(trainer)
        if self._layers:
            acc = self._accumulator(pl_module.device)
            hooks = HookSet()
            acc.attach(self._layers, hooks)
            try:
                ran = evaluation_pass(trainer, pl_module, self.on_fit_end_split, type(self).__name__)
            finally:
                hooks.remove()
            if ran:
                self.eval_stats = acc.summarize(acc.reduce(trainer))
        if trainer.is_global_zero:
            self._save(trainer)

    def stats(self) -> dict[str, Any]:
        """Everything recorded so far, in the format of ``stats/saturation.json``."""
        return {
            "statistic": "saturation",
            "log_every_n_steps": self._every,
            "bins": self.bins,
            "range": list(self.range),
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
            else {"split": self.on_fit_end_split, "layers": self.eval_stats},
        }

    def _save(self, trainer: pl.Trainer) -> None:
        stats = self.stats()
        write_json(stats_dir(trainer) / "saturation.json", stats)
        images = {}
        out = report_dir(trainer)
        if self.steps:
            images["gaaf/report/saturation"] = plots.plot_saturation([("", stats)], out / "saturation.png")
        split = self.on_fit_end_split
        if self.eval_stats is not None:
            images[f"gaaf/report/net_hist_{split}"] = plots.plot_net_hist(
                [("", stats)], out / f"net_hist_{split}.png"
            )
            summary = {}
            for name, s in self.eval_stats.items():
                summary[f"gaaf/saturation_{split}/{name}"] = s["saturation"]
                summary[f"gaaf/net_mean_{split}/{name}"] = s["mean"]
                summary[f"gaaf/net_std_{split}/{name}"] = s["std"]
            log_summary(trainer, summary)
            log_step(
                trainer,
                {},
                trainer.global_step,
                self._histograms(trainer, f"net_hist_{split}", self.eval_stats),
            )
        log_images(trainer, images)
