"""``gaaf-reproduce``: the paper's MNIST study (Tables 2 and 4, Figures 3/5) in one command.

``gaaf-reproduce mnist --seeds 5`` trains the paper's MLP (784-512-256-256-10, tanh) three ways —
``base``, ``dropout``, ``gaaf`` — as ``gaaf-fit`` runs (:func:`lightning_gaaf.run.fit_and_test`) of the published configs
``configs/mnist_{base,dropout,gaaf}.yaml``, each seed until convergence, then writes into ``--out``:

* ``table4.md``: test accuracy and epochs to converge, mean (std) over seeds, beside the paper's;
* ``table2.md``: gradient information (mean |dE/dW|, paper Eq. 5) per layer and model;
* ``table1.md``: node pairs per layer with |corr| above 0.9 ... 0.5 on the test set (NodeCorrelationMonitor);
* ``table3.md``: net variance per layer under dropout, 20 masks, at the run's last probe (NetVarMonitor);
* ``nets_test.png``: net-value distributions per layer on the test set, base vs dropout vs GAAF;
* ``results.json``: every per-run number, the command, package versions, hardware, wall time.

Protocol (the paper gives none; ours, identical for the three models): the configs' optimizer and
batch size (SGD lr 0.05, momentum 0.9, batch 128); early stopping on ``val/loss`` (10 000 images
held out of the training set) with ``--patience`` epochs (default 10) and a cap of ``--max-epochs``
(default 200). *Epochs to converge* = the epoch with the lowest validation loss; the test accuracy
is that epoch's checkpoint on the official test set. A run that hits the cap is marked.

Runs are resumable: a run whose ``stats/metrics.json`` holds test metrics is read back, not
redone; an unfinished run directory is cleared and run again. ``fashion_mnist`` runs the same
three configs with the Fashion-MNIST DataModule. ``--protocol slow`` uses
``configs/mnist_slow_{base,dropout,gaaf}.yaml`` (plain SGD, no momentum: a slow regime of ours; the paper names no optimizer).
``--tune N`` compares the models after equal-budget tuning instead (:mod:`.tuned`);
``--lr-study`` gives each model its own learning rate chosen on validation (:mod:`.lr_study`);
``--size-study`` does the same on 1 000 and 5 000 training images (:mod:`.size_study`);
``--cnn-study`` does it for the Fashion-MNIST SmallCNN with and without batch-norm (:mod:`.cnn_study`).
The configs are the bundled ones unless ``--configs DIR`` names another folder.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from lightning_gaaf.cli.reproduce.runs import Job, run_jobs
from lightning_gaaf.cli.reproduce.summary import hardware, load_metrics, net_figure, summarize_run, versions
from lightning_gaaf.cli.reproduce.tables import MODELS, PAPER_TABLE4, table1, table2, table3, table4
from lightning_gaaf.cli.threads import start_threads
from lightning_gaaf.run.bundled import configs_dir

__all__ = ["main"]

PROG = "gaaf-reproduce"
DATAMODULE = {
    "mnist": "lightning_gaaf.datamodules.MNISTDataModule",
    "fashion_mnist": "lightning_gaaf.datamodules.FashionMNISTDataModule",
}
#: protocol -> config file stem prefix (``<prefix>_<model>.yaml``)
PROTOCOLS = {"paper": "mnist", "slow": "mnist_slow"}
#: The studies with options of their own (``gaaf-reproduce --lr-study --help``), for ``--help``.
STUDIES = """studies with their own options (gaaf-reproduce --lr-study --help, ...):
  --lr-study    each MLP model at its own learning rate, with and without momentum
  --size-study  the same on 1 000 and 5 000 training images
  --cnn-study   the Fashion-MNIST SmallCNN with and without batch-norm and GAAF, each at its own rate
"""
QUICK_ARGS = [
    "--trainer.limit_train_batches", "8", "--trainer.limit_val_batches", "2",
    "--trainer.limit_test_batches", "2", "--trainer.log_every_n_steps", "2",
]  # fmt: skip


def find_configs(explicit: str | None, prefix: str = "mnist") -> Path:
    """The folder with ``<prefix>_{base,dropout,gaaf}.yaml``: ``--configs``, else the bundled configs."""
    candidates = [Path(explicit)] if explicit else [configs_dir()]
    for folder in candidates:
        if all((folder / f"{prefix}_{m}.yaml").is_file() for m in MODELS):
            return folder
    looked = ", ".join(str(c) for c in candidates)
    raise SystemExit(
        f"{PROG}: error: configs/{prefix}_{{base,dropout,gaaf}}.yaml not found (looked in {looked}); "
        "pass --configs DIR"
    )


def run_args(args: argparse.Namespace, configs: Path, model: str, seed: int, run_dir: Path) -> list[str]:
    """The ``gaaf-fit`` command line of one run (protocol overrides on top of the published config)."""
    cmd = [
        "--config",
        str(configs / f"{PROTOCOLS[args.protocol]}_{model}.yaml"),
        "--run_dir",
        str(run_dir),
        "--seed_everything",
        str(seed),
        "--data.class_path",
        DATAMODULE[args.dataset],
    ]
    if model == "dropout":
        # Table 3: the config's last callback is NetVarMonitor; these set its arguments (20 masks on one
        # batch of 128, the paper's setting; in --quick, probes often enough to have some).
        cmd += ["--trainer.callbacks.max_samples=128"]
        if args.quick:
            cmd += ["--trainer.callbacks.log_every_n_steps=4"]
    cmd += [
        "--trainer.max_epochs",
        str(args.max_epochs),
        "--trainer.enable_progress_bar",
        "false",
        "--trainer.callbacks+=EarlyStopping",
        "--trainer.callbacks.monitor=val/loss",
        "--trainer.callbacks.mode=min",
        f"--trainer.callbacks.patience={args.patience}",
        "--trainer.callbacks+=ModelCheckpoint",
        "--trainer.callbacks.monitor=val/loss",
        "--trainer.callbacks.mode=min",
        f"--trainer.callbacks.dirpath={run_dir / 'checkpoints'}",
        "--trainer.callbacks.filename=best-{epoch:03d}",
        "--trainer.callbacks.save_top_k=1",
        # Table 1: node correlations of every hidden layer on the test set, at the end of fit.
        "--trainer.callbacks+=lightning_gaaf.callbacks.NodeCorrelationMonitor",
    ]
    if args.data_dir:
        cmd += ["--data.init_args.root", str(args.data_dir)]
    if args.val_size is not None:
        cmd += ["--data.init_args.val_size", str(args.val_size)]
    if args.quick:
        cmd += QUICK_ARGS
    return cmd


def main(argv: Sequence[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    if "--lr-study" in argv:  # each model at its own learning rate: its own options (lr_study)
        from lightning_gaaf.cli.reproduce import lr_study

        return lr_study.main([a for a in argv if a != "--lr-study"])
    if "--size-study" in argv:  # the models on subsets of the training split: its own options (size_study)
        from lightning_gaaf.cli.reproduce import size_study

        return size_study.main([a for a in argv if a != "--size-study"])
    if "--cnn-study" in argv:  # the SmallCNN variants on Fashion-MNIST, each at its own rate (cnn_study)
        from lightning_gaaf.cli.reproduce import cnn_study

        return cnn_study.main([a for a in argv if a != "--cnn-study"])
    parser = argparse.ArgumentParser(
        prog=PROG,
        description=__doc__.split("\n\n")[0],
        epilog=STUDIES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("dataset", choices=sorted(DATAMODULE), help="which study to reproduce")
    parser.add_argument("--seeds", type=int, default=5, help="seeds per model (0..N-1); default 5")
    parser.add_argument("--max-epochs", type=int, default=200, help="epoch cap per run; default 200")
    parser.add_argument(
        "--patience", type=int, default=10, help="early-stopping patience on val/loss; default 10"
    )
    parser.add_argument(
        "--data-dir", default=None, help="dataset root (torchvision layout); default $GAAF_DATA_DIR"
    )
    parser.add_argument("--out", default=None, help="output folder; default reproduce/<dataset>")
    parser.add_argument(
        "--configs", default=None, help="folder with the mnist_*.yaml configs; default the bundled ones"
    )
    parser.add_argument(
        "--protocol",
        choices=sorted(PROTOCOLS),
        default="paper",
        help="paper: configs mnist_{base,dropout,gaaf} (SGD, momentum 0.9); slow: mnist_slow_* (no momentum)",
    )
    parser.add_argument(
        "--tune",
        type=int,
        default=None,
        metavar="N",
        help="equal-budget comparison: N gaaf-tune trials per model, then the best configs over --seeds seeds",
    )
    parser.add_argument("--tune-epochs", type=int, default=5, help="epochs of every tuning trial; default 5")
    parser.add_argument(
        "--tune-pruner", default="median:5:1", help="pruner of the tuning studies (gaaf-tune --pruner)"
    )
    parser.add_argument(
        "--val-size",
        type=int,
        default=None,
        help="validation images held out of the training split; default the config's (10000)",
    )
    parser.add_argument("--jobs", type=int, default=1, help="runs at once (each gets cores/jobs threads)")
    parser.add_argument("--quick", action="store_true", help="smoke test: 1 seed, 2 epochs, a few batches")
    args = parser.parse_args(argv)
    print(f"{PROG}: {start_threads(PROG).describe()}", flush=True)  # before torch is imported
    if args.quick:
        args.seeds = min(args.seeds, 1 if args.tune is None else 2)
        args.max_epochs, args.patience = min(args.max_epochs, 2), min(args.patience, 1)
        args.tune_epochs = min(args.tune_epochs, 2)
        args.val_size = 500 if args.val_size is None else args.val_size
    if min(args.seeds, args.max_epochs, args.patience, args.jobs, args.tune_epochs, args.tune or 1) < 1:
        parser.error("--seeds, --max-epochs, --patience, --jobs, --tune and --tune-epochs must be >= 1")
    args.data_dir = args.data_dir or os.environ.get("GAAF_DATA_DIR")
    configs = find_configs(args.configs, PROTOCOLS[args.protocol])
    out = Path(args.out or Path("reproduce") / args.dataset)
    out.mkdir(parents=True, exist_ok=True)

    env: dict[str, str] = {}  # set in the process of every run
    if "OMP_NUM_THREADS" not in os.environ:
        env["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // args.jobs))
    if args.quick and "WANDB_MODE" not in os.environ:
        env["WANDB_MODE"] = "disabled"
    if args.tune is not None:
        from lightning_gaaf.cli.reproduce.tuned import run_tuned

        run_tuned(args, configs, out, env, DATAMODULE[args.dataset], QUICK_ARGS if args.quick else [])
        print(f"{PROG}: wrote {out / 'table4_tuned.md'}, {out / 'results_tuned.json'}")
        return

    started = time.time()
    jobs: list[Job] = []
    metrics: dict[tuple[str, int], dict[str, Any]] = {}
    for seed in range(args.seeds):  # seed-major: a cut-short study still has every model per seed
        for model in MODELS:
            run_dir = (out / "runs" / model / f"seed_{seed}").resolve()
            saved = load_metrics(run_dir)
            if saved is not None:  # finished by an earlier invocation
                metrics[model, seed] = saved
                continue
            if run_dir.exists():
                shutil.rmtree(run_dir)  # an interrupted run: start it again
            log = run_dir.parent / f"seed_{seed}.log"
            jobs.append(Job((model, seed), tuple(run_args(args, configs, model, seed, run_dir)), log))
    reused = len(metrics)
    print(
        f"{PROG}: {len(jobs)} run(s) to train, {reused} finished run(s) reused, output in {out}", flush=True
    )

    failures = []
    for outcome in run_jobs(jobs, args.jobs, env):
        (model, seed), result = outcome.job.label, outcome.result
        if outcome.ok and result is not None and result.test.get("test/acc") is not None:
            metrics[model, seed] = {"epochs": result.epochs, "test": result.test}
            status = "ok"
        elif result is not None and result.signal is not None:
            raise SystemExit(result.exit_code)
        else:
            status = f"FAILED ({outcome.error or f'exit {result.exit_code if result else 1}'})"
            failures.append(f"{model}/seed_{seed} (log: {outcome.job.log})")
        print(f"{PROG}: {model} seed {seed}: {status} in {outcome.seconds:.0f} s", flush=True)
    if failures:
        raise SystemExit(f"{PROG}: error: {len(failures)} run(s) failed: {', '.join(failures)}")

    per_model: dict[str, list[dict[str, Any]]] = {m: [] for m in MODELS}
    for model in MODELS:
        for seed in range(args.seeds):
            run_dir = out / "runs" / model / f"seed_{seed}"
            summary = summarize_run(run_dir, args.max_epochs, metrics[model, seed])
            per_model[model].append({"seed": seed, "run_dir": str(run_dir), **summary})

    (out / "table4.md").write_text(table4(args.dataset, per_model))
    (out / "table2.md").write_text(table2(per_model))
    (out / "table1.md").write_text(table1(per_model))
    (out / "table3.md").write_text(table3(per_model))
    figure = net_figure(out, {m: out / "runs" / m / "seed_0" for m in MODELS})
    results = {
        "dataset": args.dataset,
        "command": " ".join([PROG, *(sys.argv[1:] if argv is None else argv)]),
        "protocol": {
            "models": {m: f"configs/{PROTOCOLS[args.protocol]}_{m}.yaml" for m in MODELS},
            "early_stopping": {"monitor": "val/loss", "patience": args.patience},
            "max_epochs": args.max_epochs,
            "epochs_to_converge": "epoch (1-based) with the lowest val/loss",
            "test_accuracy": "checkpoint of that epoch on the official test split",
            "quick": args.quick,
        },
        "paper": PAPER_TABLE4.get(args.dataset),
        "runs": per_model,
        "versions": versions(),
        "hardware": hardware(),
        "wall_time_s": time.time() - started,
        "runs_reused": reused,
    }
    (out / "results.json").write_text(json.dumps(results, indent=1))
    print((out / "table4.md").read_text())
    print(
        f"{PROG}: wrote {out / 'table4.md'}, {out / 'table2.md'}, {out / 'table1.md'}, {out / 'table3.md'}, "
        f"{out / 'results.json'}" + (f", {figure}" if figure else "")
    )


if __name__ == "__main__":
    main()
