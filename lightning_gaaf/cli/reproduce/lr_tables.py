"""Tables and figures of the learning-rate study, from whatever run records exist.

Per dataset and protocol, ``<out>/<dataset>/<protocol>/tables.md`` holds (1) the learning-rate
selection: every grid point's validation score per model and the selected rate; (2) epochs,
optimizer steps and wall time to each validation-accuracy target at each model's own rate, mean
(sample std) over seeds, and the paired-by-seed comparisons (the protocol's ``comparisons``, Holm
over the table; a run that stops before a target is censored at its last epoch); (3) the best-epoch
(lowest val/loss) test accuracy with the same comparisons, plus McNemar and a bootstrap over images
(:mod:`.comparisons`). ``val_acc.png`` shows the validation-accuracy curves at each model's
selected rate, mean over seeds with a min-max band.
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from lightning_gaaf.cli.reproduce import comparisons as cm
from lightning_gaaf.cli.reproduce import lr_plan as lp
from lightning_gaaf.cli.reproduce.grad_gain import gain_table
from lightning_gaaf.cli.reproduce.statistics import format_mean_std


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


def mean_std_cell(values: Sequence[float | None], digits: int = 1) -> str:
    """``mean (sample std)`` of the values present (one value alone), ``n/a`` without any."""
    values = [v for v in values if v is not None]
    return format_mean_std(values, f".{digits}f") if values else "n/a"


def _final_runs(records: Sequence[Mapping[str, Any]], model: str, lr: float | None) -> list[Mapping]:
    if lr is None:
        return []
    runs = [r for r in records if r["model"] == model and math.isclose(r["lr"], lr, rel_tol=1e-9)]
    return sorted(runs, key=lambda r: r["seed"])


def selected_runs(
    records: Sequence[Mapping[str, Any]],
    dataset: str,
    protocol: str,
    max_extensions: int,
    grids: Mapping[str, Sequence[float]] | None,
    control: bool = True,
) -> tuple[dict[str, lp.Selection], dict[str, list[Mapping]]]:
    """Each of the protocol's models' selection and its runs at the selected rate (once the selection
    is final; the control's at GAAF's rate, when the protocol has it), by seed."""
    proto = lp.PROTOCOLS[protocol]
    sels = lp.selections(dataset, protocol, records, max_extensions, grids)
    finals = {m: _final_runs(records, m, sels[m].best_lr if m in sels else None) for m in proto.models}
    if control and proto.control and "gaaf" in sels and sels["gaaf"].final:
        finals[lp.CONTROL] = _final_runs(records, lp.CONTROL, sels["gaaf"].best_lr)
    finals = {m: [r for r in runs if m == lp.CONTROL or sels[m].final] for m, runs in finals.items()}
    return sels, finals


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
    """Per model and target: how many seeds reached it and, over those, the time they took; for the
    others, the epoch at which they stopped (early stopping or the cap) without reaching it."""
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
            missed = [r for r, h in zip(runs, hits, strict=True) if h is None]
            reached = [mean_std_cell([h["epoch"] for h in got])] if got else []
            epochs = "; ".join(reached + ([not_reached_cell(missed)] if missed else []))
            lines.append(
                f"| {model} | {lp.lr_label(runs[0]['lr'])} | {target:.1f} | {len(got)}/{len(runs)} "
                f"| {epochs} | {mean_std_cell([h['step'] for h in got], 0)} "
                f"| {mean_std_cell([h['seconds'] for h in got])} | {mean_std_cell([h['cpu_seconds'] for h in got])} |"
            )
    return lines


def not_reached_cell(missed: Sequence[Mapping[str, Any]]) -> str:
    """``not reached (4 runs; stopped at epoch 21-26)``: runs that ended, by early stopping or at the
    epoch cap, without reaching a target, and where they ended."""
    last = sorted(r["epochs"][-1]["epoch"] for r in missed)
    at = f"{last[0]}" if last[0] == last[-1] else f"{last[0]}-{last[-1]}"
    capped = " (the cap)" if all(r["hit_cap"] for r in missed) else ""
    return f"not reached ({len(missed)} run{'s' * (len(missed) > 1)}; stopped at epoch {at}{capped})"


def to_target(record: Mapping[str, Any], target: float, unit: str = "epoch") -> cm.Measured:
    """Epochs (or optimizer steps) to ``target``; a run that never reached it is censored at the end
    of its training: its last epoch, whether early stopping or the epoch cap ended it (its time to
    the target, if it ever gets there, is later than that)."""
    hit = to_targets(record["epochs"], [target])[target]
    if hit is not None:
        return float(hit[unit]), False
    return float(record["epochs"][-1][unit]), True


def time_table(
    finals: Mapping[str, list[Mapping]],
    targets: Sequence[float],
    cap: int,
    comparisons: Sequence[tuple[str, str]],
) -> list[str]:
    """Paired-by-seed differences in epochs and optimizer steps to each target, Holm over the table."""
    rows = []
    for target in targets:
        for a, b in comparisons:
            row = cm.paired(finals, a, b, lambda r, t=target: to_target(r, t))
            steps = cm.paired(finals, a, b, lambda r, t=target: to_target(r, t, "step"))
            rows.append({**row, "target": target, "steps": steps})
    cm.with_holm(rows)
    lines = [
        "Paired by seed, each model at its own rate. A run that never reached a target (it stopped first: "
        f"early stopping on val/loss, or the {cap}-epoch cap; `not reached` above) counts as reaching it at "
        "its last epoch, so a difference involving it is a bound: the true difference, if that run would "
        "ever get there, lies further towards the run that did; a pair where neither run reached it is "
        "left out. p: paired t-test on epochs (the step "
        f"counts give the same test: steps per epoch are equal); p (Holm): adjusted across the {len(rows)} "
        "comparisons of this table. `n < 2`: fewer than two paired seeds.",
        "",
        "| comparison | target val acc % | paired seeds (censored) | epochs: mean difference (sample std) [95 % CI] "
        "| optimizer steps: mean difference (sample std) [95 % CI] | p | p (Holm) |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['a']} - {r['b']} | {r['target']:.1f} | {r['n']} ({r['censored']}) | {cm.diff_cell(r, 1)} "
            f"| {cm.diff_cell(r['steps'], 0)} | {cm.p_cell(r)} | {cm.p_cell(r, 'p_holm')} |"
        )
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
                f"| {model} | {lp.lr_label(runs[0]['lr'])} | {len(runs)} | {mean_std_cell([r['best_epoch'] for r in runs])} "
                f"| {mean_std_cell([r['epochs_trained'] for r in runs])} | {sum(r['hit_cap'] for r in runs)} "
                f"| {mean_std_cell([r['best_val_acc'] for r in runs], 2)} | {mean_std_cell([r['test_acc'] for r in runs], 2)} |"
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
    highest = -math.inf
    for model, runs in finals.items():
        if not runs:
            continue
        length = max(len(r["epochs"]) for r in runs)
        acc = np.full((len(runs), length), np.nan)
        for i, r in enumerate(runs):
            vals = [np.nan if e["val_acc"] is None else e["val_acc"] for e in r["epochs"]]
            acc[i, : len(vals)] = vals
        if np.isfinite(acc).any():
            highest = max(highest, float(np.nanmax(acc)))
        x = np.arange(1, length + 1)
        mean = np.nanmean(acc, axis=0)  # every epoch up to the longest run has at least one value
        (line,) = ax.plot(x, mean, label=f"{model} (lr {lp.lr_label(runs[0]['lr'])}, n = {len(runs)})")
        ax.fill_between(x, np.nanmin(acc, axis=0), np.nanmax(acc, axis=0), color=line.get_color(), alpha=0.2)
    for target in targets:
        ax.axhline(target, color="grey", linestyle=":", linewidth=0.8)
    top = 100 if max(targets) > 95 else max(targets) + 3
    if highest > top:  # no curve cut off
        top = math.ceil(highest)
    ax.set_ylim(min(targets) - 3, top)
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
    ax.legend(fontsize=8, loc="best")
    fig.tight_layout()
    fig.savefig(out)
    plt.close(fig)
    return out


def relative(path: Path) -> str:
    """``path`` relative to the working directory when it lies below it (no machine paths in tables)."""
    full = path.resolve()
    return (full.relative_to(Path.cwd()) if full.is_relative_to(Path.cwd()) else path).as_posix()


def rebuild_options(args: argparse.Namespace) -> str:
    """The options every study's rebuild command ends with (the output folder relative to the
    working directory)."""
    return (
        f"--max-epochs {args.max_epochs} --patience {args.patience} --max-extensions {args.max_extensions} "
        + (f"--grid {' '.join(map(repr, args.grid))} " if args.grid else "")
        + f"--out {relative(args.out)} --tables-only"
    )


def tables_command(args: argparse.Namespace) -> str:
    """The command that rebuilds these tables."""
    return (
        f"gaaf-reproduce --lr-study --datasets {' '.join(args.datasets)} --protocols {' '.join(args.protocols)} "
        + rebuild_options(args)
    )


def write_tables(args: argparse.Namespace, records: Sequence[Mapping[str, Any]]) -> list[Path]:
    """Write tables.md and val_acc.png of every study with finished runs; returns the files written."""
    written = []
    for dataset, protocol in args.studies:
        recs = [r for r in records if r["dataset"] == dataset and r["protocol"] == protocol]
        if recs:
            heading = f"Learning-rate study: {dataset}, {lp.PROTOCOLS[protocol].description}"
            written += study_tables(
                args, dataset, protocol, recs, args.out / dataset / protocol, heading, tables_command(args)
            )
    return written


def study_tables(
    args: argparse.Namespace,
    dataset: str,
    protocol: str,
    recs: Sequence[Mapping[str, Any]],
    folder: Path,
    heading: str,
    command: str,
    budget: str = "",
) -> list[Path]:
    """Write ``folder``/tables.md (under ``# heading``; ``budget`` opens its first paragraph) and
    val_acc.png of one study's records ``recs``; returns the files written."""
    proto = lp.PROTOCOLS[protocol]
    sels, finals = selected_runs(recs, dataset, protocol, args.max_extensions, args.grids)
    targets = proto.targets[dataset]
    title = (
        f"{dataset}, {proto.description}\n"
        "each model at its own selected learning rate; line: mean over seeds, band: min-max"
    )
    lines = [
        f"# {heading}",
        "",
        f"{budget}{len(recs)} finished runs; cap {args.max_epochs} epochs, early stopping on val/loss "
        f"(patience {args.patience}). Generated from the run records by `{command}`.",
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
        "epochs up to the target of their training+validation time (wall: depends on the machine "
        "and on what else ran on it, which the study's README states; CPU time of the run's "
        "process: less so; optimizer steps: exact).",
        "",
        *target_table(finals, targets),
        "",
        *time_table(finals, targets, args.max_epochs, proto.comparisons),
        "",
        "## 3. Test accuracy at the best-val/loss epoch (read once per run, never used to choose)",
        "",
        *test_table(finals),
        "",
        *cm.accuracy_table(
            rows := cm.accuracy_rows(finals, proto.comparisons, folder),
            "Paired differences in test accuracy at the best epoch, each model at its own rate:",
        ),
        "",
        cm.ACCURACY_NOTE.format(m=len(rows)),
        "",
        *gain_table(recs, proto),
    ]
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "tables.md").write_text("\n".join(lines))
    written = [folder / "tables.md"]
    png = figure(finals, targets, title, folder / "val_acc.png")
    return written + ([png] if png else [])
