"""NetVarMonitor: how much dropout shakes each node's net (paper Table 3)."""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from pytorch_lightning.utilities.seed import isolate_rng
from torch import Tensor, nn
from typing_extensions import override

from lightning_gaaf.callbacks._args import check_include, check_interval
from lightning_gaaf.callbacks._base import StepHistory, finite_means
from lightning_gaaf.callbacks._hooks import HookSet, probe_forwards
from lightning_gaaf.callbacks._layers import activation_modules, require_layers
from lightning_gaaf.callbacks._loggers import all_reduce_sum
from lightning_gaaf.stats import plots


def model_input(batch: Any) -> Any:
    """What the model's ``forward`` takes from a batch: the batch itself if it is a tensor, its first
    element for tuples/lists (``(x, y)``), or the ``x``/``input``/``inputs``/``image``/``images`` entry
    of a dict."""
    if isinstance(batch, Tensor):
        return batch
    if isinstance(batch, (tuple, list)) and batch:
        return batch[0]
    if isinstance(batch, Mapping):
        for key in ("x", "input", "inputs", "image", "images"):
            if key in batch:
                return batch[key]
    raise TypeError(
        f"cannot find the model input in a batch of type {type(batch).__name__}: use a tensor, an (x, y) "
        "tuple or a dict with an 'x' entry"
    )


class _RepeatVariance:
    """Per-node variance of one module's nets over repeated forwards.

    Sums are shifted by the first repeat (exact zeros without randomness, no cancellation). A module
    called several times per forward (a shared ``nn.ReLU``) keeps one state per call position.

    With ``tiled=(repeats, rows)`` the repeats come in one forward, stacked along the batch
    dimension (repeat ``r`` is rows ``r * rows ... (r + 1) * rows - 1``); a net whose first dimension
    is not ``repeats * rows`` (a model that moves the batch dimension) sets ``mismatch``.
    """

    def __init__(self, tiled: tuple[int, int] | None = None) -> None:
        self.calls: list[list[Tensor]] = []  # per call position: [first, sum of d, sum of d^2]
        self.repeats = tiled[0] if tiled else 0
        self.tiled = tiled
        self.mismatch = False
        self._position = 0

    def start_repeat(self) -> None:
        self.repeats += 1
        self._position = 0

    def add(self, net: Tensor) -> None:
        z = net.detach().float()
        if self.tiled is not None:
            repeats, rows = self.tiled
            if z.dim() == 0 or z.shape[0] != repeats * rows:
                self.mismatch = True
                return
            d = z.unflatten(0, (repeats, rows))
            d = d - d[:1]
            self.calls.append([d[0], d.sum(0), (d * d).sum(0)])
            return
        if self._position == len(self.calls):
            self.calls.append([z.clone(), torch.zeros_like(z), torch.zeros_like(z)])
        else:
            first, s1, s2 = self.calls[self._position]
            d = z - first
            s1.add_(d)
            s2.addcmul_(d, d)
        self._position += 1

    def sum_and_count(self, device: torch.device) -> Tensor:
        """``[sum over nodes and samples of the unbiased variance, number of nodes x samples]``."""
        out = torch.zeros(2, dtype=torch.float64, device=device)
        if self.repeats < 2:
            return out
        for _, s1, s2 in self.calls:
            var = (s2 - s1 * s1 / self.repeats) / (self.repeats - 1)
            out[0] += var.clamp_min(0).sum(dtype=torch.float64)
            out[1] += var.numel()
        return out


class NetVarMonitor(StepHistory):
    """Variance of each node's net over repeated dropout masks, averaged per layer.

    After optimizer steps N-1, 2N-1, ... (``log_every_n_steps``), before the training forward, the first ``max_samples``
    samples of the current batch are run ``repeats`` more times in train mode under ``no_grad``, each
    time with fresh dropout masks (as one forward of the samples tiled ``repeats`` times along the
    batch dimension; see :meth:`probe`). Forward pre-hooks on the activation modules record every node's net (the activation's input) and the
    unbiased variance over the repeats is averaged over nodes and samples (summed across DDP ranks
    before dividing). The extra forwards change nothing in training:

    * the RNG states (torch CPU and CUDA, numpy, Python) are restored afterwards, so the training
      forward draws exactly the masks it would have drawn without this callback;
    * all module buffers (BatchNorm running statistics, ``num_batches_tracked``) are saved and
      restored: BatchNorm stays in train mode during the probes (normalising with batch statistics
      as the training forward does) but its running statistics are not moved by them.

    Without dropout (or other randomness) the variance is exactly zero.

    Cost: one no-grad forward of ``repeats x max_samples`` rows every ``log_every_n_steps`` steps
    (memory: that many rows' activations at once). The variance is a per-node, per-sample quantity,
    so a fixed part of the batch estimates the same mean as the whole batch at a fraction of the
    cost (``benchmarks/callbacks.py --each`` times it). Under BatchNorm in train mode the probes
    normalise with the statistics of that part; ``max_samples=None`` probes the whole batch.

    Args:
        log_every_n_steps: probe every N optimizer steps (Lightning's meaning; None: the trainer's).
        repeats: forwards per probe (at least 2).
        max_samples: samples of the batch used by the probes (None: all).
        include: qualified-name globs of the modules whose input is the net (None: all GAAF /
            supported activation modules).

    Logged: ``gaaf/net_var/<layer>`` to every logger and ``callback_metrics``. At the end of fit:
    the mean over probes as ``gaaf/net_var_mean/<layer>`` in the run summary,
    ``stats/net_var.json`` and ``report/net_var.png``.
    """

    statistic = "net_var"

    def __init__(
        self,
        log_every_n_steps: int | None = 100,
        repeats: int = 20,
        max_samples: int | None = 16,
        include: list[str] | None = None,
    ) -> None:
        owner = type(self).__name__
        super().__init__(log_every_n_steps)
        if isinstance(repeats, bool) or not isinstance(repeats, int) or repeats < 2:
            raise ValueError(
                f"{owner}: repeats must be an integer >= 2 (a variance needs two samples), got {repeats!r}"
            )
        self.repeats = repeats
        self.max_samples = check_interval(owner, "max_samples", max_samples)
        self.include = check_include(owner, include)
        self._layers: dict[str, nn.Module] = {}

    @override
    def _state_key_args(self) -> dict[str, Any]:
        return {
            **super()._state_key_args(),
            "repeats": self.repeats,
            "max_samples": self.max_samples,
            "include": self.include,
        }

    @override
    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._layers = activation_modules(pl_module, self.include)
        require_layers(type(self).__name__, self._layers, "activation modules")
        self.start_history(trainer, self._layers)

    @override
    def on_train_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        step = trainer.global_step
        if not self._layers or not self.is_due(step):
            return
        values = self.probe(trainer, pl_module, batch)
        self.append(step, values)
        self.log_step(trainer, {f"gaaf/net_var/{name}": v for name, v in values.items()}, step)

    def probe(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any) -> dict[str, float]:
        """Mean per-node net variance of each layer over ``repeats`` forwards of ``batch``.

        The repeats run as one forward of the probe samples tiled ``repeats`` times along the batch
        dimension: every row draws its own dropout masks, and a batch repeated ``k`` times has the
        mean and (biased) variance of the original, so BatchNorm in train mode normalises as it would
        for the samples alone. One large forward costs a fraction of ``repeats`` small ones. A model
        whose activations do not keep the batch first falls back to ``repeats`` separate forwards.
        """
        x = model_input(batch)
        if self.max_samples is not None and isinstance(x, Tensor) and x.dim() > 0:
            x = x[: self.max_samples]
        buffers = [b.detach().clone() for b in pl_module.buffers()]
        try:
            trackers = None
            if isinstance(x, Tensor) and x.dim() > 0:
                tiled = x.repeat(self.repeats, *([1] * (x.dim() - 1)))
                trackers = self._forwards(trainer, pl_module, [tiled], (self.repeats, x.shape[0]))
                if any(t.mismatch for t in trackers):
                    trackers = None
                    self._restore(pl_module, buffers)
            if trackers is None:
                trackers = self._forwards(trainer, pl_module, [x] * self.repeats, None)
        finally:
            self._restore(pl_module, buffers)
        rows = [t.sum_and_count(pl_module.device) for t in trackers]
        totals = all_reduce_sum(trainer, torch.stack(rows)).cpu().tolist()  # one collective, one transfer
        names = list(self._layers)
        return {name: s / c if c else math.nan for name, (s, c) in zip(names, totals, strict=True)}

    def _forwards(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        inputs: list[Any],
        tiled: tuple[int, int] | None,
    ) -> list[_RepeatVariance]:
        """Run ``inputs`` through the model in train mode under ``no_grad`` with the RNG states
        restored afterwards, recording every layer's nets."""
        trackers = [_RepeatVariance(tiled) for _ in self._layers]
        hooks = HookSet()
        for tracker, layer in zip(trackers, self._layers.values(), strict=True):
            hooks.add(layer.register_forward_pre_hook(_recorder(tracker)))
        try:
            with isolate_rng(), torch.no_grad(), probe_forwards(pl_module):
                for x in inputs:
                    if tiled is None:
                        for tracker in trackers:
                            tracker.start_repeat()
                    with trainer.precision_plugin.forward_context():
                        pl_module(x)
        finally:
            hooks.remove()
        return trackers

    @staticmethod
    def _restore(pl_module: pl.LightningModule, buffers: list[Tensor]) -> None:
        with torch.no_grad():
            for saved, buf in zip(buffers, pl_module.buffers(), strict=True):
                buf.copy_(saved)

    @override
    def summary(self) -> dict[str, float]:
        """Mean net variance over all logged steps per layer (paper Table 3), by summary key."""
        return {f"gaaf/net_var_mean/{name}": v for name, v in finite_means(self.history).items()}

    @override
    def stats(self) -> dict[str, Any]:
        return {
            "definition": "per-node variance of the net over repeated dropout masks, mean over nodes and samples",
            **self.history_stats(),
            "repeats": self.repeats,
            "max_samples": self.max_samples,
            "summary": finite_means(self.history),
        }

    @override
    def draw(self, stats: Mapping[str, Any], out: Path) -> dict[str, Path]:
        if not stats["steps"]:
            return {}
        return {"gaaf/report/net_var": plots.plot_net_var([("", stats)], out / "net_var.png")}


def _recorder(tracker: _RepeatVariance):
    def hook(module: nn.Module, args: tuple[Any, ...]) -> None:
        if args and isinstance(args[0], Tensor):
            tracker.add(args[0])

    return hook
