"""NetAccumulator: per-layer sums of nets on the device that add up across batches and ranks."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch
from torch import Tensor, nn

from lightning_gaaf.callbacks._hooks import HookSet, in_probe_forward
from lightning_gaaf.callbacks._loggers import all_reduce_sum
from lightning_gaaf.callbacks.thresholds import Interval

_FIELDS = ("count", "sum", "sumsq", "saturated", "below", "above")
_N = len(_FIELDS)


class NetAccumulator:
    """Per-layer sums of nets kept on the device, one ``(layers, 6 + bins)`` float64 tensor.

    Columns: count, sum, sum of squares, saturated count, count below ``value_range``, count above
    ``value_range``, then the histogram counts on the fixed edges. Sums add up across batches and ranks,
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

    def pre_hook(self, i: int, model: nn.Module | None):
        """A forward pre-hook recording the module's input: the net, before any in-place activation."""

        def hook(module: nn.Module, args: tuple[Any, ...]) -> None:
            if args and isinstance(args[0], Tensor) and not (model is not None and in_probe_forward(model)):
                self.update(i, args[0])

        return hook

    def attach(self, layers: Mapping[str, nn.Module], hooks: HookSet, model: nn.Module | None = None) -> None:
        """Pre-hooks on ``layers``; given the ``model`` they belong to, they ignore forwards another
        monitor runs through it (net-variance probes)."""
        for i, name in enumerate(self.names):
            hooks.add(layers[name].register_forward_pre_hook(self.pre_hook(i, model)))

    def reduce(self, trainer: pl.Trainer) -> np.ndarray:
        """Sum over ranks (one collective), copy to the host (one transfer), reset the sums."""
        reduced = all_reduce_sum(trainer, self.buf)
        host = reduced.to("cpu", copy=True).numpy()
        self.buf.zero_()
        return host

    def summarize(self, host: np.ndarray) -> dict[str, dict[str, Any]]:
        """Per layer: count, saturation fraction, mean, std (population), below/above, histogram, sums."""
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
                "sum": total,
                "sumsq": sumsq,
            }
        return out
