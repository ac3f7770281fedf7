"""NodeCorrelation: how many hidden nodes of a layer move together on held-out data (paper Table 1)."""

from __future__ import annotations

import csv
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import Callback
from torch import Tensor, nn

from lightning_gaaf.callbacks import plots
from lightning_gaaf.callbacks._utils import (
    SPLITS,
    HookSet,
    activation_modules,
    all_reduce_sum,
    check_include,
    evaluation_pass,
    log_images,
    log_step,
    report_dir,
    require_layers,
    stats_dir,
    wandb_runs,
)

CSV_COLUMNS = ("layer", "threshold", "pairs", "total_pairs", "nodes", "dead_nodes")

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


class NodeCorrelation(Callback):
    """Pearson correlation between the hidden nodes of each layer on held-out data, at the end of fit.

    A hidden node is one output of an activation module (GAAF or plain; or modules matched by
    ``include``), collected by forward hooks while the model runs in eval mode over the whole
    ``split`` dataloader. For conv feature maps (more than 2 dims, channels first: ``(N, C, ...)``) a
    node is a channel and its value per sample is the channel's spatial mean. Sums ``n``, ``sum x`` and ``sum x x^T`` are kept in float64
    on the device and summed across ranks with one ``all_reduce`` before the correlation is formed.
    Dead nodes (zero variance over the split, e.g. ReLUs that never fire; numerically: variance
    <= 1e-12 (1 + mean^2)) have no correlation and are excluded: ``total_pairs`` counts pairs of
    live nodes only. A module called several times per forward is reported once per call as
    ``<layer>``, ``<layer>#2``, ...

    Args:
        thresholds: count pairs with ``|corr|`` above each of these.
        split: ``"test"`` or ``"val"`` dataloader of the datamodule (or LightningModule).
        include: qualified-name globs of the modules whose output is the node vector.

    Writes ``<run_dir>/stats/node_correlation.csv`` (columns ``layer, threshold, pairs,
    total_pairs, nodes, dead_nodes``) and ``<run_dir>/report/node_correlation.png``; logs the rows
    as the W&B table ``gaaf/node_correlation`` (rank 0).
    """

    def __init__(
        self,
        thresholds: Sequence[float] = (0.9, 0.8, 0.7, 0.6, 0.5),
        split: Literal["test", "val"] = "test",
        include: list[str] | None = None,
    ) -> None:
        owner = type(self).__name__
        try:
            self.thresholds = [float(t) for t in thresholds]
        except (TypeError, ValueError):
            raise ValueError(f"{owner}: thresholds must be numbers in [0, 1), got {thresholds!r}") from None
        if not self.thresholds or not all(0 <= t < 1 for t in self.thresholds):
            raise ValueError(f"{owner}: thresholds must be numbers in [0, 1), got {thresholds!r}")
        if split not in SPLITS:
            raise ValueError(f"{owner}: split must be 'test' or 'val', got {split!r}")
        self.split = split
        self.include = check_include(owner, include)
        self.rows: list[dict[str, Any]] = []

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        layers = activation_modules(pl_module, self.include)
        require_layers(type(self).__name__, layers, "activation modules")
        if not layers:
            return
        collectors = {name: _Collector() for name in layers}
        hooks = HookSet()
        for name, module in layers.items():
            hooks.add(module.register_forward_hook(collectors[name].hook))

        def new_forward(module: nn.Module, args: tuple[Any, ...]) -> None:
            for collector in collectors.values():
                collector.position = 0

        hooks.add(pl_module.register_forward_pre_hook(new_forward))
        try:
            ran = evaluation_pass(trainer, pl_module, self.split, type(self).__name__)
        finally:
            hooks.remove()
        if not ran:
            return
        self.rows = self._reduce(trainer, {name: c.moments for name, c in collectors.items()})
        if trainer.is_global_zero:
            self._save(trainer)

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

    def _save(self, trainer: pl.Trainer) -> None:
        path = stats_dir(trainer) / "node_correlation.csv"
        write_rows(path, self.rows)
        if not self.rows:
            return
        png = plots.plot_node_correlation([("", self.rows)], report_dir(trainer) / "node_correlation.png")
        runs = wandb_runs(trainer)
        if runs:
            import wandb

            table = wandb.Table(
                columns=list(CSV_COLUMNS), data=[[r[c] for c in CSV_COLUMNS] for r in self.rows]
            )
            log_step(trainer, {}, trainer.global_step, {"gaaf/node_correlation": table})
        log_images(trainer, {"gaaf/report/node_correlation": png})


def write_rows(path: Path, rows: Sequence[dict[str, Any]]) -> None:
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(CSV_COLUMNS))
        writer.writeheader()
        writer.writerows(rows)


def read_rows(path: Path) -> list[dict[str, Any]]:
    """Rows of a ``node_correlation.csv`` with numbers parsed."""
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    out = []
    for r in rows:
        out.append(
            {
                "layer": r["layer"],
                "threshold": float(r["threshold"]),
                "pairs": int(r["pairs"]),
                "total_pairs": int(r["total_pairs"]),
                "nodes": int(r.get("nodes") or 0),
                "dead_nodes": int(r.get("dead_nodes") or 0),
            }
        )
    return out
