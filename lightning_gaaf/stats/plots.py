"""Figures drawn from saved statistics, for one run (monitors) or several side by side (gaaf-report).

Every function takes ``runs``: a list of ``(label, stats)`` where ``stats`` is a stats file as
:func:`lightning_gaaf.stats.read_stats` returns it (label ``""`` = single run, no legend), draws one
panel per layer and writes a PNG. Fractions are drawn on a fixed [0, 1] axis (a change of 0.003
must not look like a cliff); steps and epochs get integer ticks, few enough to stay apart on a narrow
panel, large step counts written as ``20k``. Every panel names its axes. Figures are built with the
Agg canvas directly, so the user's matplotlib backend is never touched.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter, MaxNLocator

Run = tuple[str, Any]

__all__ = [
    "Run",
    "history_figure",
    "plot_grad_info",
    "plot_grad_scale",
    "plot_metrics",
    "plot_net_hist",
    "plot_net_var",
    "plot_node_correlation",
    "plot_saturation",
    "plot_tuning_history",
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


def _count_label(value: float, _pos: int | None = None) -> str:
    """Tick label of a count: ``20k`` from 1000 on (``20000`` labels run together on a narrow panel)."""
    if abs(value) >= 1000:
        return f"{value / 1000:g}k"
    return f"{value:g}"


def _integer_axis(ax: Axes, nbins: int = 5) -> None:
    """Integer ticks on the x axis, at most ``nbins`` intervals, large counts as ``20k``."""
    ax.xaxis.set_major_locator(MaxNLocator(nbins=nbins, integer=True))
    ax.xaxis.set_major_formatter(FuncFormatter(_count_label))


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
        _integer_axis(ax)
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
    """Epoch metrics of ``stats/metrics.json`` (loss, accuracy, ...) over epochs; test metrics noted
    on the validation panel of the same metric."""
    return save_figure(metrics_figure(runs), path)


def _metric_label(key: str) -> str:
    """The y-axis label of an epoch metric: what it measures, without the split."""
    name = key.split("/", 1)[-1]
    if key.startswith("lr-"):
        return "learning rate"
    return {"acc": "accuracy", "loss": "loss"}.get(name, name)


def metrics_figure(runs: Sequence[Run]) -> Figure:
    """The figure of :func:`plot_metrics`: one panel per metric, integer epoch ticks, accuracies on [0, 1].

    Test metrics (one value per run, of the tested checkpoint) are written on the ``val/`` panel of
    the same metric, one line per run in its colour; those without one go under the title.

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
    tests = _layers(runs, lambda s: [k for k, v in (s.get("test") or {}).items() if v is not None])
    for ax, key in zip(axes, keys, strict=True):
        values: list[float] = []
        for i, (label, stats) in enumerate(runs):
            points = [(r["epoch"], r[key]) for r in stats["epochs"] if r.get(key) is not None]
            if points:
                ax.plot(*zip(*points, strict=True), color=_color(i), label=label or None, marker=".", lw=1.2)
                values += [v for _, v in points]
        if key.endswith("acc") and values and 0.0 <= min(values) and max(values) <= 1.0:
            ax.set_ylim(0.0, 1.0)  # accuracies are fractions
        test_key = "test/" + key.split("/", 1)[-1]
        if key.startswith("val/") and test_key in tests:
            _test_notes(ax, runs, test_key, key)
            tests.remove(test_key)
        _integer_axis(ax)
        ax.set_title(key, fontsize=9)
        ax.set_xlabel("epoch")
        ax.set_ylabel(_metric_label(key))
    if tests:  # test metrics without a validation panel
        notes = [f"{k}: " + ", ".join(_test_value(stats, k) for _, stats in runs) for k in tests]
        fig.suptitle("training curves\n" + "; ".join(notes), fontsize=10)
    return _legend(fig, axes, runs)


def _test_value(stats: Any, key: str) -> str:
    value = (stats.get("test") or {}).get(key)
    return "n/a" if value is None else f"{value:.4g}"


def _test_notes(ax: Axes, runs: Sequence[Run], key: str, curve: str) -> None:
    """One line per run in the right-hand corner the curves leave free: ``test/acc: 0.982 (label)``."""
    low, high = ax.get_ylim()
    ends = [r[curve] for _, stats in runs for r in stats["epochs"][-1:] if r.get(curve) is not None]
    top = bool(ends) and statistics.fmean(ends) < (low + high) / 2  # curves end low: notes at the top
    for i, (label, stats) in enumerate(runs):
        text = f"{key}: {_test_value(stats, key)}" + (f" ({label})" if label else "")
        y = 0.96 - 0.08 * i if top else 0.04 + 0.08 * (len(runs) - 1 - i)
        ax.text(
            0.98,
            y,
            text,
            transform=ax.transAxes,
            color=_color(i),
            fontsize=7,
            ha="right",
            va="top" if top else "bottom",
        )


def history_figure(
    trials: Sequence[tuple[int, str, float]], title: str, metric: str, maximize: bool
) -> Figure:
    """Optimisation history of a tuning study: each finished trial's value (``state`` complete: filled;
    pruned: hollow, its last reported value) and the best complete value so far, on integer trial ticks."""
    fig = Figure(figsize=(6, 3.5), layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    complete = sorted((n, v) for n, state, v in trials if state == "complete")
    pruned = [(n, v) for n, state, v in trials if state == "pruned"]
    ax.scatter([n for n, _ in complete], [v for _, v in complete], s=18, label="complete")
    ax.scatter(
        [n for n, _ in pruned],
        [v for _, v in pruned],
        s=18,
        facecolors="none",
        edgecolors="gray",
        label="pruned",
    )
    best, xs, ys = None, [], []
    for n, v in complete:
        if best is None or (v > best if maximize else v < best):
            best = v
        xs.append(n)
        ys.append(best)
    if xs:
        last = max(n for n, _, _ in trials)
        ax.step([*xs, last], [*ys, ys[-1]], where="post", color="C3", label="best so far")
    _integer_axis(ax, nbins=10)
    ax.set_xlabel("trial")
    ax.set_ylabel(f"best {metric} of the run")
    ax.set_title(f"{title}: optimisation history")
    ax.legend(loc="best", fontsize="small")
    return fig


def plot_tuning_history(
    trials: Sequence[tuple[int, str, float]], path: Path, title: str, metric: str, maximize: bool
) -> Path:
    """:func:`history_figure` written as a PNG (``gaaf-tune``'s ``history.png``)."""
    fig = history_figure(trials, title, metric, maximize)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    return path
