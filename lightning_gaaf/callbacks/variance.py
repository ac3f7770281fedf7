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

from lightning_gaaf.callbacks._args import check_include, check_interval, renamed_arguments
from lightning_gaaf.callbacks._base import StepHistory, finite_means
from lightning_gaaf.callbacks._hooks import HookSet, extra_forwards
from lightning_gaaf.callbacks._layers import activation_modules, require_layers
from lightning_gaaf.callbacks._loggers import all_reduce_sum, log_scalars
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
    """

    def __init__(self) -> None:
        self.calls: list[list[Tensor]] = []  # per call position: [first, sum of d, sum of d^2]
        self.repeats = 0
        self._position = 0

    def start_repeat(self) -> None:
        self.repeats += 1
        self._position = 0

    def add(self, net: Tensor) -> None:
        z = net.detach().float()
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
    time with fresh dropout masks. Forward
    pre-hooks on the activation modules record every node's net (the activation's input) and the
    unbiased variance over the repeats is averaged over nodes and samples (summed across DDP ranks
    before dividing). The extra forwards change nothing in training:

    * the RNG states (torch CPU and CUDA, numpy, Python) are restored afterwards, so the training
      forward draws exactly the masks it would have drawn without this callback;
    * all module buffers (BatchNorm running statistics, ``num_batches_tracked``) are saved and
      restored: BatchNorm stays in train mode during the probes (normalising with batch statistics
      as the training forward does) but its running statistics are not moved by them.

    Without dropout (or other randomness) the variance is exactly zero.

    Cost: ``repeats`` no-grad forwards of ``max_samples`` samples every ``log_every_n_steps`` steps. The
    variance is a per-node, per-sample quantity, so a fixed part of the batch estimates the same
    mean as the whole batch at a fraction of the cost: for the paper MLP (batch 128, CPU) probing
    full batches costs about 7 % of training time, 16 samples well under 1 %
    (``benchmarks/callbacks.py --each``). Under BatchNorm in train mode the probes normalise with the
    statistics of that part; ``max_samples=None`` probes the whole batch.

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
        **deprecated: Any,
    ) -> None:
        owner = type(self).__name__
        old = renamed_arguments(owner, deprecated, {"every_n_steps": "log_every_n_steps"})
        super().__init__(old.get("log_every_n_steps", log_every_n_steps))
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
        log_scalars(trainer, {f"gaaf/net_var/{name}": v for name, v in values.items()}, step)

    def probe(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any) -> dict[str, float]:
        """Mean per-node net variance of each layer over ``repeats`` forwards of ``batch``."""
        names = list(self._layers)
        trackers = [_RepeatVariance() for _ in names]
        hooks = HookSet()
        for tracker, name in zip(trackers, names, strict=True):
            hooks.add(self._layers[name].register_forward_pre_hook(_recorder(tracker)))
        buffers = [b.detach().clone() for b in pl_module.buffers()]
        x = model_input(batch)
        if self.max_samples is not None and isinstance(x, Tensor) and x.dim() > 0:
            x = x[: self.max_samples]
        try:
            with isolate_rng(), torch.no_grad(), extra_forwards():
                for _ in range(self.repeats):
                    for tracker in trackers:
                        tracker.start_repeat()
                    with trainer.precision_plugin.forward_context():
                        pl_module(x)
        finally:
            hooks.remove()
            with torch.no_grad():
                for saved, buf in zip(buffers, pl_module.buffers(), strict=True):
                    buf.copy_(saved)
        rows = [t.sum_and_count(pl_module.device) for t in trackers]
        totals = all_reduce_sum(trainer, torch.stack(rows)).cpu().tolist()  # one collective, one transfer
        return {name: s / c if c else math.nan for name, (s, c) in zip(names, totals, strict=True)}

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

    @override
    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.save(trainer)


def _recorder(tracker: _RepeatVariance):
    def hook(module: nn.Module, args: tuple[Any, ...]) -> None:
        if args and isinstance(args[0], Tensor):
            tracker.add(args[0])

    return hook
