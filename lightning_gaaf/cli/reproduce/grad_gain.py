"""GAAF's gradient gain as the studies measure it: GAAF over its plain twin, per layer, per rate.

Every seed-0 grid run records its gradient information per layer (``GradInfoMonitor``: mean |dE/dW|
of each layer over the run), and a GAAF variant and its plain twin share the grid's rates, so each
table shows their ratio at every rate both trained. In the MLP studies it checks the control's
factors (base with per-layer learning-rate factors from one earlier study: MNIST, a shared rate of
0.013) where they are used; in the CNN study it shows how the gain grows towards the input.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

from lightning_gaaf.cli.reproduce import lr_plan as lp


def gaaf_pairs(proto: lp.Protocol) -> list[tuple[str, str]]:
    """The comparisons of a protocol that add GAAF and nothing else (``gaaf - base``, ``bn_gaaf - bn``)."""
    plain = {"gaaf": "base"}
    return [
        (a, b)
        for a, b in proto.comparisons
        if a.endswith("gaaf") and plain.get(a, a.removesuffix("_gaaf")) == b
    ]


def gain_rows(
    records: Sequence[Mapping[str, Any]],
    pair: tuple[str, str] = ("gaaf", "base"),
    layers: Sequence[str] | None = None,
) -> list[dict[str, Any]]:
    """Per rate where both models of ``pair`` (GAAF variant, its plain twin) have a seed-0 run with
    gradient information: their ratio per layer (``layers``, default: every layer the GAAF run
    records) and both runs' best val accuracy (``None`` when absent; ``diverged`` for a run that did)."""
    gaaf_model, plain_model = pair
    seed0 = {(r["model"], r["lr"]): r for r in records if r["seed"] == 0 and r["model"] in pair}
    rows = []
    for (model, lr), gaaf in sorted(seed0.items(), key=lambda kv: kv[0][1]):
        base = seed0.get((plain_model, lr))
        if model != gaaf_model or base is None or not gaaf.get("grad_info") or not base.get("grad_info"):
            continue
        ratios = {}
        for layer in layers if layers is not None else list(gaaf["grad_info"]):
            g, b = gaaf["grad_info"].get(layer), base["grad_info"].get(layer)
            ok = isinstance(g, float | int) and isinstance(b, float | int) and b > 0 and math.isfinite(g)
            ratios[layer] = g / b if ok else None
        accs = tuple("diverged" if r.get("diverged") else r.get("best_val_acc") for r in (base, gaaf))
        rows.append({"lr": lr, "ratios": ratios, "val_acc": accs})
    return rows


def _label(model: str) -> str:
    return "GAAF" if model == "gaaf" else model


def _rate_table(rows: list[dict[str, Any]], pair: tuple[str, str]) -> list[str]:
    layers = [layer.split(".")[-1] for layer in rows[0]["ratios"]]
    lines = [
        "| lr | "
        + " | ".join(layers)
        + f" | val acc % at best epoch: {_label(pair[1])} / {_label(pair[0])} |",
        "|---|" + "---|" * (len(layers) + 1),
    ]
    for row in rows:
        cells = ["n/a" if v is None else f"{v:.2f}" for v in row["ratios"].values()]
        accs = " / ".join(
            a if isinstance(a, str) else "n/a" if a is None else f"{a:.2f}" for a in row["val_acc"]
        )
        lines.append(f"| {lp.lr_label(row['lr'])} | " + " | ".join(cells) + f" | {accs} |")
    return lines


def gain_table(records: Sequence[Mapping[str, Any]], proto: lp.Protocol) -> list[str]:
    """The section of a study's table with the measured gradient ratios of GAAF over its plain twin
    at the rates both trained; with the control, beside the control's fixed factors."""
    if not proto.control:
        lines = []
        for pair in gaaf_pairs(proto):
            rows = gain_rows(records, pair)
            if rows:
                lines += [
                    f"{_label(pair[0])} / {_label(pair[1])} gradient information per layer (`GradInfoMonitor`: mean "
                    "|dE/dW| of the layer's weights over the run; seed-0 runs at every rate both "
                    "trained; n/a where a run diverged).",
                    "",
                    *_rate_table(rows, pair),
                    "",
                ]
        return lines
    rows = gain_rows(records, layers=list(lp.GAAF_GRAD_RATIO))
    factors = ", ".join(f"{layer.split('.')[-1]} {v:g}" for layer, v in lp.GAAF_GRAD_RATIO.items())
    lines = [
        f"Control `{lp.CONTROL}`: base at GAAF's rate with per-layer factors {factors} "
        "(GAAF/base gradient information of the shared-rate MNIST study, docs/results/mnist_slow/table2.md).",
        "",
    ]
    if not rows:
        return lines
    lines += [
        "GAAF / base gradient information per layer measured here (`GradInfoMonitor`: mean |dE/dW| of "
        "the layer's weights over the run; seed-0 runs at every rate both trained). A rate at which "
        "either run trained badly (its val acc far below the other's) gives no usable ratio.",
        "",
        *_rate_table(rows, ("gaaf", "base")),
    ]
    return [*lines, ""]
