"""``gaaf-reproduce --cnn-study``: Table 5's question on Fashion-MNIST, each variant at its own learning rate.

The SmallCNN of the paper's SVHN row on 28x28 grayscale, four variants (``base``, ``bn``, ``gaaf``,
``bn_gaaf``; ReLU, GAAF with the shifted-sigmoid shape), the published configs
``configs/fashion_mnist_cnn_*.yaml`` (SGD, momentum 0.9, weight decay 5e-4, cosine decay over the
run's epoch cap). One rate does not fit all four (GAAF diverges at the SVHN protocol's 0.05), so the
learning-rate study's machinery gives each its own: protocol ``small_cnn`` of :mod:`.lr_plan` (log
grid, extended at an edge, selection on validation, then ``--seeds`` seeds at the selected rate; no
control), the learning-rate study's runner, records and tables (:mod:`.lr_study`, :mod:`.lr_tables`).

The budget is an option: ``--train-size`` images of the training split (default 10 000: the
DataModule's seeded nested subset, as in the size study; 50 000 is the whole split after
validation), ``--max-epochs`` (default 15), ``--seeds`` (default 3). Every finished run writes
``<out>/fashion_mnist/small_cnn/n<size>/runs/<model>_lr<lr>_seed<s>.json`` and its per-image test
predictions; rerunning skips finished runs; ``tables.md`` and ``val_acc.png`` beside ``runs/`` are
rebuilt after every run and with ``--tables-only``.
"""

from __future__ import annotations

import argparse
import dataclasses
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from lightning_gaaf.cli.reproduce import lr_plan as lp
from lightning_gaaf.cli.reproduce.lr_study import (
    add_study_arguments,
    finish_study_arguments,
    study_dir,
    study_main,
)
from lightning_gaaf.cli.reproduce.size_study import training_images

PROG = "gaaf-reproduce --cnn-study"
DATASET = "fashion_mnist"
PROTOCOL = "small_cnn"
DEFAULT_TRAIN_SIZE = 10000


def plan(args: argparse.Namespace, records: Sequence[Mapping[str, Any]]) -> list[lp.Run]:
    """Runs to start now: the learning-rate study's plan over this training size's records."""
    mine = [r for r in records if r.get("train_size") == args.train_size]
    runs = lp.plan(
        args.studies,
        mine,
        args.seeds,
        args.max_extensions,
        control=False,
        grids=args.grids,
        models=args.models,
    )
    return [dataclasses.replace(r, train_size=args.train_size) for r in runs]


def budget(args: argparse.Namespace) -> str:
    """The budget every run of these tables had, as the tables state it."""
    return (
        f"Budget: {args.train_size} of the {args.full_size} training images, at most {args.max_epochs} "
        f"epochs per run (the cosine decay spans them), {args.seeds} seeds per variant at its selected rate. "
    )


def tables_command(args: argparse.Namespace) -> str:
    """The command that rebuilds these tables."""
    from lightning_gaaf.cli.reproduce.lr_tables import rebuild_options

    return (
        f"gaaf-reproduce --cnn-study --train-size {args.train_size} --seeds {args.seeds} "
        + rebuild_options(args)
    )


def write_tables(args: argparse.Namespace, records: Sequence[Mapping[str, Any]]) -> list[Path]:
    """``tables.md`` and ``val_acc.png`` of this training size's runs; returns the files written."""
    from lightning_gaaf.cli.reproduce.lr_tables import study_tables

    mine = [
        r
        for r in records
        if (r["dataset"], r["protocol"], r.get("train_size")) == (DATASET, PROTOCOL, args.train_size)
    ]
    if not mine:
        return []
    heading = f"CNN study: {DATASET}, {lp.PROTOCOLS[PROTOCOL].description}, {args.train_size} training images"
    folder = study_dir(args.out, DATASET, PROTOCOL, args.train_size)
    return study_tables(args, DATASET, PROTOCOL, mine, folder, heading, tables_command(args), budget(args))


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--train-size", type=int, default=DEFAULT_TRAIN_SIZE,
        help=f"training images (a seeded subset of the split); default {DEFAULT_TRAIN_SIZE}",
    )  # fmt: skip
    add_study_arguments(
        parser, models=lp.PROTOCOLS[PROTOCOL].models, max_epochs=15, seeds=3,
        out="reproduce/cnn_study", work_dir="runs/cnn_study",
    )  # fmt: skip
    args = parser.parse_args(argv)
    finish_study_arguments(parser, args)
    args.full_size = training_images(args.val_size)
    if not 1 <= args.train_size <= args.full_size:
        parser.error(
            f"--train-size: {args.train_size} not in 1..{args.full_size} (the training split after validation)"
        )
    args.datasets, args.protocols = [DATASET], [PROTOCOL]
    args.studies = [(DATASET, PROTOCOL)]
    return args


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    study_main(PROG, args, lambda records: plan(args, records), write_tables)


if __name__ == "__main__":
    main()
