"""``gaaf-reproduce DATASET --tune N``: the three models compared after equal-budget tuning.

Each model gets one ``gaaf-tune`` study of N trials with the same per-trial budget (``--tune-epochs``
epochs, the same pruner, sampler seed and validation split): base tunes the learning rate, dropout
the learning rate and drop probability, GAAF the learning rate, K and the width of its shape (the
bundled search spaces ``configs/search/mnist_{base,dropout,gaaf}.yaml``). The selection uses only
``val/acc`` (the trials never run the test set). Each study's best config is then trained again
with ``--seeds`` new seeds (1..N; the trials used seed 0) and tested once, on the checkpoint of its
best validation accuracy. Everything is resumable: finished studies and runs are read back.

Writes ``table4_tuned.md`` (selected hyper-parameters, test accuracy mean (sample std), paired
differences with a t-test and a confidence interval) and ``results_tuned.json`` into ``--out``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import time
from pathlib import Path
from typing import Any

from lightning_gaaf.cli.reproduce.runs import Job, run_jobs
from lightning_gaaf.cli.reproduce.statistics import format_paired, mean_std, paired_difference
from lightning_gaaf.cli.reproduce.tables import MODELS, PAPER_TABLE4
from lightning_gaaf.cli.tune.trial import fit_args as trial_fit_args

#: The trials' sampler seed and the seed of every trial's run; the retrained runs use seeds 1..N.
TUNE_SEED = 0


def tune_fit_args(args: argparse.Namespace, datamodule: str, quick_args: list[str]) -> list[str]:
    """The ``gaaf-fit`` arguments every trial of every model gets (the equal budget)."""
    fit_args = ["--trainer.max_epochs", str(args.tune_epochs)]
    if args.dataset != "mnist":
        fit_args += ["--data.class_path", datamodule]
    if args.val_size is not None:
        fit_args += ["--data.init_args.val_size", str(args.val_size)]
    return fit_args + quick_args


def study_settings(
    args: argparse.Namespace, configs: Path, model: str, out: Path, fit_args: list[str]
) -> Any:
    """The ``gaaf-tune`` settings of one model's study."""
    from lightning_gaaf.cli.tune.main import build_parser, settings_from_args

    argv = [
        str(configs / f"mnist_{model}.yaml"),
        "--space", str(configs / "search" / f"mnist_{model}.yaml"),
        "--trials", str(args.tune), "--out", str(out / "tune" / model), "--workers", str(args.jobs),
        "--study-name", f"{args.dataset}_{model}", "--sampler-seed", str(TUNE_SEED), "--seed", str(TUNE_SEED),
        "--pruner", args.tune_pruner,
    ]  # fmt: skip
    settings = settings_from_args(build_parser().parse_args(argv), fit_args)
    settings.argv = [*argv, "--", *fit_args]
    return settings


def _best_val(epochs: list[dict[str, Any]]) -> dict[str, Any] | None:
    scored = [e for e in epochs if e.get("val/acc") is not None]
    return max(scored, key=lambda e: e["val/acc"]) if scored else None


def summarize_tuned_run(epochs: list[dict[str, Any]], test: dict[str, float]) -> dict[str, Any] | None:
    """Test accuracy, best validation accuracy and its epoch of one finished run, else None."""
    best = _best_val(epochs)
    if test.get("test/acc") is None or best is None:
        return None
    return {
        "test_acc": 100.0 * test["test/acc"],
        "best_val_acc": 100.0 * best["val/acc"],
        "best_val_epoch": best["epoch"],
        "epochs_trained": len(epochs),
    }


def _saved_run(run_dir: Path) -> dict[str, Any] | None:
    """The summary of a run an earlier invocation finished (its ``stats/metrics.json``), else None."""
    try:
        metrics = json.loads((run_dir / "stats" / "metrics.json").read_text())
    except (OSError, ValueError):
        return None
    return summarize_tuned_run(metrics.get("epochs", []), metrics.get("test", {}))


def _short(key: str) -> str:
    return key.rsplit(".", 1)[-1]


def table4_tuned(
    dataset: str, studies: dict[str, dict[str, Any]], runs: dict[str, list[dict[str, Any]]]
) -> str:
    paper = PAPER_TABLE4.get(dataset, {})
    lines = [
        "| model | selected on val/acc | trials (complete/pruned) | selection val acc % | test accuracy % "
        "| epoch of best val acc | seeds | test accuracy % (paper) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for model in MODELS:
        study, model_runs = studies.get(model), runs.get(model) or []
        if not study or not study.get("best"):
            continue
        params = ", ".join(
            f"{_short(k)} = {v:.3g}" if isinstance(v, float) else f"{_short(k)} = {v}"
            for k, v in study["best"]["params"].items()
        )
        trials = study["trials"]
        acc = mean_std(r["test_acc"] for r in model_runs) if model_runs else None
        ep = mean_std(r["best_val_epoch"] for r in model_runs) if model_runs else None
        p_acc = paper.get(model, (None, None))[0]
        lines.append(
            f"| {model} | {params} | {trials.get('complete', 0)}/{trials.get('pruned', 0)} "
            f"| {100 * study['best']['value']:.2f} "
            f"| {'n/a' if acc is None else f'{acc[0]:.2f} ({acc[1]:.2f})'} "
            f"| {'n/a' if ep is None else f'{ep[0]:.1f} ({ep[1]:.1f})'} | {len(model_runs)} "
            f"| {'n/a' if p_acc is None else f'{p_acc:.2f}'} |"
        )
    lines.append("")
    for a, b in (("gaaf", "dropout"), ("gaaf", "base"), ("dropout", "base")):
        ra = {r["seed"]: r["test_acc"] for r in runs.get(a, [])}
        rb = {r["seed"]: r["test_acc"] for r in runs.get(b, [])}
        seeds = sorted(set(ra) & set(rb))
        if len(seeds) >= 2:
            d = paired_difference([ra[s] for s in seeds], [rb[s] for s in seeds])
            lines.append(f"* {format_paired(f'{a} - {b}, test accuracy', d)}")
    return "\n".join(lines) + "\n"


def run_tuned(
    args: argparse.Namespace,
    configs: Path,
    out: Path,
    env: dict[str, str],
    datamodule: str,
    quick_args: list[str],
) -> dict[str, Any]:
    """Run (or continue) the three studies, retrain each best config over the seeds, write the tables."""
    prog = "gaaf-reproduce"
    started = time.time()
    fit_args = tune_fit_args(args, datamodule, quick_args)
    from lightning_gaaf.cli.tune.main import run as run_study

    os.environ.update(env)
    if args.data_dir:
        os.environ["GAAF_DATA_DIR"] = str(args.data_dir)
    studies = {}
    for model in MODELS:  # each study runs its trials with --jobs workers
        settings = study_settings(args, configs, model, out, fit_args)
        run_study(settings)
        studies[model] = json.loads((settings.out / "study.json").read_text())
        print(f"{prog}: study {args.dataset}_{model}: ok", flush=True)

    summaries: dict[tuple[str, int], dict[str, Any]] = {}
    jobs = []
    for seed in range(1, args.seeds + 1):
        for model in MODELS:
            run_dir = (out / "tuned" / model / f"seed_{seed}").resolve()
            saved = _saved_run(run_dir)
            if saved is not None:
                summaries[model, seed] = saved
                continue
            if run_dir.exists():
                shutil.rmtree(run_dir)
            best = out / "tune" / model / "best.yaml"
            log = run_dir.parent / f"seed_{seed}.log"
            jobs.append(Job((model, seed), tuple(trial_fit_args(best, run_dir, seed)), log))
    print(f"{prog}: {len(jobs)} tuned run(s) to train", flush=True)
    for outcome in run_jobs(jobs, args.jobs, env):
        (model, seed), result = outcome.job.label, outcome.result
        summary = summarize_tuned_run(result.epochs, result.test) if outcome.ok and result else None
        if summary is not None:
            summaries[model, seed] = summary
        print(f"{prog}: tuned {model} seed {seed}: {'ok' if summary else 'FAILED'}", flush=True)
    runs: dict[str, list[dict[str, Any]]] = {m: [] for m in MODELS}
    for model in MODELS:
        for seed in range(1, args.seeds + 1):
            if (model, seed) in summaries:
                run_dir = out / "tuned" / model / f"seed_{seed}"
                runs[model].append({"seed": seed, "run_dir": str(run_dir), **summaries[model, seed]})
    text = table4_tuned(args.dataset, studies, runs)
    (out / "table4_tuned.md").write_text(text)
    results = {
        "dataset": args.dataset,
        "protocol": {
            "trials_per_model": args.tune,
            "epochs_per_trial": args.tune_epochs,
            "pruner": args.tune_pruner,
            "trial_fit_args": fit_args,
            "selection": "best val/acc over the trial's epochs; test set never run by trials",
            "retrain_seeds": list(range(1, args.seeds + 1)),
            "test": "checkpoint of the best val/acc epoch, official test split, once per run",
        },
        "studies": studies,
        "runs": runs,
        "wall_time_s": time.time() - started,
        "study_wall_time_s": {m: studies[m].get("wall_time_s") for m in MODELS},
    }
    (out / "results_tuned.json").write_text(json.dumps(results, indent=1, default=str))
    print(text)
    return results
