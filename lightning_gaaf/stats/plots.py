"""Figures drawn from saved statistics, for one run (monitors) or several side by side (gaaf-report).

Every function takes ``runs``: a list of ``(label, stats)`` where ``stats`` is a stats file as
:func:`lightning_gaaf.stats.read_stats` returns it (label ``""`` = single run, no legend), draws one
panel per layer and writes a PNG. Fractions are drawn on a fixed [0, 1] axis (a change of 0.003
must not look like a cliff); steps and epochs get integer ticks. Figures are built with the Agg
canvas directly, so the user's matplotlib backend is never touched.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

Run = tuple[str, Any]

__all__ = [
    "Run",
    "plot_grad_info",
    "plot_grad_scale",
    "plot_metrics",
    "plot_net_hist",
    "plot_net_var",
    "plot_node_correlation",
    "plot_saturation",
    "plot_weight_hist",
    "metrics_figure",
    "saturation_figure",
    "save_figure",
]


def _layers(runs: Sequence[Run], get: Callable[[Any], Iterable[str]]) -> list[str]:
    """Union of the runs' layer names, in first-seen order."""
    seen: dict[str, None] = {}
    for _, stats in runs:
        for name in get(stats):
            seen.setdefault(name, None)
    return list(seen)


def _figure(n: int, title: str) -> tuple[Figure, list[Axes]]:
    ncols = max(1, min(n, 4))
    nrows = max(1, math.ceil(n / ncols))
    fig = Figure(figsize=(3.8 * ncols, 2.9 * nrows + 0.4), layout="constrained")
    FigureCanvasAgg(fig)
    axes = list(fig.subplots(nrows, ncols, squeeze=False).ravel())
    for ax in axes[n:]:
        ax.set_visible(False)
    fig.suptitle(title)
    return fig, axes[:n]


def _legend(fig: Figure, axes: Sequence[Axes], runs: Sequence[Run]) -> Figure:
    if any(label for label, _ in runs) and axes:
        handles, labels = axes[0].get_legend_handles_labels()
        if handles:
            fig.legend(handles, labels, loc="outside lower center", ncols=min(len(labels), 4))
    return fig


def _finish(fig: Figure, axes: Sequence[Axes], runs: Sequence[Run], path: Path) -> Path:
    return save_figure(_legend(fig, axes, runs), path)


def save_figure(fig: Figure, path: Path) -> Path:
    """Write ``fig`` as a PNG (parent directories created) and return the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    return path


def _series(values: Sequence[float | None]) -> np.ndarray:
    return np.array([np.nan if v is None else v for v in values], dtype=float)


def _color(i: int) -> str:
    return f"C{i % 10}"


def _lines(
    runs: Sequence[Run],
    title: str,
    ylabel: str,
    values: Callable[[Any, str], Sequence],
    log: bool = False,
    fraction: bool = False,
) -> Figure:
    layers = _layers(runs, lambda s: s["layers"])
    fig, axes = _figure(len(layers), title)
    for ax, layer in zip(axes, layers, strict=True):
        for i, (label, stats) in enumerate(runs):
            if layer not in stats["layers"]:
                continue
            y = _series(values(stats, layer))
            ax.plot(stats["steps"][: len(y)], y, color=_color(i), label=label or None, lw=1.2)
        if log and ax.has_data():
            ax.set_yscale("log")
        if fraction:
            ax.set_ylim(0.0, 1.0)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_title(layer, fontsize=9)
        ax.set_xlabel("step")
        ax.set_ylabel(ylabel)
    return _legend(fig, axes, runs)


def plot_grad_info(runs: Sequence[Run], path: Path) -> Path:
    """Gradient information (mean |dE/dW|, paper Eq. 5) per weight layer over steps."""
    figure = _lines(
        runs, "gradient information per layer", "mean |dE/dW|", lambda s, n: s["layers"][n], log=True
    )
    return save_figure(figure, path)


def plot_saturation(runs: Sequence[Run], path: Path) -> Path:
    """Fraction of nets in the saturation area per activation layer over steps."""
    return save_figure(saturation_figure(runs), path)


def saturation_figure(runs: Sequence[Run]) -> Figure:
    """The figure of :func:`plot_saturation`: one panel per layer, y fixed to [0, 1]."""
    return _lines(
        runs,
        "saturated nets per layer",
        "fraction saturated",
        lambda s, n: s["layers"][n]["saturation"],
        fraction=True,
    )


def plot_net_var(runs: Sequence[Run], path: Path) -> Path:
    """Per-node variance of the net under dropout (paper Table 3) per layer over steps."""
    return save_figure(
        _lines(runs, "net variance under dropout", "variance of net", lambda s, n: s["layers"][n]), path
    )


def plot_net_hist(runs: Sequence[Run], path: Path) -> Path:
    """Distribution of nets per layer on held-out data (paper Figures 3 and 5), saturation area shaded."""
    with_eval = [(label, stats) for label, stats in runs if stats.get("eval")]
    split = with_eval[0][1]["eval"]["split"] if with_eval else "test"
    layers = _layers(with_eval, lambda s: s["eval"]["layers"])
    fig, axes = _figure(len(layers), f"distribution of nets on {split} data")
    for ax, layer in zip(axes, layers, strict=True):
        for i, (label, stats) in enumerate(with_eval):
            entry = stats["eval"]["layers"].get(layer)
            if not entry or not entry["count"]:
                continue
            edges = np.asarray(stats["edges"], dtype=float)
            density = np.asarray(entry["hist"], dtype=float) / entry["count"] / np.diff(edges)
            ax.stairs(density, edges, color=_color(i), label=label or None, lw=1.3)
            outside = (entry["below"] + entry["above"]) / entry["count"]
            note = f"saturated {_pct(entry['saturation'])}, outside range {_pct(outside)}"
            ax.text(
                0.02, 0.97 - 0.08 * i, note, transform=ax.transAxes, color=_color(i), fontsize=7, va="top"
            )
        _shade_saturation(ax, with_eval, layer)
        bottom, top = ax.get_ylim()
        ax.set_ylim(bottom, top * (1.1 + 0.1 * len(with_eval)))  # room for the notes
        ax.set_title(layer, fontsize=9)
        ax.set_xlabel("net z (grey: saturation area)")
        ax.set_ylabel("density")
    return _finish(fig, axes, with_eval, path)


def _pct(x: float | None) -> str:
    return "n/a" if x is None or not math.isfinite(x) else f"{100 * x:.1f}%"


def _shade_saturation(ax: Axes, runs: Sequence[Run], layer: str) -> None:
    for _, stats in runs:
        info = stats.get("thresholds", {}).get(layer)
        if not info or not info.get("intervals"):
            continue
        lo_edge, hi_edge = stats["range"]
        for lo, hi in info["intervals"]:
            lo = lo_edge if lo is None or lo < lo_edge else lo
            hi = hi_edge if hi is None or hi > hi_edge else hi
            if lo < hi:
                ax.axvspan(lo, hi, color="0.85", zorder=0, lw=0)
        return


def plot_weight_hist(runs: Sequence[Run], path: Path) -> Path:
    """Weight distribution per layer at the end of fit (single run: also at the start, dashed)."""
    single = len(runs) == 1
    layers = _layers(runs, lambda s: s["layers"])
    fig, axes = _figure(len(layers), "weight distribution per layer")
    for ax, layer in zip(axes, layers, strict=True):
        for i, (label, stats) in enumerate(runs):
            entry = stats["layers"].get(layer, {})
            for when, style in (("final", "-"), ("init", "--")):
                hist = entry.get(when)
                if not hist or (when == "init" and not single):
                    continue
                edges = np.asarray(hist["edges"], dtype=float)
                counts = np.asarray(hist["counts"], dtype=float)
                density = counts / max(counts.sum(), 1.0) / np.diff(edges)
                name = {"final": "end of fit", "init": "start of fit"}[when] if single else label or None
                ax.stairs(density, edges, color=_color(i), ls=style, label=name)
        ax.set_title(layer, fontsize=9)
        ax.set_xlabel("weight")
        ax.set_ylabel("density")
    if single and axes and axes[0].has_data():
        axes[0].legend(fontsize=7)
    return _finish(fig, axes, runs, path)


def plot_grad_scale(runs: Sequence[Run], path: Path) -> Path:
    """Gradient information of each layer relative to the last weight layer, over steps (log axis)."""
    figure = _lines(
        runs,
        "gradient information relative to the last layer",
        "ratio",
        lambda s, n: s["layers"][n],
        log=True,
    )
    return save_figure(figure, path)


def plot_node_correlation(runs: Sequence[Run], path: Path) -> Path:
    """Share of hidden-node pairs with |corr| above each threshold, per layer (paper Table 1)."""
    runs = [(label, stats["rows"]) for label, stats in runs]
    layers = _layers(runs, lambda rows: [r["layer"] for r in rows])
    fig, axes = _figure(len(layers), "correlated node pairs per layer")
    width = 0.8 / max(len(runs), 1)
    for ax, layer in zip(axes, layers, strict=True):
        ticks: list[float] = []
        for i, (label, rows) in enumerate(runs):
            mine = sorted((r for r in rows if r["layer"] == layer), key=lambda r: -float(r["threshold"]))
            if not mine:
                continue
            ticks = [float(r["threshold"]) for r in mine]
            share = [int(r["pairs"]) / int(r["total_pairs"]) if int(r["total_pairs"]) else 0.0 for r in mine]
            x = np.arange(len(mine)) + (i - (len(runs) - 1) / 2) * width
            ax.bar(x, share, width=width, color=_color(i), label=label or None)
        ax.set_xticks(range(len(ticks)), [f">{t:g}" for t in ticks])
        ax.set_ylim(0.0, 1.0)
        ax.set_title(layer, fontsize=9)
        ax.set_xlabel("|corr|")
        ax.set_ylabel("share of node pairs")
    return _finish(fig, axes, runs, path)


_METRIC_ORDER = ("train/loss", "val/loss", "train/acc", "val/acc")


def plot_metrics(runs: Sequence[Run], path: Path) -> Path:
    """Epoch metrics of ``stats/metrics.json`` (loss, accuracy, ...) over epochs; test metrics in the title."""
    return save_figure(metrics_figure(runs), path)


def metrics_figure(runs: Sequence[Run]) -> Figure:
    """The figure of :func:`plot_metrics`: one panel per metric, integer epoch ticks, accuracies on [0, 1].

    The monitors' per-layer ``gaaf/...`` values, also in the epoch records, are left out: each has
    its own figure, and dozens of extra panels made this one slow to draw (seconds per run) and hard
    to read."""
    keys = _layers(
        runs,
        lambda s: [
            k for r in s["epochs"] for k in r if k not in ("epoch", "step") and not k.startswith("gaaf/")
        ],
    )
    keys = [k for k in _METRIC_ORDER if k in keys] + sorted(k for k in keys if k not in _METRIC_ORDER)
    fig, axes = _figure(len(keys), "training curves")
    for ax, key in zip(axes, keys, strict=True):
        values: list[float] = []
        for i, (label, stats) in enumerate(runs):
            points = [(r["epoch"], r[key]) for r in stats["epochs"] if r.get(key) is not None]
            if points:
                ax.plot(*zip(*points, strict=True), color=_color(i), label=label or None, marker=".", lw=1.2)
                values += [v for _, v in points]
        tests = [stats.get("test", {}).get("test/" + key.split("/", 1)[-1]) for _, stats in runs]
        title = key
        if any(t is not None for t in tests):
            title += "   (test: " + ", ".join("n/a" if t is None else f"{t:.4g}" for t in tests) + ")"
        if key.endswith("acc") and values and 0.0 <= min(values) and max(values) <= 1.0:
            ax.set_ylim(0.0, 1.0)  # accuracies are fractions
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("epoch")
    return _legend(fig, axes, runs)
