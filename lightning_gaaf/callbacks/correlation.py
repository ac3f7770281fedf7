"""NodeCorrelationMonitor: how many hidden nodes of a layer move together on held-out data (paper Table 1)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pytorch_lightning as pl
import torch
from pytorch_lightning.trainer.states import TrainerFn
from torch import Tensor, nn
from typing_extensions import override

from lightning_gaaf.callbacks._args import check_include, check_split
from lightning_gaaf.callbacks._base import Monitor
from lightning_gaaf.callbacks._hooks import HookSet
from lightning_gaaf.callbacks._layers import activation_modules, require_layers
from lightning_gaaf.callbacks._loggers import all_reduce_sum, log_table
from lightning_gaaf.stats import plots
from lightning_gaaf.stats.schema import CORRELATION_COLUMNS

#: A node is dead (excluded) when its variance is at most this fraction of (1 + mean^2).
DEAD_VARIANCE = 1e-12


class _Moments:
    """Running ``n``, ``sum x`` and ``sum x x^T`` (float64, on the device) of one node vector."""

    def __init__(self) -> None:
        self.n: Tensor | None = None
        self.s: Tensor | None = None
        self.ss: Tensor | None = None

    def add(self, out: Tensor) -> None:
        x = out.detach()
        x = x.flatten(2).mean(-1) if x.dim() > 2 else x.reshape(x.shape[0], -1)  # conv: channel means
        x = x.double()
        if self.s is None:
            d = x.shape[1]
            self.n = torch.zeros(1, dtype=torch.float64, device=x.device)
            self.s = torch.zeros(d, dtype=torch.float64, device=x.device)
            self.ss = torch.zeros(d, d, dtype=torch.float64, device=x.device)
        self.n += x.shape[0]
        self.s += x.sum(0)
        self.ss.addmm_(x.T, x)


def count_correlated_pairs(
    n: float, s: np.ndarray, ss: np.ndarray, thresholds: Sequence[float]
) -> tuple[list[int], int, int]:
    """Pairs ``i < j`` of live nodes with ``|corr| > t`` for each threshold, live-pair total, dead count."""
    mean = s / n
    cov = ss / n - np.outer(mean, mean)
    var = np.diag(cov).copy()
    live = var > DEAD_VARIANCE * (1.0 + mean * mean)
    k = int(live.sum())
    dead = len(var) - k
    if k < 2:
        return [0 for _ in thresholds], 0, dead
    cov = cov[np.ix_(live, live)]
    std = np.sqrt(var[live])
    corr = np.abs(cov / np.outer(std, std))
    upper = corr[np.triu_indices(k, 1)]
    return [int((upper > t).sum()) for t in thresholds], k * (k - 1) // 2, dead


class _Collector:
    """Forward hook feeding one :class:`_Moments` per call position of a module within a forward."""

    def __init__(self) -> None:
        self.moments: list[_Moments] = []
        self.position = 0

    def hook(self, module: nn.Module, args: tuple[Any, ...], out: Any) -> None:
        if not isinstance(out, Tensor) or out.dim() < 2:
            return
        if self.position == len(self.moments):
            self.moments.append(_Moments())
        self.moments[self.position].add(out)
        self.position += 1


class NodeCorrelationMonitor(Monitor):
    """Pearson correlation between the hidden nodes of each layer on held-out data.

    A hidden node is one output of an activation module (GAAF or plain; or modules matched by
    ``include``). Forward hooks collect the outputs inside Lightning's own evaluation loop: during
    ``trainer.test(...)`` for ``split="test"`` (gaaf-fit runs it once after fit), during every
    validation run for ``split="val"`` (the last one is kept). After a plain ``trainer.fit`` call
    ``trainer.test(...)`` to get the table; no hidden pass over the data is made. For conv feature
    maps (``(N, C, ...)``) a node is a channel and its value per sample is the channel's spatial
    mean. Sums ``n``, ``sum x`` and ``sum x x^T`` are kept in float64 on the device and summed across
    ranks with one ``all_reduce`` before the correlation is formed. Dead nodes (zero variance over
    the split, e.g. ReLUs that never fire; numerically: variance <= 1e-12 (1 + mean^2)) have no
    correlation and are excluded: ``total_pairs`` counts pairs of live nodes only. A module called
    several times per forward is reported once per call as ``<layer>``, ``<layer>#2``, ...

    Args:
        thresholds: count pairs with ``|corr|`` above each of these.
        split: ``"test"`` or ``"val"``: the evaluation loop whose data is used.
        include: qualified-name globs of the modules whose output is the node vector.

    Logged: ``gaaf/node_correlation_<split>_<threshold>/<layer>`` (share of live pairs above the
    threshold) to every logger and ``callback_metrics``; the rows as the W&B table
    ``gaaf/node_correlation``. Files: ``stats/node_correlation.json`` (rows with ``layer,
    threshold, pairs, total_pairs, nodes, dead_nodes``) and ``report/node_correlation.png``.
    """

    statistic = "node_correlation"

    def __init__(
        self,
        thresholds: Sequence[float] = (0.9, 0.8, 0.7, 0.6, 0.5),
        split: Literal["test", "val"] = "test",
        include: list[str] | None = None,
    ) -> None:
        super().__init__()
        owner = type(self).__name__
        try:
            self.thresholds = [float(t) for t in thresholds]
        except (TypeError, ValueError):
            raise ValueError(f"{owner}: thresholds must be numbers in [0, 1), got {thresholds!r}") from None
        if not self.thresholds or not all(0 <= t < 1 for t in self.thresholds):
            raise ValueError(f"{owner}: thresholds must be numbers in [0, 1), got {thresholds!r}")
        self.split = check_split(owner, split)
        self.include = check_include(owner, include)
        self.rows: list[dict[str, Any]] = []
        self._collectors: dict[str, _Collector] | None = None
        self._hooks = HookSet()

    @override
    def _state_key_args(self) -> dict[str, Any]:
        return {"thresholds": self.thresholds, "split": self.split, "include": self.include}

    def _start(self, pl_module: pl.LightningModule) -> None:
        layers = activation_modules(pl_module, self.include)
        require_layers(type(self).__name__, layers, "activation modules")
        if not layers:
            return
        collectors = {name: _Collector() for name in layers}
        for name, module in layers.items():
            self._hooks.add(module.register_forward_hook(collectors[name].hook))

        def new_forward(module: nn.Module, args: tuple[Any, ...]) -> None:
            for collector in collectors.values():
                collector.position = 0

        self._hooks.add(pl_module.register_forward_pre_hook(new_forward))
        self._collectors = collectors

    def _end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._hooks.remove()
        collectors, self._collectors = self._collectors, None
        if collectors is None:
            return
        self.rows = self._reduce(trainer, {name: c.moments for name, c in collectors.items()})
        self.mark_recorded()
        shares = {
            f"gaaf/node_correlation_{self.split}_{r['threshold']:g}/{r['layer']}": r["pairs"]
            / r["total_pairs"]
            for r in self.rows
            if r["total_pairs"]
        }
        self.log_step(trainer, shares, trainer.global_step)
        log_table(
            trainer,
            "gaaf/node_correlation",
            CORRELATION_COLUMNS,
            [[r[c] for c in CORRELATION_COLUMNS] for r in self.rows],
            trainer.global_step,
        )

    @override
    def on_test_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.split == "test":
            self._start(pl_module)

    @override
    def on_test_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.split == "test":
            self._end(trainer, pl_module)

    @override
    def on_test_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.split == "test" and self.rows:
            self.save(trainer)

    @override
    def on_validation_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.split == "val" and not trainer.sanity_checking:
            self._start(pl_module)

    @override
    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.split == "val" and not trainer.sanity_checking:
            self._end(trainer, pl_module)

    @override
    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.split == "val" and self.rows and trainer.state.fn == TrainerFn.VALIDATING:
            self.save(trainer)

    @override
    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.split == "val" and self.rows:
            self.save(trainer)

    @override
    def release(self) -> None:
        self._hooks.remove()
        self._collectors = None

    def _reduce(self, trainer: pl.Trainer, moments: dict[str, list[_Moments]]) -> list[dict]:
        entries = [
            (f"{name}#{k + 1}" if k else name, m) for name, ms in moments.items() for k, m in enumerate(ms)
        ]
        entries = [(label, m) for label, m in entries if m.s is not None]
        if not entries:
            return []
        flat = torch.cat([torch.cat([m.n, m.s, m.ss.reshape(-1)]) for _, m in entries])
        host = all_reduce_sum(trainer, flat).cpu().numpy()  # one collective, one transfer
        rows, offset = [], 0
        for label, m in entries:
            d = m.s.numel()
            n = float(host[offset])
            s = host[offset + 1 : offset + 1 + d]
            ss = host[offset + 1 + d : offset + 1 + d + d * d].reshape(d, d)
            offset += 1 + d + d * d
            pairs, total, dead = count_correlated_pairs(n, s, ss, self.thresholds)
            for t, p in zip(self.thresholds, pairs, strict=True):
                rows.append(
                    {
                        "layer": label,
                        "threshold": t,
                        "pairs": p,
                        "total_pairs": total,
                        "nodes": d,
                        "dead_nodes": dead,
                    }
                )
        return rows

    @override
    def stats(self) -> dict[str, Any]:
        return {
            "split": self.split,
            "thresholds": list(self.thresholds),
            "columns": list(CORRELATION_COLUMNS),
            "rows": list(self.rows),
        }

    @override
    def draw(self, stats: Mapping[str, Any], out: Path) -> dict[str, Path]:
        if not stats["rows"]:
            return {}
        path = plots.plot_node_correlation([("", stats)], out / "node_correlation.png")
        return {"gaaf/report/node_correlation": path}
