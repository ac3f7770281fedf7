"""Tables of the training-set size study, from whatever run records exist.

Per dataset, ``<out>/<dataset>/<protocol>/tables.md`` holds (1) each size's learning-rate selection;
(2) per size and model at its selected rate: test accuracy and the generalisation gap (accuracy of
the tested weights on their training images minus test accuracy), mean (sample std) over seeds;
(3) per size, the protocol's paired comparisons (:func:`comparisons`: GAAF - base, GAAF - dropout,
dropout - base, and the control - GAAF with ``--control``) of test accuracy (t-test, McNemar, bootstrap over images;
:mod:`.comparisons`) and of the gap, Holm within each table.
"""

from __future__ import annotations

import argparse
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from lightning_gaaf.cli.reproduce import comparisons as cm
from lightning_gaaf.cli.reproduce import lr_plan as lp
from lightning_gaaf.cli.reproduce.lr_study import load_records, study_dir
from lightning_gaaf.cli.reproduce.lr_tables import (
    mean_std_cell,
    rebuild_options,
    relative,
    selected_runs,
    selection_table,
)


def comparisons(protocol: str, control: bool = False) -> tuple[tuple[str, str], ...]:
    """The protocol's comparisons; the control's only when the study trains it (``--control``)."""
    return tuple(c for c in lp.PROTOCOLS[protocol].comparisons if control or lp.CONTROL not in c)


def gap(record: Mapping[str, Any]) -> float | None:
    """Train minus test accuracy (points) of the tested weights; None without their train accuracy."""
    train = record.get("train_eval_acc")
    return None if train is None or record.get("test_acc") is None else train - record["test_acc"]


def running_train_acc(record: Mapping[str, Any]) -> float | None:
    """The running training accuracy (%) during the best epoch (weights moving, dropout active)."""
    best = next((e for e in record["epochs"] if e["epoch"] == record.get("best_epoch")), None)
    return None if best is None else best.get("train_acc")


def tables_command(args: argparse.Namespace) -> str:
    """The command that rebuilds these tables."""
    reuse = f"--reuse-lr-study {relative(args.reuse_lr_study)} " if args.reuse_lr_study else ""
    return (
        f"gaaf-reproduce --size-study --datasets {' '.join(args.datasets)} --protocol {args.protocol} "
        + ("--control " if args.control else "")
        + f"--train-sizes {' '.join(map(str, args.train_sizes))} {reuse}"
        + rebuild_options(args)
    )


def model_table(by_size: Mapping[int, tuple[Mapping[str, list[Mapping]], Path, bool]]) -> list[str]:
    lines = [
        "| train images | model | lr | seeds | best epoch | at cap | val acc % | test acc % "
        "| train acc %, tested weights | gap: train - test, points | running train acc % at best epoch "
        "| running train - test, points |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for size, (finals, _, reused) in by_size.items():
        for model, runs in finals.items():
            if not runs:
                continue
            lines.append(
                f"| {size}{' (lr study)' if reused else ''} | {model} | {lp.lr_label(runs[0]['lr'])} | {len(runs)} "
                f"| {mean_std_cell([r['best_epoch'] for r in runs])} | {sum(r['hit_cap'] for r in runs)} "
                f"| {mean_std_cell([r['best_val_acc'] for r in runs], 2)} | {mean_std_cell([r['test_acc'] for r in runs], 2)} "
                f"| {mean_std_cell([r.get('train_eval_acc') for r in runs], 2)} | {mean_std_cell([gap(r) for r in runs], 2)} "
                f"| {mean_std_cell([running_train_acc(r) for r in runs], 2)} "
                f"| {mean_std_cell([running_gap(r) for r in runs], 2)} |"
            )
    return lines


def running_gap(record: Mapping[str, Any]) -> float | None:
    """Running train accuracy during the best epoch minus test accuracy (points)."""
    train = running_train_acc(record)
    return None if train is None or record.get("test_acc") is None else train - record["test_acc"]


GAPS = (("gap, tested weights", gap), ("running train - test", running_gap))


def gap_table(finals: Mapping[str, list[Mapping]], pairs: Sequence[tuple[str, str]]) -> list[str]:
    """Paired differences of both gaps (:data:`GAPS`) for every comparison in ``pairs``, Holm over the table."""
    rows = []
    for label, measure in GAPS:
        for a, b in pairs:
            row = cm.paired(finals, a, b, lambda r, f=measure: None if f(r) is None else (f(r), False))
            rows.append({**row, "measure": label})
    cm.with_holm(rows)
    lines = [
        "| comparison | measure | paired seeds | difference, points: mean (sample std) [95 % CI] | p | p (Holm) |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['a']} - {r['b']} | {r['measure']} | {r['n']} | {cm.diff_cell(r, 2)} | {cm.p_cell(r)} "
            f"| {cm.p_cell(r, 'p_holm')} |"
        )
    return lines


def write_tables(args: argparse.Namespace, records: Sequence[Mapping[str, Any]]) -> list[Path]:
    """Write ``tables.md`` per dataset with finished runs; returns the files written."""
    reused = load_records(args.reuse_lr_study) if args.reuse_lr_study else []
    written = []
    for dataset in args.datasets:
        protocol = args.protocol
        mine = [r for r in records if r["dataset"] == dataset and r["protocol"] == protocol]
        sources = [
            (n, [r for r in mine if r.get("train_size") == n], args.out, False) for n in args.train_sizes
        ]
        if args.reuse_lr_study:
            full = [
                r
                for r in reused
                if (r["dataset"], r["protocol"], r.get("train_size")) == (dataset, protocol, None)
            ]
            sources.append((args.full_size, full, args.reuse_lr_study, True))
        by_size: dict[int, tuple[dict[str, list[Mapping]], Path, bool]] = {}
        selection: list[str] = []
        for size, recs, root, is_reused in sources:
            if not recs:
                continue
            # the learning-rate study's runs were planned on the protocol's own grid, not on --grid
            grids = None if is_reused else args.grids
            sels, finals = selected_runs(
                recs, dataset, protocol, args.max_extensions, grids, control=args.control
            )
            folder = study_dir(root, dataset, protocol, None if is_reused else size)
            by_size[size] = (finals, folder, is_reused)
            source = " (the learning-rate study's runs)" if is_reused else ""
            selection += [f"### {size} training images{source}", "", *selection_table(sels, recs), ""]
        if not by_size:
            continue
        pairs = comparisons(protocol, args.control)
        paired: list[str] = []  # one table per size and question: Holm within each
        for size, (finals, folder, _) in by_size.items():
            rows = cm.accuracy_rows(finals, pairs, folder)
            paired += [
                f"### {size} training images",
                "",
                *cm.accuracy_table(rows, "Test accuracy at the best epoch, each model at its own rate:"),
                "",
                cm.ACCURACY_NOTE.format(m=len(rows)),
                "",
                "Generalisation gap, paired by seed: train - test accuracy of the tested weights, and the "
                "running train accuracy of the best epoch - test accuracy; p: paired t-test; p (Holm): adjusted "
                f"across the {len(pairs) * len(GAPS)} comparisons of this table:",
                "",
                *gap_table(finals, pairs),
                "",
            ]
        lines = [
            f"# Training-set size study: {dataset}, {lp.PROTOCOLS[protocol].description}",
            "",
            f"{len(mine)} finished runs of this study"
            + (f", {len(sources[-1][1])} of the learning-rate study" if args.reuse_lr_study else "")
            + f"; cap {args.max_epochs} epochs (the learning-rate study's runs: its own cap), early stopping on "
            f"val/loss (patience {args.patience}). Generated "
            f"from the run records by `{tables_command(args)}`.",
            "",
            "## 1. Learning-rate selection per size (validation only)",
            "",
            f"Criterion: {lp.SELECTION}. Cells: val acc % at the best epoch / lowest val loss / that epoch; "
            "bold = selected.",
            "",
            *selection,
            "## 2. Test accuracy and generalisation gap, each model at its selected rate",
            "",
            "Mean (sample std) over seeds; one seed: the value alone. Train accuracy of the tested weights: "
            "the best-val/loss checkpoint evaluated on the run's training images in eval mode (no dropout); "
            "n/a for runs that did not record it. Running train accuracy: the average over the best epoch's "
            "batches while training (weights moving, dropout active), for every run.",
            "",
            *model_table(by_size),
            "",
            "## 3. Paired comparisons per size",
            "",
            *paired,
        ]
        out = args.out / dataset / protocol
        out.mkdir(parents=True, exist_ok=True)
        (out / "tables.md").write_text("\n".join(lines))
        written.append(out / "tables.md")
    return written
