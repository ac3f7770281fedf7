"""Statistics of paired comparisons: by seed, by image, and how their results are written.

Two models trained with the same seeds are compared seed by seed (paired t-test and t interval);
several comparisons of one table get Holm's step-down correction. Per-image correctness of two
models on the same test set is compared with McNemar's exact test and a bootstrap over images and
seeds (which also counts the test set's own sampling noise).
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np


def mean_std(values: Iterable[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for a single value)."""
    values = list(values)
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def format_mean_std(values: Iterable[float], mean_format: str = ".2f", std_format: str | None = None) -> str:
    """``mean (sample std)``; a single value is shown alone (one seed has no spread to show)."""
    values = list(values)
    mean, sd = mean_std(values)
    text = format(mean, mean_format)
    return text if len(values) < 2 else f"{text} ({format(sd, std_format or mean_format)})"


def paired_difference(a: Sequence[float], b: Sequence[float], confidence: float = 0.95) -> dict[str, Any]:
    """Paired comparison of ``a - b`` (same seeds): mean, sample std, t-test p-value, confidence interval.

    With fewer than two pairs, or identical differences, the p-value and interval are None.
    """
    from scipy import stats

    if len(a) != len(b):
        raise ValueError(f"paired_difference: {len(a)} and {len(b)} values cannot be paired")
    diffs = [x - y for x, y in zip(a, b, strict=True)]
    n = len(diffs)
    out: dict[str, Any] = {"n": n, "mean": statistics.fmean(diffs) if n else math.nan, "std": None}
    out.update(p_value=None, ci_low=None, ci_high=None, confidence=confidence)
    if n < 2:
        return out
    sd = statistics.stdev(diffs)
    out["std"] = sd
    if sd == 0:
        return out
    half = stats.t.ppf(0.5 + confidence / 2, n - 1) * sd / math.sqrt(n)
    out.update(
        p_value=float(stats.ttest_rel(a, b).pvalue), ci_low=out["mean"] - half, ci_high=out["mean"] + half
    )
    return out


def holm(p_values: Sequence[float | None]) -> list[float | None]:
    """Holm's step-down adjustment of a family of p-values (None stays None and is not counted)."""
    tested = sorted((p, i) for i, p in enumerate(p_values) if p is not None)
    m, running = len(tested), 0.0
    out: list[float | None] = [None] * len(p_values)
    for rank, (p, i) in enumerate(tested):
        running = max(running, min(1.0, (m - rank) * p))
        out[i] = running
    return out


def format_paired(label: str, d: dict[str, Any], unit: str = " points") -> str:
    """One line: ``label: mean (sd) [CI], p`` for a :func:`paired_difference` result."""
    text = f"{label}: {d['mean']:+.2f}{unit}"
    if d["std"] is not None:
        text += f" (sample std {d['std']:.2f}, n = {d['n']} paired seeds"
        if d["ci_low"] is not None:
            text += f"; {100 * d['confidence']:.0f} % CI [{d['ci_low']:+.2f}, {d['ci_high']:+.2f}]"
            text += f"; paired t-test p = {d['p_value']:.3g}"
        text += ")"
    return text


def mcnemar(correct_a: Any, correct_b: Any) -> dict[str, Any]:
    """McNemar's exact test of two models on the same images (seeds pooled): a binomial test of the
    discordant images, ``a`` right and ``b`` wrong against the reverse, at probability 1/2.

    ``correct_*``: booleans per image, or per (seed, image) with the same seeds in the same order.
    """
    from scipy import stats

    a, b = (np.asarray(x, dtype=bool).ravel() for x in (correct_a, correct_b))
    if a.shape != b.shape:
        raise ValueError(f"mcnemar: {a.size} and {b.size} per-image results cannot be paired")
    a_only, b_only = int(np.sum(a & ~b)), int(np.sum(~a & b))
    n = a_only + b_only
    p = 1.0 if n == 0 else float(stats.binomtest(a_only, n, 0.5).pvalue)
    diff = 100.0 * (a_only - b_only) / a.size if a.size else math.nan
    return {"n": int(a.size), "a_only": a_only, "b_only": b_only, "difference": diff, "p_value": p}


def bootstrap_difference(
    correct_a: Any, correct_b: Any, n_boot: int = 2000, seed: int = 0, confidence: float = 0.95
) -> dict[str, Any]:
    """Percentile bootstrap of the paired accuracy difference ``a - b`` in points, resampling seeds
    and test images (the same images for every seed and both models: they share the test set).

    ``correct_*``: booleans per (seed, image), or per image for one seed. Deterministic for ``seed``.
    """
    a, b = (np.atleast_2d(np.asarray(x, dtype=bool)) for x in (correct_a, correct_b))
    if a.shape != b.shape:
        raise ValueError(f"bootstrap_difference: shapes {a.shape} and {b.shape} cannot be paired")
    diff = a.astype(np.float64) - b.astype(np.float64)  # (seeds, images)
    n_seeds, n_images = diff.shape
    rng = np.random.default_rng(seed)
    draws = np.empty(n_boot)
    for i in range(n_boot):
        weights = np.bincount(rng.integers(0, n_images, n_images), minlength=n_images)
        seeds = rng.integers(0, n_seeds, n_seeds)
        draws[i] = float(np.mean(diff[seeds] @ weights)) / n_images
    low, high = np.quantile(100.0 * draws, [0.5 - confidence / 2, 0.5 + confidence / 2])
    return {
        "mean": 100.0 * float(diff.mean()),
        "ci_low": float(low),
        "ci_high": float(high),
        "confidence": confidence,
        "n_boot": n_boot,
        "seeds": n_seeds,
        "images": n_images,
    }
