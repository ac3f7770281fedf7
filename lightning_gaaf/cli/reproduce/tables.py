"""The tables ``gaaf-reproduce`` writes, beside the paper's numbers.

Paper numbers are constants here, with the table they come from (all MNIST, the paper's MLP). The
comparisons are paired by seed with a Holm correction over the comparisons of each measure
(:mod:`.statistics`). ``python -m
lightning_gaaf.cli.reproduce.tables RESULTS.json`` rebuilds a study's tables from its saved
``results.json`` / ``results_tuned.json`` without training.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from lightning_gaaf.cli.reproduce.statistics import format_mean_std, holm, paired_difference

MODELS = ("base", "dropout", "gaaf")
#: The comparisons of every table, ``a - b``.
PAIRS = (("gaaf", "dropout"), ("gaaf", "base"), ("dropout", "base"))
#: Paper Table 4 (MNIST): test accuracy in % and epochs to converge.
PAPER_TABLE4 = {
    "mnist": {"base": (98.23, 82), "dropout": (98.40, 169), "gaaf": (98.35, 114)},
}
#: Paper Table 1 (MNIST): node pairs with |correlation| > 0.9 per hidden layer; no GAAF column.
PAPER_TABLE1 = {"base": (0, 0, 1), "dropout": (16, 35, 174)}
#: Paper Table 2 (MNIST): average |gradient| over all nodes and iterations, Layers 1-3. The GAAF
#: values come from the paper's text, "for the three layers", without saying which comes first.
PAPER_TABLE2 = {
    "base": (1.07e-4, 1.40e-4, 9.35e-5),
    "dropout": (5.93e-4, 6.52e-4, 5.83e-4),
    "gaaf": (1.15e-3, 6.43e-4, 1.78e-4),
}
#: Paper Table 3 (MNIST): average net variance over 20 dropout masks of one 128-sample batch near
#: convergence, Layers 1-3 and the last (output) layer.
PAPER_TABLE3 = {"hidden": (0.0, 1.07, 1.07), "last": 1.97}
PAPER_NOTE = "Paper values: the paper's MNIST study (its Layer i is our i-th hidden layer)."
HOLM_NOTE = (
    "p (Holm): the paired t-tests' p-values adjusted with Holm's method over the {m} comparisons of "
    "the measure; the intervals are not adjusted. Intervals and tests cover seed-to-seed variation "
    "only: the test set is a sample too, and on 10 000 images the standard error of a paired accuracy "
    "difference is about sqrt(q / 10 000) for models that disagree on a share q of the images "
    "(0.1 points at q = 1 %)."
)


def paired_comparisons(runs: dict[str, list[dict[str, Any]]], key: str) -> list[dict[str, Any]]:
    """:data:`PAIRS` on ``key``, paired by seed, with Holm-adjusted p-values (``p_holm``) over them."""
    found = []
    for a, b in PAIRS:
        ra = {r["seed"]: r[key] for r in runs.get(a, []) if r.get(key) is not None}
        rb = {r["seed"]: r[key] for r in runs.get(b, []) if r.get(key) is not None}
        seeds = sorted(set(ra) & set(rb))
        if len(seeds) >= 2:
            d = paired_difference([ra[s] for s in seeds], [rb[s] for s in seeds])
            found.append({"a": a, "b": b, "seeds": seeds, **d})
    for row, p in zip(found, holm([c["p_value"] for c in found]), strict=True):
        row["p_holm"] = p
    return found


def comparison_table(runs: dict[str, list[dict[str, Any]]], measures: Sequence[tuple[str, str, int]]) -> str:
    """Markdown table of :func:`paired_comparisons` for each ``(label, key, digits)``, with its note."""
    lines = [
        "| comparison | measure | mean difference (sample std) | 95 % CI | p | p (Holm) | seeds |",
        "|---|---|---|---|---|---|---|",
    ]
    family = 0
    for label, key, digits in measures:
        rows = paired_comparisons(runs, key)
        family = max(family, sum(r["p_value"] is not None for r in rows))
        for r in rows:
            f = f"{{:+.{digits}f}}"
            spread = "" if r["std"] is None else f" ({r['std']:.{digits}f})"
            ci = "n/a" if r["ci_low"] is None else f"[{f.format(r['ci_low'])}, {f.format(r['ci_high'])}]"
            p = "n/a" if r["p_value"] is None else f"{r['p_value']:.2g}"
            ph = "n/a" if r["p_holm"] is None else f"{r['p_holm']:.2g}"
            lines.append(
                f"| {r['a']} - {r['b']} | {label} | {f.format(r['mean'])}{spread} | {ci} | {p} | {ph} | {r['n']} |"
            )
    if len(lines) == 2:
        return ""
    return "\n".join([*lines, "", HOLM_NOTE.format(m=family)]) + "\n"


def _paper(dataset: str | None) -> bool:
    return dataset is None or dataset == "mnist"


def _paper_header(dataset: str | None) -> str:
    return "paper" if dataset == "mnist" else "paper, MNIST"


def table4(dataset: str, runs: dict[str, list[dict[str, Any]]]) -> str:
    """Test accuracy and epochs to converge per model, mean (sample std) over seeds, beside the paper,
    then the paired comparisons of both."""
    paper = PAPER_TABLE4.get(dataset, {})
    lines = [
        "| model | test accuracy % (ours) | epochs to converge (ours) | seeds | runs at the epoch cap "
        "| test accuracy % (paper) | epochs (paper) |",
        "|---|---|---|---|---|---|---|",
    ]
    for model in MODELS:
        if not runs.get(model):
            continue
        acc = format_mean_std(r["test_acc"] for r in runs[model])
        ep = format_mean_std((r["epochs_to_converge"] for r in runs[model]), ".1f")
        capped = sum(r["hit_cap"] for r in runs[model])
        p_acc, p_ep = paper.get(model, (None, None))
        lines.append(
            f"| {model} | {acc} | {ep} | {len(runs[model])} | {capped} "
            f"| {'n/a' if p_acc is None else f'{p_acc:.2f}'} | {'n/a' if p_ep is None else p_ep} |"
        )
    lines += ["", "Mean (sample std) over seeds; one seed: the value alone."]
    pairs = comparison_table(
        runs, [("test accuracy, points", "test_acc", 2), ("epochs", "epochs_to_converge", 1)]
    )
    return "\n".join(lines) + "\n" + (f"\n{pairs}" if pairs else "")


def table2(runs: dict[str, list[dict[str, Any]]], dataset: str | None = None) -> str:
    """Gradient information per layer (mean over seeds) per model, beside the paper's Table 2."""
    layers: list[str] = []
    for model_runs in runs.values():
        for r in model_runs:
            layers += [name for name in r["grad_info"] if name not in layers]
    models = [m for m in MODELS if runs.get(m)]
    paper = [m for m in models if _paper(dataset)]
    head = [*models, *(f"{_paper_header(dataset)}: {m}" + (" †" if m == "gaaf" else "") for m in paper)]
    lines = ["| layer | " + " | ".join(head) + " |", "|---" * (len(head) + 1) + "|"]
    for i, layer in enumerate(layers):
        cells = []
        for model in models:
            values = [r["grad_info"][layer] for r in runs[model] if layer in r["grad_info"]]
            cells.append(f"{statistics.fmean(values):.3e}" if values else "n/a")
        cells += [f"{PAPER_TABLE2[m][i]:.2e}" if i < 3 else "n/a" for m in paper]
        lines.append(f"| {layer} | " + " | ".join(cells) + " |")
    seeds = sorted({len(runs[m]) for m in models})
    lines += [
        "",
        f"Ours: mean over {', '.join(map(str, seeds))} seed(s) of each run's average, over its logged "
        "steps, of mean |dE/dW| over the layer's weight tensor, where dE/dW is the mini-batch gradient "
        "(per-sample gradients averaged before the absolute value, so opposite signs cancel). The "
        "paper's Eq. 5 averages the gradient's magnitude over all nodes and all iterations: a different "
        "quantity, so compare the ratios between models, not the values.",
    ]
    if paper:
        lines += [
            "",
            f"{PAPER_NOTE} † The paper's text gives GAAF's values (1.15e-3, 6.43e-4, 1.78e-4) \"for the "
            'three layers" without saying which layer comes first; shown in the order given.',
        ]
    return "\n".join(lines) + "\n"


def table1(runs: dict[str, list[dict[str, Any]]], dataset: str | None = None) -> str:
    """Node pairs per layer with |corr| above each threshold on the test set, mean over seeds, per model,
    beside the paper's Table 1 (|corr| > 0.9).

    Each run's ``node_correlation`` is the rows of its ``stats/node_correlation.json`` (NodeCorrelationMonitor).
    """
    thresholds: list[float] = []
    layers: list[str] = []
    for model_runs in runs.values():
        for r in model_runs:
            for row in r.get("node_correlation") or []:
                if row["threshold"] not in thresholds:
                    thresholds.append(row["threshold"])
                if row["layer"] not in layers:
                    layers.append(row["layer"])
    thresholds.sort(reverse=True)
    head = " | ".join(f"\\|corr\\| > {t:g}" for t in thresholds)
    show_paper = _paper(dataset)
    paper_head = f" {_paper_header(dataset)}: \\|corr\\| > 0.9 |" if show_paper else ""
    lines = [
        "Node pairs of each hidden layer whose activation outputs have |Pearson correlation| above each threshold "
        "on the test set (NodeCorrelationMonitor), mean over seeds; in brackets the share of all live-node pairs.",
        "",
        f"| model | layer | live nodes | {head} |{paper_head}",
        "|---|---|---|" + "---|" * (len(thresholds) + show_paper),
    ]
    for model in MODELS:
        for index, layer in enumerate(layers):
            per_t: list[str] = []
            nodes: list[float] = []
            for t in thresholds:
                hits = [
                    row
                    for r in runs.get(model, [])
                    for row in (r.get("node_correlation") or [])
                    if row["layer"] == layer and row["threshold"] == t
                ]
                if not hits:
                    per_t.append("n/a")
                    continue
                pairs = statistics.fmean(h["pairs"] for h in hits)
                total = statistics.fmean(h["total_pairs"] for h in hits)
                nodes = [h["nodes"] - h["dead_nodes"] for h in hits]
                share = 100 * pairs / total if total else 0.0
                per_t.append(f"{pairs:.0f} ({share:.1f} %)")
            if all(cell == "n/a" for cell in per_t):
                continue
            live = f"{statistics.fmean(nodes):.0f}" if nodes else "n/a"
            if show_paper:
                values = PAPER_TABLE1.get(model)
                per_t.append(str(values[index]) if values and index < len(values) else "n/a")
            lines.append(f"| {model} | {layer} | {live} | " + " | ".join(per_t) + " |")
    if show_paper:
        lines += ["", f"{PAPER_NOTE} The paper's Table 1 has no GAAF column and only the 0.9 threshold."]
    return "\n".join(lines) + "\n"


def table3(runs: dict[str, list[dict[str, Any]]], dataset: str | None = None) -> str:
    """Average net variance per layer under dropout, at the last probe of each run (near convergence),
    beside the paper's Table 3.

    Each run's ``net_var`` is its ``stats/net_var.json`` (NetVarMonitor); models without dropout have none.
    """
    lines, rows, settings = [], [], set()
    show_paper = _paper(dataset)
    for model in MODELS:
        per_layer: dict[str, list[float]] = {}
        for r in runs.get(model, []):
            stats = r.get("net_var")
            if not stats or not stats.get("steps"):
                continue
            settings.add((stats.get("repeats"), stats.get("max_samples"), stats["steps"][-1]))
            for layer, values in stats["layers"].items():
                finite = [v for v in values if v is not None and math.isfinite(v)]
                if finite:
                    per_layer.setdefault(layer, []).append(finite[-1])
        for i, (layer, values) in enumerate(per_layer.items()):
            paper = f"{PAPER_TABLE3['hidden'][i]:g}" if i < 3 else "n/a"
            rows.append(
                f"| {model} | {layer} | {format_mean_std(values, '.4g', '.2g')} | {len(values)} |"
                + (f" {paper} |" if show_paper else "")
            )
        if per_layer:
            last = "| " + " | ".join([model, "last (output) layer", "not measured", "—"]) + " |"
            rows.append(last + (f" {PAPER_TABLE3['last']:g} |" if show_paper else ""))
    if settings:
        repeats = sorted({s[0] for s in settings})
        samples = sorted({str(s[1]) for s in settings})
        steps = sorted({s[2] for s in settings})
        lines += [
            f"Per-node variance of the net (activation input) over {', '.join(map(str, repeats))} dropout masks "
            f"on the first {', '.join(samples)} samples of one training batch, at the last probe of each run "
            f"(optimizer step {', '.join(map(str, steps))}), averaged over the layer's nodes and samples "
            "(NetVarMonitor); mean (sample std) over seeds.",
            "",
        ]
    paper_head = f" {_paper_header(dataset)} |" if show_paper else ""
    lines += [
        f"| model | layer | net variance | seeds |{paper_head}",
        "|---|---|---|---|" + "---|" * show_paper,
    ]
    lines += rows or ["| (no run recorded NetVarMonitor) | | | |" + " |" * show_paper]
    lines += [
        "",
        "Last layer not measured: NetVarMonitor records the net at the input of each activation module, "
        "and the output layer has none after it, so its net (the logits) is not recorded.",
    ]
    if show_paper:
        lines += [
            "",
            f"{PAPER_NOTE} Its setting: 20 dropout masks on one batch of 128 samples near convergence.",
        ]
    return "\n".join(lines) + "\n"


def tables_from_results(results: dict[str, Any]) -> dict[str, str]:
    """File name -> text of every table a saved ``results.json`` (or ``results_tuned.json``) supports."""
    dataset, runs = results["dataset"], results["runs"]
    if "studies" in results:  # gaaf-reproduce --tune
        from lightning_gaaf.cli.reproduce.tuned import table4_tuned

        head = table4_tuned(dataset, results["studies"], runs).split("\n\n", 1)[0]
        pairs = comparison_table(
            runs,
            [
                ("test accuracy, points", "test_acc", 2),
                ("best validation accuracy, points", "best_val_acc", 2),
            ],
        )
        return {"table4_tuned.md": f"{head}\n\nMean (sample std) over seeds.\n\n{pairs}"}
    out = {"table4.md": table4(dataset, runs), "table2.md": table2(runs, dataset)}
    every = [r for model_runs in runs.values() for r in model_runs]
    if any(r.get("node_correlation") for r in every):
        out["table1.md"] = table1(runs, dataset)
    if any(r.get("net_var") for r in every):
        out["table3.md"] = table3(runs, dataset)
    return out


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m lightning_gaaf.cli.reproduce.tables",
        description="Rebuild a gaaf-reproduce study's tables from its results.json, without training.",
    )
    parser.add_argument("results", type=Path, help="results.json or results_tuned.json of a study")
    parser.add_argument("--out", type=Path, default=None, help="output folder; default the file's folder")
    args = parser.parse_args(argv)
    if not args.results.is_file():
        parser.error(f"{args.results} is not a file")
    out = args.out or args.results.parent
    out.mkdir(parents=True, exist_ok=True)
    for name, text in tables_from_results(json.loads(args.results.read_text())).items():
        (out / name).write_text(text)
        print(out / name)


if __name__ == "__main__":
    main()
