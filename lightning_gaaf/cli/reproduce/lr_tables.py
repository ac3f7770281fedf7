"""Tables and figures of the learning-rate study, from whatever run records exist.

Per dataset and protocol, ``<out>/<dataset>/<protocol>/tables.md`` holds (1) the learning-rate
selection: every grid point's validation score per model and the selected rate; (2) epochs,
optimizer steps and wall time to each validation-accuracy target at each model's own rate, mean
(sample std) over seeds, and paired-by-seed differences of GAAF against the others; (3) the
best-epoch (lowest val/loss) test accuracy. ``val_acc.png`` shows the validation-accuracy curves
at each model's selected rate, mean over seeds with a min-max band.
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from lightning_gaaf.cli.reproduce import lr_plan as lp
from lightning_gaaf.cli.reproduce.statistics import format_mean_std, format_paired, holm, paired_difference

ROWS = (*lp.MODELS, lp.CONTROL)
COMPARISONS = (("gaaf", "base"), ("gaaf", "dropout"), ("gaaf", lp.CONTROL), (lp.CONTROL, "base"))


def to_targets(epochs: Sequence[Mapping[str, Any]], targets: Sequence[float]) -> dict[float, dict | None]:
    """First epoch whose val accuracy (%) reaches each target: its epoch, optimizer step and the wall
    and CPU time of the epochs up to it (None when an epoch lacks its time); None when never reached."""
    out: dict[float, dict | None] = {}
    for target in targets:
        out[target] = None
        elapsed: float | None = 0.0
        cpu: float | None = 0.0
        for e in epochs:
            elapsed = None if elapsed is None or e.get("time_s") is None else elapsed + e["time_s"]
            cpu = None if cpu is None or e.get("cpu_s") is None else cpu + e["cpu_s"]
            if e.get("val_acc") is not None and e["val_acc"] >= target:
                out[target] = {"epoch": e["epoch"], "step": e["step"], "seconds": elapsed, "cpu_seconds": cpu}
                break
    return out


def _ms(values: Sequence[float], digits: int = 1) -> str:
    values = [v for v in values if v is not None]
    return format_mean_std(values, f".{digits}f") if values else "n/a"


def _final_runs(records: Sequence[Mapping[str, Any]], model: str, lr: float | None) -> list[Mapping]:
    if lr is None:
        return []
    runs = [r for r in records if r["model"] == model and math.isclose(r["lr"], lr, rel_tol=1e-9)]
    return sorted(runs, key=lambda r: r["seed"])


def selection_table(sels: Mapping[str, lp.Selection], records: Sequence[Mapping[str, Any]]) -> list[str]:
    lrs = sorted({lr for s in sels.values() for lr in s.grid})
    lines = [
        "| model | " + " | ".join(f"lr {lp.lr_label(lr)}" for lr in lrs) + " | selected lr | final |",
        "|---|" + "---|" * (len(lrs) + 2),
    ]
    for model, sel in sels.items():
        epochs = {r["lr"]: r["best_epoch"] for r in records if r["model"] == model and r["seed"] == 0}
        epochs = {
            lr: next((e for k, e in epochs.items() if math.isclose(k, lr, rel_tol=1e-9)), "?") for lr in lrs
        }
        cells = []
        for lr in lrs:
            sc = sel.scores.get(lr) if lr in sel.scores else "absent"
            if sc == "absent":
                cells.append("")
            elif sc is None:
                cells.append("pending")
            elif not math.isfinite(sc[0]):
                cells.append("diverged")
            else:
                text = f"{sc[0]:.2f} / {-sc[1]:.4f} / {epochs[lr]}"
                cells.append(f"**{text}**" if lr == sel.best_lr else text)
        final = ("yes" if sel.final else "no") + (f" (best at {sel.at_edge} edge)" if sel.at_edge else "")
        best = "n/a" if sel.best_lr is None else lp.lr_label(sel.best_lr)
        lines.append(f"| {model} | " + " | ".join(cells) + f" | {best} | {final} |")
    return lines


def target_table(finals: Mapping[str, list[Mapping]], targets: Sequence[float]) -> list[str]:
    lines = [
        "| model | lr | target val acc % | reached (of n) | epochs | optimizer steps | wall time s | CPU time s |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for model, runs in finals.items():
        if not runs:
            continue
        for target in targets:
            hits = [to_targets(r["epochs"], targets)[target] for r in runs]
            got = [h for h in hits if h is not None]
            lines.append(
                f"| {model} | {lp.lr_label(runs[0]['lr'])} | {target:.1f} | {len(got)}/{len(runs)} "
                f"| {_ms([h['epoch'] for h in got])} | {_ms([h['step'] for h in got], 0)} "
                f"| {_ms([h['seconds'] for h in got])} | {_ms([h['cpu_seconds'] for h in got])} |"
            )
    return lines


def paired_lines(finals: Mapping[str, list[Mapping]], targets: Sequence[float]) -> list[str]:
    """Paired-by-seed differences in epochs to each target (only seeds where both reached it), with a
    paired t-test and Holm's correction over all the comparisons listed."""
    rows: list[tuple[str, dict[str, Any], str]] = []
    for a, b in COMPARISONS:
        ra = {r["seed"]: to_targets(r["epochs"], targets) for r in finals.get(a, [])}
        rb = {r["seed"]: to_targets(r["epochs"], targets) for r in finals.get(b, [])}
        for target in targets:
            seeds = [s for s in sorted(set(ra) & set(rb)) if ra[s][target] and rb[s][target]]
            if len(seeds) < 2:
                continue
            d = paired_difference(
                [ra[s][target]["epoch"] for s in seeds], [rb[s][target]["epoch"] for s in seeds]
            )
            ratio = [ra[s][target]["epoch"] / rb[s][target]["epoch"] for s in seeds]
            extra = f"; epoch ratio {format_mean_std(ratio)}"
            for key, label in (("seconds", "wall-time"), ("cpu_seconds", "CPU-time")):
                if all(ra[s][target][key] and rb[s][target][key] for s in seeds):
                    extra += f"; {label} ratio {format_mean_std([ra[s][target][key] / rb[s][target][key] for s in seeds])}"
            rows.append((f"{a} - {b}, epochs to {target:.1f} %", d, extra + f"; seeds {seeds}"))
    adjusted = holm([d["p_value"] for _, d, _ in rows])
    lines = []
    for (label, d, extra), p_holm in zip(rows, adjusted, strict=True):
        text = "* " + format_paired(label, d, unit=" epochs") + extra
        if p_holm is not None:
            text += f"; Holm-adjusted p = {p_holm:.3g} (over the {len(rows)} comparisons listed)"
        lines.append(text)
    return lines


def test_table(finals: Mapping[str, list[Mapping]]) -> list[str]:
    lines = [
        "| model | lr | n | best epoch (lowest val/loss) | epochs trained | at cap | val acc % at best epoch "
        "| test acc % at best epoch |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for model, runs in finals.items():
        if runs:
            lines.append(
                f"| {model} | {lp.lr_label(runs[0]['lr'])} | {len(runs)} | {_ms([r['best_epoch'] for r in runs])} "
                f"| {_ms([r['epochs_trained'] for r in runs])} | {sum(r['hit_cap'] for r in runs)} "
                f"| {_ms([r['best_val_acc'] for r in runs], 2)} | {_ms([r['test_acc'] for r in runs], 2)} |"
            )
    return lines


def figure(
    finals: Mapping[str, list[Mapping]], targets: Sequence[float], title: str, out: Path
) -> Path | None:
    """Validation accuracy over epochs at each model's rate: mean over seeds, min-max band."""
    import matplotlib
    import matplotlib.ticker

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    if not any(finals.values()):
        return None
    fig, ax = plt.subplots(figsize=(7.5, 4.5), dpi=120)
    for model, runs in finals.items():
        if not runs:
            continue
        length = max(len(r["epochs"]) for r in runs)
        acc = np.full((len(runs), length), np.nan)
        for i, r in enumerate(runs):
            vals = [np.nan if e["val_acc"] is None else e["val_acc"] for e in r["epochs"]]
            acc[i, : len(vals)] = vals
        x = np.arange(1, length + 1)
        mean = np.nanmean(acc, axis=0)  # every epoch up to the longest run has at least one value
        (line,) = ax.plot(x, mean, label=f"{model} (lr {lp.lr_label(runs[0]['lr'])}, n = {len(runs)})")
        ax.fill_between(x, np.nanmin(acc, axis=0), np.nanmax(acc, axis=0), color=line.get_color(), alpha=0.2)
    for target in targets:
        ax.axhline(target, color="grey", linestyle=":", linewidth=0.8)
    ax.set_ylim(min(targets) - 3, 100 if max(targets) > 95 else max(targets) + 3)
    ax.set_xscale("log")
    ticks = [t for t in (1, 2, 3, 5, 10, 20, 30, 50, 100, 200) if t <= ax.get_xlim()[1]]
    ax.set_xticks(ticks, [str(t) for t in ticks])
    ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    for target in targets:
        ax.annotate(
            f"{target:g} %",
            (1.0, target),
            xycoords=("axes fraction", "data"),
            fontsize=7,
            xytext=(2, 0),
            textcoords="offset points",
            va="center",
            color="grey",
        )
    ax.set_xlabel("epoch (log scale)")
    ax.set_ylabel("validation accuracy %")
    ax.set_title(title, fontsize=10)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    fig.savefig(out)
    plt.close(fig)
    return out


def write_tables(args: argparse.Namespace, records: Sequence[Mapping[str, Any]]) -> list[Path]:
    """Write tables.md and val_acc.png of every study with finished runs; returns the files written."""
    written = []
    for dataset, protocol in args.studies:
        recs = [r for r in records if r["dataset"] == dataset and r["protocol"] == protocol]
        if not recs:
            continue
        folder = args.out / dataset / protocol
        sels = lp.selections(dataset, protocol, recs, args.max_extensions, args.grids)
        finals = {m: _final_runs(recs, m, sels[m].best_lr if m in sels else None) for m in lp.MODELS}
        if "base" in sels and sels["base"].final:
            finals[lp.CONTROL] = _final_runs(recs, lp.CONTROL, sels["base"].best_lr)
        finals = {m: [r for r in runs if m == lp.CONTROL or sels[m].final] for m, runs in finals.items()}
        targets = lp.TARGETS[dataset]
        title = (
            f"{dataset}, {lp.PROTOCOLS[protocol][1]}: each model at its own selected learning rate\n"
            "line: mean over seeds; band: min-max over seeds"
        )
        lines = [
            f"# Learning-rate study: {dataset}, {lp.PROTOCOLS[protocol][1]}",
            "",
            f"{len(recs)} finished runs; cap {args.max_epochs} epochs, early stopping on val/loss "
            f"(patience {args.patience}). Generated by `gaaf-reproduce --lr-study --tables-only`.",
            "",
            "## 1. Learning-rate selection (validation only)",
            "",
            f"Criterion: {lp.SELECTION}. Cells: val acc % at the best epoch / lowest val loss / that epoch; bold = selected.",
            "",
            *selection_table(sels, recs),
            "",
            "## 2. Time to validation-accuracy targets, each model at its selected rate",
            "",
            "Mean (sample std) over the seeds that reached the target; wall / CPU time = sum over the "
            "epochs up to the target of their training+validation time (wall: 2 runs at nice 19 on 2 "
            "cores shared with other work, very noisy; CPU time of the run's process: less so; "
            "optimizer steps: exact).",
            "",
            *target_table(finals, targets),
            "",
            *paired_lines(finals, targets),
            "",
            "## 3. Test accuracy at the best-val/loss epoch (read once per run, never used to choose)",
            "",
            *test_table(finals),
            "",
            f"Control `{lp.CONTROL}`: base at base's rate with per-layer factors {lp.GAAF_GRAD_RATIO} "
            "(GAAF/base gradient information, docs/results/mnist_slow/table2.md).",
            "",
        ]
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "tables.md").write_text("\n".join(lines))
        written.append(folder / "tables.md")
        png = figure(finals, targets, title, folder / "val_acc.png")
        if png:
            written.append(png)
    return written
