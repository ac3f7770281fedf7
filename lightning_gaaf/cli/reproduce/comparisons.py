"""Paired comparisons of models within one study, as Markdown tables (lr study, size study).

Each comparison ``a - b`` pairs the seeds both models finished, each model at its own learning
rate. A per-seed measure gets the paired t-test and t interval (:mod:`.statistics`); test accuracy
also gets McNemar's exact test on the seeds pooled and a bootstrap over images and seeds, from the
per-image test predictions. The p-values of one table get Holm's correction across its rows. A
comparison with fewer than two paired seeds prints ``n < 2`` instead of a t-test's numbers.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from lightning_gaaf.cli.reproduce.statistics import bootstrap_difference, holm, mcnemar, paired_difference

FEW = "n < 2"
#: A per-seed value: ``(value, censored)``, censored when the run never reached what is measured and
#: the value is the budget it used up; ``None`` when the run has no value at all.
Measured = tuple[float, bool] | None


def paired(
    finals: Mapping[str, Sequence[Mapping[str, Any]]], a: str, b: str, measure: Callable[[Mapping], Measured]
) -> dict[str, Any]:
    """``a - b`` on ``measure`` over the seeds both have a value for; a pair where both runs are
    censored says nothing about the difference and is left out."""
    va = {r["seed"]: measure(r) for r in finals.get(a, [])}
    vb = {r["seed"]: measure(r) for r in finals.get(b, [])}
    seeds = [
        s
        for s in sorted(set(va) & set(vb))
        if va[s] is not None and vb[s] is not None and not (va[s][1] and vb[s][1])
    ]
    d = paired_difference([va[s][0] for s in seeds], [vb[s][0] for s in seeds])
    return {**d, "a": a, "b": b, "seeds": seeds, "censored": sum(va[s][1] or vb[s][1] for s in seeds)}


def with_holm(rows: list[dict[str, Any]], key: str = "p_value", out: str = "p_holm") -> list[dict[str, Any]]:
    """Add Holm-adjusted ``out`` over the rows' ``key`` p-values (rows without one are not counted)."""
    for row, p in zip(rows, holm([r.get(key) for r in rows]), strict=True):
        row[out] = p
    return rows


def diff_cell(d: Mapping[str, Any], digits: int, unit: str = "") -> str:
    """``mean (sample std) [CI]`` of a :func:`paired` result, ``n < 2`` with fewer than two pairs."""
    if d["n"] < 2:
        return FEW
    text = f"{d['mean']:+.{digits}f}{unit} ({d['std']:.{digits}f})"
    if d["ci_low"] is not None:
        text += f" [{d['ci_low']:+.{digits}f}, {d['ci_high']:+.{digits}f}]"
    return text


def p_cell(d: Mapping[str, Any], key: str = "p_value") -> str:
    if d["n"] < 2:
        return FEW
    return "n/a" if d.get(key) is None else f"{d[key]:.2g}"


def correct(record: Mapping[str, Any], folder: Path) -> np.ndarray | None:
    """Per-test-image correctness of a run, from its predictions file (None when it has none)."""
    name = record.get("predictions")
    path = folder / name if name else None
    if path is None or not path.is_file():
        return None
    with np.load(path) as z:
        return z["pred"] == z["label"]


def accuracy_rows(
    finals: Mapping[str, Sequence[Mapping[str, Any]]],
    comparisons: Sequence[tuple[str, str]],
    folder: Path,
    key: str = "test_acc",
    n_boot: int = 2000,
) -> list[dict[str, Any]]:
    """Per comparison: the paired t-test on ``key`` and, over the seeds both have predictions for,
    McNemar (seeds pooled) and the bootstrap over images and seeds; p-values Holm-adjusted."""
    rows = []
    for a, b in comparisons:
        row = paired(finals, a, b, lambda r: None if r.get(key) is None else (float(r[key]), False))
        ca = {r["seed"]: correct(r, folder) for r in finals.get(a, [])}
        cb = {r["seed"]: correct(r, folder) for r in finals.get(b, [])}
        seeds = [s for s in row["seeds"] if ca.get(s) is not None and cb.get(s) is not None]
        shapes = {ca[s].shape for s in seeds} | {cb[s].shape for s in seeds}
        row["image_seeds"] = seeds if len(shapes) == 1 else []
        row["mcnemar"] = row["bootstrap"] = None
        if row["image_seeds"]:
            xa, xb = np.stack([ca[s] for s in seeds]), np.stack([cb[s] for s in seeds])
            row["mcnemar"] = mcnemar(xa, xb)
            row["bootstrap"] = bootstrap_difference(xa, xb, n_boot=n_boot, seed=0)
        rows.append(row)
    with_holm(rows)
    for row, p in zip(rows, holm([r["mcnemar"] and r["mcnemar"]["p_value"] for r in rows]), strict=True):
        row["mcnemar_holm"] = p
    return rows


ACCURACY_HEAD = [
    "| comparison | paired seeds | difference, points: mean (sample std) [95 % CI] | p | p (Holm) "
    "| McNemar, seeds pooled: a only / b only | McNemar p (Holm) | bootstrap 95 % CI, points |",
    "|---|---|---|---|---|---|---|---|",
]


def accuracy_table(rows: Sequence[Mapping[str, Any]], caption: str) -> list[str]:
    """Markdown rows of :func:`accuracy_rows` under ``caption``."""
    lines = [caption, "", *ACCURACY_HEAD]
    for r in rows:
        mc, bs = r["mcnemar"], r["bootstrap"]
        mc_cell = "no predictions" if mc is None else f"{mc['a_only']} / {mc['b_only']}"
        mc_p = "n/a" if mc is None else f"{r['mcnemar_holm']:.2g} (raw {mc['p_value']:.2g})"
        bs_cell = "n/a" if bs is None else f"[{bs['ci_low']:+.2f}, {bs['ci_high']:+.2f}]"
        lines.append(
            f"| {r['a']} - {r['b']} | {r['n']} | {diff_cell(r, 2)} | {p_cell(r)} | {p_cell(r, 'p_holm')} "
            f"| {mc_cell} | {mc_p} | {bs_cell} |"
        )
    return lines


ACCURACY_NOTE = (
    "p: paired t-test over seeds; p (Holm): adjusted across the {m} comparisons of this table (likewise "
    "McNemar's). The t interval covers seed-to-seed variation only; McNemar's exact test (binomial on "
    "the images one model gets right and the other wrong, seeds pooled) and the bootstrap (2000 "
    "resamples of seeds and of test images) count the test set's sampling noise too. `n < 2`: fewer "
    "than two paired seeds, no t-test."
)
