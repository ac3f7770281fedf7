"""GAAF's gradient gain as the learning-rate study measures it: the check on the control's factors.

The control (base with per-layer learning-rate factors) takes its factors from one earlier study
(MNIST, a shared rate of 0.013). Every seed-0 grid run records its gradient information per layer
(``GradInfoMonitor``: mean |dE/dW| of each layer over the run), and base and GAAF share the grid's
rates, so each dataset and protocol shows the GAAF / base ratio at every rate both trained: a reader
can see whether the fixed factors fit where they are used.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

from lightning_gaaf.cli.reproduce import lr_plan as lp


def gain_rows(records: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Per rate where base and GAAF both have a seed-0 run with gradient information: the GAAF / base
    ratio per layer (:data:`lr_plan.GAAF_GRAD_RATIO`'s layers) and both runs' best val accuracy."""
    seed0 = {(r["model"], r["lr"]): r for r in records if r["seed"] == 0 and r["model"] in ("base", "gaaf")}
    rows = []
    for (model, lr), gaaf in sorted(seed0.items(), key=lambda kv: kv[0][1]):
        base = seed0.get(("base", lr))
        if model != "gaaf" or base is None or not gaaf.get("grad_info") or not base.get("grad_info"):
            continue
        ratios = {}
        for layer in lp.GAAF_GRAD_RATIO:
            g, b = gaaf["grad_info"].get(layer), base["grad_info"].get(layer)
            ok = isinstance(g, float | int) and isinstance(b, float | int) and b > 0 and math.isfinite(g)
            ratios[layer] = g / b if ok else None
        rows.append(
            {"lr": lr, "ratios": ratios, "val_acc": (base.get("best_val_acc"), gaaf.get("best_val_acc"))}
        )
    return rows


def gain_table(records: Sequence[Mapping[str, Any]]) -> list[str]:
    """The section of an lr-study table that puts the measured ratios beside the control's factors."""
    rows = gain_rows(records)
    factors = ", ".join(f"{layer.split('.')[-1]} {v:g}" for layer, v in lp.GAAF_GRAD_RATIO.items())
    lines = [
        f"Control `{lp.CONTROL}`: base at GAAF's rate with per-layer factors {factors} "
        "(GAAF/base gradient information of the shared-rate MNIST study, docs/results/mnist_slow/table2.md).",
        "",
    ]
    if not rows:
        return lines
    layers = [layer.split(".")[-1] for layer in lp.GAAF_GRAD_RATIO]
    lines += [
        "GAAF / base gradient information per layer measured here (`GradInfoMonitor`: mean |dE/dW| of "
        "the layer's weights over the run; seed-0 runs at every rate both trained). A rate at which "
        "either run trained badly (its val acc far below the other's) gives no usable ratio.",
        "",
        "| lr | " + " | ".join(layers) + " | val acc % at best epoch: base / GAAF |",
        "|---|" + "---|" * (len(layers) + 1),
    ]
    for row in rows:
        cells = ["n/a" if v is None else f"{v:.2f}" for v in row["ratios"].values()]
        accs = " / ".join("n/a" if a is None else f"{a:.2f}" for a in row["val_acc"])
        lines.append(f"| {lp.lr_label(row['lr'])} | " + " | ".join(cells) + f" | {accs} |")
    return [*lines, ""]
