"""``gaaf-reproduce --lr-study``: does GAAF train faster, or does it only take a bigger step?

Each model (base, dropout, GAAF; the paper's MNIST MLP) gets its OWN learning rate, chosen on
validation from a log grid (:mod:`.lr_plan`), in both protocols (SGD without momentum:
``configs/mnist_slow_*``; with momentum 0.9: ``configs/mnist_*``), on MNIST and Fashion-MNIST; then
``--seeds`` seeds train at that rate. A control trains base with GAAF's per-layer gradient ratios
as per-layer learning-rate factors (``ImageClassifier(layer_lr_scale=...)``) at GAAF's rate.
Every run stops early on ``val/loss`` (``--patience``) or at ``--max-epochs``; its best-val/loss
checkpoint is tested once, and the test set plays no part in any choice.

Every finished run writes one small JSON, ``<out>/<dataset>/<protocol>/runs/<model>_lr<lr>_seed<s>.json``
(per-epoch validation accuracy/loss, wall time and optimizer steps, best epoch, test accuracy, the
tested weights' accuracy on the training images) and
its per-image test predictions ``predictions/<same name>.npz``; run directories with checkpoints go
to ``--work-dir``. Rerunning the command skips finished runs and restarts unfinished ones; the
tables and figures (:mod:`.lr_tables`) are rebuilt after every run, and on demand from
whatever JSONs exist with ``--tables-only``. The runner (:func:`run_study`) and the records serve
the training-set size study (:mod:`.size_study`) and the CNN study (:mod:`.cnn_study`) too.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import shutil
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from pathlib import Path
from typing import Any

from lightning_gaaf.cli.reproduce import lr_plan as lp
from lightning_gaaf.cli.reproduce.runs import Job, Outcome, run_job
from lightning_gaaf.cli.threads import start_threads
from lightning_gaaf.run.bundled import configs_dir

PROG = "gaaf-reproduce --lr-study"
DATAMODULE = {
    "mnist": "lightning_gaaf.datamodules.MNISTDataModule",
    "fashion_mnist": "lightning_gaaf.datamodules.FashionMNISTDataModule",
}
QUICK_ARGS = [
    "--trainer.limit_train_batches", "8", "--trainer.limit_val_batches", "2",
    "--trainer.limit_test_batches", "2", "--trainer.log_every_n_steps", "2",
]  # fmt: skip
#: Only what the study reads: gradient information (for the control's factors), epoch times, predictions,
#: the tested weights' training-set accuracy (for the size study's generalisation gap).
CALLBACKS = (
    "[{class_path: lightning_gaaf.callbacks.GradInfoMonitor}, "
    "{class_path: lightning_gaaf.callbacks.timing.EpochTimer}, "
    "{class_path: lightning_gaaf.callbacks.predictions.TestPredictions}, "
    "{class_path: lightning_gaaf.callbacks.train_accuracy.TrainSetAccuracy}]"
)


def study_dir(out: Path, dataset: str, protocol: str, train_size: int | None = None) -> Path:
    """``<out>/<dataset>/<protocol>``, and ``/n<train_size>`` for a training subset (size study)."""
    folder = out / dataset / protocol
    return folder if train_size is None else folder / f"n{train_size}"


def record_path(out: Path, run: lp.Run) -> Path:
    return study_dir(out, run.dataset, run.protocol, run.train_size) / "runs" / f"{run.name}.json"


def load_records(out: Path) -> list[dict[str, Any]]:
    """Every finished run's record under ``out`` (a JSON that does not parse is not finished)."""
    records = []
    for path in sorted([*out.glob("*/*/runs/*.json"), *out.glob("*/*/n*/runs/*.json")]):
        try:
            records.append(json.loads(path.read_text()))
        except (OSError, ValueError):
            continue
    return records


def fit_args(args: argparse.Namespace, run: lp.Run, run_dir: Path) -> list[str]:
    """The ``gaaf-fit`` command line of one run: the published config, the run's rate and seed."""
    cmd = [
        "--config", str(args.configs / run.config),
        "--run_dir", str(run_dir), "--seed_everything", str(run.seed),
        "--data.class_path", DATAMODULE[run.dataset],
        "--model.optimizer.init_args.lr", repr(run.lr),
        "--trainer.logger", "false", "--trainer.enable_progress_bar", "false",
        "--trainer.max_epochs", str(args.max_epochs),
        "--trainer.callbacks", CALLBACKS,
        "--trainer.callbacks+=EarlyStopping", "--trainer.callbacks.monitor=val/loss",
        "--trainer.callbacks.mode=min", f"--trainer.callbacks.patience={args.patience}",
        "--trainer.callbacks+=ModelCheckpoint", "--trainer.callbacks.monitor=val/loss",
        "--trainer.callbacks.mode=min", f"--trainer.callbacks.dirpath={run_dir / 'checkpoints'}",
        "--trainer.callbacks.filename=best-{epoch:03d}", "--trainer.callbacks.save_top_k=1",
    ]  # fmt: skip
    if run.model == lp.CONTROL:
        cmd += ["--model.layer_lr_scale", json.dumps(lp.GAAF_GRAD_RATIO)]
    if args.data_dir:
        cmd += ["--data.init_args.root", str(args.data_dir)]
    if args.val_size is not None:
        cmd += ["--data.init_args.val_size", str(args.val_size)]
    if run.train_size is not None:
        cmd += ["--data.init_args.train_size", str(run.train_size)]
    return cmd + (QUICK_ARGS if args.quick else [])


def _pct(value: float | None) -> float | None:
    return None if value is None else round(100.0 * value, 4)


def summarize(args: argparse.Namespace, run: lp.Run, run_dir: Path, seconds: float) -> dict[str, Any] | None:
    """The run's record, or None when it did not finish (no test metrics)."""
    from lightning_gaaf.stats import find_stats_file, read_stats

    try:
        metrics = json.loads((run_dir / "stats" / "metrics.json").read_text())
    except (OSError, ValueError):
        return None
    if metrics.get("test", {}).get("test/acc") is None or not metrics.get("epochs"):
        return None
    epochs = [
        {
            "epoch": e["epoch"], "step": e["step"], "val_acc": _pct(e.get("val/acc")),
            "val_loss": e.get("val/loss"), "train_acc": _pct(e.get("train/acc")),
            "time_s": None if e.get("time/epoch_s") is None else round(e["time/epoch_s"], 3),
            "cpu_s": None if e.get("time/epoch_cpu_s") is None else round(e["time/epoch_cpu_s"], 3),
        }
        for e in metrics["epochs"]
    ]  # fmt: skip
    finite = [e for e in epochs if e["val_loss"] is not None]
    best = min(finite, key=lambda e: e["val_loss"]) if finite else None
    grad = find_stats_file(run_dir / "stats", "grad_info")
    return {
        "dataset": run.dataset, "protocol": run.protocol, "model": run.model, "lr": run.lr, "seed": run.seed,
        "train_size": run.train_size,
        "config": f"configs/{run.config}",
        "layer_lr_scale": lp.GAAF_GRAD_RATIO if run.model == lp.CONTROL else None,
        "max_epochs": args.max_epochs, "patience": args.patience, "quick": args.quick,
        "epochs_trained": len(epochs), "hit_cap": len(epochs) >= args.max_epochs,
        "steps_per_epoch": epochs[0]["step"],
        "best_epoch": None if best is None else best["epoch"],
        "best_val_loss": None if best is None else best["val_loss"],
        "best_val_acc": None if best is None else best["val_acc"],
        "test_acc": _pct(metrics["test"]["test/acc"]), "test_loss": metrics["test"].get("test/loss"),
        "train_eval_acc": _pct(metrics["test"].get("test/train_acc")),
        "train_eval_loss": metrics["test"].get("test/train_loss"),
        "train_time_s": round(sum(e["time_s"] or 0.0 for e in epochs), 2),
        "train_cpu_s": round(sum(e["cpu_s"] or 0.0 for e in epochs), 2),
        "process_time_s": round(seconds, 2),
        "grad_info": ((read_stats(grad) if grad else None) or {}).get("summary", {}),
        "predictions": f"predictions/{run.name}.npz",
        "epochs": epochs,
    }  # fmt: skip


def job_for(args: argparse.Namespace, run: lp.Run) -> Job:
    """The ``gaaf-fit`` job of one run, in a fresh run directory (an interrupted or failed one starts again)."""
    run_dir = (study_dir(args.work_dir, run.dataset, run.protocol, run.train_size) / run.name).resolve()
    if run_dir.exists():
        shutil.rmtree(run_dir)
    run_dir.parent.mkdir(parents=True, exist_ok=True)
    return Job(run, tuple(fit_args(args, run, run_dir)), run_dir.parent / f"{run.name}.log")


def diverged(outcome: Outcome) -> dict[str, Any] | None:
    """The first non-finite value of a run that trained to its end but diverged, else None."""
    from lightning_gaaf.run.result import DIVERGED_EXIT_CODE

    result = outcome.result
    if result is None or result.exit_code != DIVERGED_EXIT_CODE:
        return None
    return result.diverged


def record_outcome(args: argparse.Namespace, run: lp.Run, outcome: Outcome) -> int:
    """When the run finished, write its record and predictions into ``--out`` and return 0; else the
    run's exit code. A run that diverged finished too: its record (``diverged``; no finite val/loss)
    makes its rate score lowest, and the selection goes on without it."""
    divergence = diverged(outcome)
    if not outcome.ok and divergence is None:
        return (outcome.result.exit_code if outcome.result is not None else 0) or 1
    run_dir = outcome.result.run_dir
    record = summarize(args, run, run_dir, outcome.seconds)
    if record is None:  # not tested: nothing to record
        return 1
    record["diverged"] = divergence
    folder = study_dir(args.out, run.dataset, run.protocol, run.train_size)
    (folder / "predictions").mkdir(parents=True, exist_ok=True)
    from lightning_gaaf.callbacks.predictions import FILENAME as PREDICTIONS_FILE

    predictions = run_dir / "stats" / PREDICTIONS_FILE
    if predictions.is_file():
        shutil.copyfile(predictions, folder / record["predictions"])
    else:
        record["predictions"] = None
    path = record_path(args.out, run)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(record, indent=1))
    tmp.replace(path)  # the record appears whole or not at all
    return 0


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--datasets", nargs="+", choices=sorted(DATAMODULE), default=["mnist", "fashion_mnist"]
    )
    protocols = list(lp.MLP_PROTOCOLS)
    parser.add_argument("--protocols", nargs="+", choices=protocols, default=protocols)
    add_control_argument(parser, default=True)
    add_study_arguments(
        parser, models=lp.MLP_MODELS, max_epochs=100, out="reproduce/lr_study", work_dir="runs/lr_study"
    )
    args = parser.parse_args(argv)
    finish_study_arguments(parser, args)
    args.studies = [(d, p) for d in args.datasets for p in args.protocols if d in lp.PROTOCOLS[p].datasets]
    return args


def add_control_argument(parser: argparse.ArgumentParser, *, default: bool) -> None:
    """``--control`` / ``--no-control``: whether the study also trains :data:`lr_plan.CONTROL`."""
    parser.add_argument(
        "--control", action=argparse.BooleanOptionalAction, default=default,
        help="also train base with GAAF's per-layer gradient ratios as learning-rate factors, at GAAF's "
        f"rate; default {'on' if default else 'off'}",
    )  # fmt: skip


def add_study_arguments(
    parser: argparse.ArgumentParser,
    *,
    models: Sequence[str],
    max_epochs: int,
    out: str,
    work_dir: str,
    seeds: int = 5,
) -> None:
    """The options a study of per-model learning rates shares (this one, the size and the CNN study);
    ``models``: the models of the study's protocols, the choices of ``--models``."""
    parser.add_argument(
        "--models", nargs="+", choices=list(models), default=list(models), help="default: all of them"
    )
    parser.add_argument("--grid", nargs="+", type=float, default=None, help="initial grid for every protocol")
    parser.add_argument("--max-extensions", type=int, default=2, help="grid steps added per edge; default 2")
    parser.add_argument(
        "--seeds", type=int, default=seeds, help=f"seeds per model at its rate; default {seeds}"
    )
    parser.add_argument(
        "--max-epochs", type=int, default=max_epochs, help=f"epoch cap per run; default {max_epochs}"
    )
    parser.add_argument("--patience", type=int, default=10, help="early stopping on val/loss; default 10")
    parser.add_argument("--jobs", type=int, default=2, help="runs at once; default 2")
    parser.add_argument("--out", default=out, help="result JSONs and tables")
    parser.add_argument("--work-dir", default=work_dir, help="run directories (checkpoints, logs)")
    parser.add_argument("--data-dir", default=None, help="dataset root; default $GAAF_DATA_DIR")
    parser.add_argument(
        "--configs", default=None, help="folder with the study's configs; default the bundled ones"
    )
    parser.add_argument("--val-size", type=int, default=None, help="validation images; default the config's")
    parser.add_argument("--tables-only", action="store_true", help="rebuild tables/figures from the JSONs")
    parser.add_argument("--quick", action="store_true", help="smoke test: 2 epochs of a few batches")


def finish_study_arguments(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Check the shared options (one ``parser.error`` line each) and resolve their defaults."""
    if args.quick:
        args.max_epochs, args.patience = min(args.max_epochs, 2), min(args.patience, 1)
        args.val_size = 500 if args.val_size is None else args.val_size
    if min(args.seeds, args.max_epochs, args.patience, args.jobs) < 1 or args.max_extensions < 0:
        parser.error("--seeds, --max-epochs, --patience and --jobs must be >= 1, --max-extensions >= 0")
    if args.grid is not None and min(args.grid) <= 0:
        parser.error("--grid: learning rates must be > 0")
    # None: every protocol starts from its own grid (lr_plan.initial_grid)
    args.grids = dict.fromkeys(lp.PROTOCOLS, tuple(args.grid)) if args.grid else None
    args.data_dir = args.data_dir or os.environ.get("GAAF_DATA_DIR")
    args.configs = Path(args.configs) if args.configs else configs_dir()
    args.out, args.work_dir = Path(args.out), Path(args.work_dir)


def study_main(
    prog: str,
    args: argparse.Namespace,
    todo: Callable[[list[dict[str, Any]]], list[lp.Run]],
    write_tables: Callable[[argparse.Namespace, list[dict[str, Any]]], list[Path]],
) -> None:
    """``--tables-only`` rebuilds the tables; otherwise the study runs (and rebuilds them as runs end)."""
    check_configs(prog, args.configs, args.protocols, args.models)
    args.out.mkdir(parents=True, exist_ok=True)
    if args.tables_only:
        written = write_tables(args, load_records(args.out))
        print(f"{prog}: wrote {', '.join(str(p) for p in written) or 'nothing (no finished runs)'}")
        return
    run_study(prog, args, todo, write_tables)


def check_configs(prog: str, configs: Path, protocols: Sequence[str], models: Sequence[str]) -> None:
    """One clear error when a published config the study trains (its protocols' ``models``) is missing."""
    names = [lp.PROTOCOLS[p].config(m) for p in protocols for m in lp.PROTOCOLS[p].models if m in models]
    missing = [name for name in names if not (configs / name).is_file()]
    if missing:
        raise SystemExit(f"{prog}: error: {', '.join(missing)} not found in {configs}; pass --configs DIR")


def run_study(
    prog: str,
    args: argparse.Namespace,
    todo: Callable[[list[dict[str, Any]]], list[lp.Run]],
    write_tables: Callable[[argparse.Namespace, list[dict[str, Any]]], list[Path]],
) -> None:
    """Train what ``todo(records)`` plans, ``args.jobs`` at once, re-planning after every finished run
    and rebuilding the tables; finished runs (their records under ``args.out``) are never redone."""
    print(f"{prog}: {start_threads(prog).describe()}", flush=True)  # before torch is imported
    env = dict(os.environ)
    env.pop("WANDB_SERVICE", None)
    env.setdefault("OMP_NUM_THREADS", "1")
    env.setdefault("WANDB_MODE", "disabled")
    print(f"{prog}: {len(load_records(args.out))} finished run(s) found in {args.out}", flush=True)
    running: dict[lp.Run, Future] = {}
    failed: set[lp.Run] = set()
    trained = 0
    # Each run is lightning_gaaf.run.fit_and_test in a worker process (a fit owns its process).
    with ProcessPoolExecutor(max_workers=args.jobs, mp_context=multiprocessing.get_context("spawn")) as pool:
        while True:
            for run in todo(load_records(args.out)):
                if len(running) >= args.jobs:
                    break
                if run not in running and run not in failed:
                    print(f"{prog}: start {label(run)}", flush=True)
                    running[run] = pool.submit(run_job, job_for(args, run), env)
            if not running:
                break
            finished, _ = wait(running.values(), return_when=FIRST_COMPLETED)
            for run in [r for r, f in running.items() if f in finished]:
                outcome = running.pop(run).result()
                code, seconds, nan = record_outcome(args, run, outcome), outcome.seconds, diverged(outcome)
                status = "ok" if code == 0 else f"FAILED (exit {code}; log in {args.work_dir})"
                if code == 0 and nan:
                    status = f"diverged ({nan['key']} was {nan['value']} at step {nan['step']}; recorded)"
                print(f"{prog}: {label(run)}: {status} in {seconds:.0f} s", flush=True)
                if code == 0:
                    trained += 1
                else:
                    failed.add(run)
            write_tables(args, load_records(args.out))
    write_tables(args, load_records(args.out))
    print(f"{prog}: trained {trained} run(s); {len(failed)} failed; results in {args.out}", flush=True)
    if failed:
        names = ", ".join(sorted(label(r) for r in failed))
        raise SystemExit(f"{prog}: error: {len(failed)} run(s) failed: {names}")


def label(run: lp.Run) -> str:
    """``dataset/protocol[/n<size>]/name``: how the output names a run."""
    size = [] if run.train_size is None else [f"n{run.train_size}"]
    return "/".join([run.dataset, run.protocol, *size, run.name])


def main(argv: Sequence[str] | None = None) -> None:
    from lightning_gaaf.cli.reproduce.lr_tables import write_tables

    args = parse_args(argv)

    def todo(records: list[dict[str, Any]]) -> list[lp.Run]:
        return lp.plan(
            args.studies, records, args.seeds, args.max_extensions,
            control=args.control, grids=args.grids, models=args.models,
        )  # fmt: skip

    study_main(PROG, args, todo, write_tables)


if __name__ == "__main__":
    main()
