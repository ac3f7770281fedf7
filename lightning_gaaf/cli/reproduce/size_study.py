"""``gaaf-reproduce --size-study``: does GAAF regularise like dropout where the plain net overfits?

The learning-rate study's models (base, dropout, GAAF; the paper's MNIST MLP) train on
``--train-sizes`` images of the training split (default 1 000 and 5 000): the DataModule's
``train_size``, the same seeded subset for every model and seed, the same validation images and
test set as the learning-rate study. Per model and size the learning rate is chosen on validation
from the protocol's log grid, extended at an edge (:mod:`.lr_plan`), then ``--seeds`` seeds train at
that rate. One protocol (``--protocol``, default ``no_momentum``: plain SGD, the paper's protocol and
the learning-rate study's first). The whole training split (50 000 images) is the learning-rate
study's runs of the same protocol and data: ``--reuse-lr-study DIR`` reads them from its results
folder instead of training them again.

Every finished run writes ``<out>/<dataset>/<protocol>/n<size>/runs/<model>_lr<lr>_seed<s>.json``
(the learning-rate study's record, plus the tested weights' accuracy on its training images) and
its per-image test predictions; rerunning skips finished runs; ``--tables-only`` rebuilds the tables
(:mod:`.size_tables`) from the records present.
"""

from __future__ import annotations

import argparse
import dataclasses
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from lightning_gaaf.cli.reproduce import lr_plan as lp
from lightning_gaaf.cli.reproduce.lr_study import (
    DATAMODULE,
    add_control_argument,
    add_study_arguments,
    finish_study_arguments,
    study_main,
)

PROG = "gaaf-reproduce --size-study"
#: Images of the MNIST / Fashion-MNIST training split (before validation is held out).
TRAIN_SPLIT = 60000
DEFAULT_VAL_SIZE = 10000


def training_images(val_size: int | None) -> int:
    """Images of the training split left after ``val_size`` (default the configs') are held out."""
    return TRAIN_SPLIT - (DEFAULT_VAL_SIZE if val_size is None else val_size)


def plan(args: argparse.Namespace, records: Sequence[dict[str, Any]]) -> list[lp.Run]:
    """Runs to start now: per dataset and size (smallest first) the learning-rate study's plan over
    that size's records; the control (base with GAAF's per-layer factors at GAAF's rate) with ``--control``."""
    todo = []
    for dataset in args.datasets:
        for size in sorted(args.train_sizes):
            recs = [r for r in records if r.get("train_size") == size]
            runs = lp.plan(
                [(dataset, args.protocol)], recs, args.seeds, args.max_extensions,
                control=args.control, grids=args.grids, models=args.models,
            )  # fmt: skip
            todo += [dataclasses.replace(r, train_size=size) for r in runs]
    return todo


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--datasets", nargs="+", choices=sorted(DATAMODULE), default=["mnist", "fashion_mnist"]
    )
    parser.add_argument("--protocol", choices=list(lp.MLP_PROTOCOLS), default="no_momentum")
    parser.add_argument(
        "--train-sizes", nargs="+", type=int, default=[1000, 5000], help="training images; default 1000 5000"
    )
    parser.add_argument(
        "--reuse-lr-study", default=None, metavar="DIR",
        help="the learning-rate study's --out: its runs are the whole training split's",
    )  # fmt: skip
    add_control_argument(parser, default=False)
    add_study_arguments(
        parser, models=lp.MLP_MODELS, max_epochs=500, out="reproduce/size_study", work_dir="runs/size_study"
    )
    args = parser.parse_args(argv)
    finish_study_arguments(parser, args)
    args.protocols = [args.protocol]
    args.full_size = training_images(args.val_size)
    bad = [n for n in args.train_sizes if not 1 <= n <= args.full_size]
    if bad:
        parser.error(f"--train-sizes: {bad} not in 1..{args.full_size} (the training split after validation)")
    if args.reuse_lr_study and args.full_size in args.train_sizes:
        parser.error(
            f"--train-sizes {args.full_size} is the whole training split: --reuse-lr-study already has its runs"
        )
    if args.reuse_lr_study and not Path(args.reuse_lr_study).is_dir():
        parser.error(f"--reuse-lr-study: {args.reuse_lr_study} is not a folder")
    args.train_sizes = sorted(set(args.train_sizes))
    args.reuse_lr_study = Path(args.reuse_lr_study) if args.reuse_lr_study else None
    return args


def main(argv: Sequence[str] | None = None) -> None:
    from lightning_gaaf.cli.reproduce.size_tables import write_tables

    args = parse_args(argv)
    study_main(PROG, args, lambda records: plan(args, records), write_tables)


if __name__ == "__main__":
    main()
