"""``gaaf-tune``: hyper-parameter search for any ``gaaf-fit`` config, on Optuna.

``gaaf-tune CONFIG --trials N [--workers W] [--storage URL] [-- GAAF-FIT ARGS...]`` runs an Optuna
study whose trials are ordinary runs (each in its run directory ``<out>/trials/trial_NNNN``, with the
config's monitors and loggers; W&B groups them by study). The search space is a YAML file next to the
config (``search/<config stem>.yaml``, or ``--space``; format in :mod:`.search_space`); the objective is
the best epoch value of the space's metric (default ``val/acc``) in the run's result. Trials do not
run the test set: nothing is ever chosen on test data.

Storage: by default an Optuna journal file ``<out>/study.journal`` (nothing to start; several local
processes can share it). ``--storage URL`` puts the study in a database (``postgresql://...``,
``mysql://...``, ``sqlite:///...``): start the same command on several machines against one URL and
they work on one study. ``--trials N`` is the study's total: re-running the command continues it
until N trials are complete or pruned (failed and interrupted trials are redone).

Output in ``--out`` (default ``tune/<study name>``): ``best.yaml`` (the best trial's config, runnable
with ``gaaf-fit --config``), ``trials.csv`` and ``trials.md``, ``history.png`` and ``study.json``.

This module is the command line and the worker loop; the rest has a module each: :mod:`.settings`,
:mod:`.study` (the study in its storage, trial claiming), :mod:`.trial` (one trial), :mod:`.storage`
(storage and pruner choices) and :mod:`.outputs`. Optuna is imported once a command needs it, so
``--help`` starts at once.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from lightning_gaaf.cli.threads import start_threads
from lightning_gaaf.cli.tune.settings import PROG, TuneError, TuneSettings

if TYPE_CHECKING:
    import optuna

JOURNAL_FILE = "study.journal"


def work(settings: TuneSettings, worker_index: int = 0) -> int:
    """One worker: claim and run trials until the study has ``n_trials``; returns how many it ran."""
    import optuna

    from lightning_gaaf.cli.tune.storage import make_pruner, open_storage
    from lightning_gaaf.cli.tune.study import claim_trial
    from lightning_gaaf.cli.tune.trial import TRIALS_DIR, Signals, run_trial, trial_env

    if settings.in_process:
        os.environ.update(trial_env(settings))
        import torch

        torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))
        Signals.install()
    storage = open_storage(settings.storage)
    existing = len(optuna.load_study(study_name=settings.study_name, storage=storage).trials)
    seed = None if settings.sampler_seed is None else settings.sampler_seed + worker_index + 1000 * existing
    study = optuna.load_study(
        study_name=settings.study_name,
        storage=storage,
        sampler=optuna.samplers.TPESampler(seed=seed),
        pruner=make_pruner(settings.pruner, settings.space.direction),
    )
    ran = failed_in_a_row = 0
    while (trial := claim_trial(study, settings.n_trials, settings.out / "claim.lock")) is not None:
        state = run_trial(settings, study, trial)
        Signals.check()
        ran += 1
        failed_in_a_row = failed_in_a_row + 1 if state == optuna.trial.TrialState.FAIL else 0
        if failed_in_a_row >= settings.max_failures:
            raise TuneError(
                f"{failed_in_a_row} trials in a row failed (last: trial {trial.number}, "
                f"log {settings.out / TRIALS_DIR}/trial_{trial.number:04d}.log); stopping"
            )
    return ran


# --------------------------------------------------------------------------- command line
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description=__doc__.split("\n\n")[0],
        epilog="Arguments after '--' go to every trial's gaaf-fit (e.g. -- --trainer.max_epochs 5).",
    )
    parser.add_argument("config", help="gaaf-fit config: a file, or the name of a bundled config")
    parser.add_argument(
        "--space", default=None, help="search-space YAML; default search/<config stem>.yaml beside it"
    )
    parser.add_argument("--trials", type=int, default=20, help="trials in the study in total; default 20")
    parser.add_argument("--workers", type=int, default=1, help="local worker processes; default 1")
    parser.add_argument(
        "--storage", default=None, help=f"database URL or journal file; default <out>/{JOURNAL_FILE}"
    )
    parser.add_argument("--study-name", default=None, help="default: the config's name")
    parser.add_argument("--out", default=None, help="study folder; default tune/<study name>")
    parser.add_argument("--seed", type=int, default=0, help="seed_everything of every trial; default 0")
    parser.add_argument("--sampler-seed", type=int, default=None, help="seed of the TPE sampler")
    parser.add_argument(
        "--pruner",
        default="median",
        help="none, median[:STARTUP[:WARMUP]] or threshold:VALUE; default median",
    )
    parser.add_argument(
        "--subprocess",
        action="store_true",
        help="run each trial as its own gaaf-fit process (default: through gaaf-fit's main() in the worker)",
    )
    parser.add_argument(
        "--report-only", action="store_true", help="only (re)write the outputs from the storage"
    )
    parser.add_argument("--worker-index", type=int, default=None, help=argparse.SUPPRESS)
    return parser


def settings_from_args(args: argparse.Namespace, fit_args: list[str]) -> TuneSettings:
    from lightning_gaaf.cli.tune.search_space import default_space_path, load_space
    from lightning_gaaf.cli.tune.storage import make_pruner
    from lightning_gaaf.run.bundled import ConfigNotFoundError, resolve_config

    try:
        config = resolve_config(args.config)
    except ConfigNotFoundError as exc:
        raise TuneError(str(exc)) from None
    space_path = Path(args.space) if args.space else default_space_path(config)
    if not args.space and not space_path.is_file():
        raise TuneError(f"no search space for {config.name}: {space_path} does not exist (pass --space FILE)")
    space = load_space(space_path)
    name = args.study_name or config.stem
    out = Path(args.out or Path("tune") / name).absolute()
    storage = args.storage or str(out / JOURNAL_FILE)
    if args.trials < 1 or args.workers < 1:
        raise TuneError("--trials and --workers must be >= 1")
    make_pruner(args.pruner, space.direction)  # check the spec now
    return TuneSettings(
        config=config.absolute(), space=space, out=out, storage=storage, study_name=name,
        n_trials=args.trials, fit_args=fit_args, seed=args.seed, sampler_seed=args.sampler_seed,
        pruner=args.pruner, workers=args.workers, in_process=not args.subprocess,
    )  # fmt: skip


def run(settings: TuneSettings, report_only: bool = False) -> optuna.Study:
    """Create or continue the study, run its missing trials with ``settings.workers`` processes, write outputs."""
    from lightning_gaaf.cli.tune.outputs import write_outputs
    from lightning_gaaf.cli.tune.study import COUNTED, create_or_load_study, fail_interrupted_trials

    made = [p for p in (settings.out, *settings.out.parents) if not p.exists()]
    started = time.time()
    try:
        settings.out.mkdir(parents=True, exist_ok=True)
        study = create_or_load_study(settings)
    except BaseException:
        for folder in made:  # a study that could not start leaves no empty folders behind
            if folder.is_dir() and not any(folder.iterdir()):
                folder.rmdir()
            elif folder == settings.out:
                shutil.rmtree(folder, ignore_errors=True)
        raise
    if not report_only:
        interrupted = fail_interrupted_trials(study)
        if interrupted:
            print(f"{PROG}: trial(s) {interrupted} were interrupted; they are redone", flush=True)
        done = len(study.get_trials(deepcopy=False, states=COUNTED))
        print(
            f"{PROG}: study {settings.study_name!r}: {done}/{settings.n_trials} trials done, storage {settings.storage}"
        )
        if settings.workers == 1:
            work(settings)
        else:
            os.environ["GAAF_TUNE_WORKERS"] = str(settings.workers)
            procs = [subprocess.Popen(_worker_argv(settings.argv, i)) for i in range(settings.workers)]
            codes = [p.wait() for p in procs]
            if any(codes):
                raise TuneError(f"worker exit codes {codes}")
        wall = study.user_attrs.get("wall_time_s", 0.0) + (time.time() - started)
        study.set_user_attr("wall_time_s", round(wall, 1))
    return write_outputs(study, settings)


def _worker_argv(argv: list[str], index: int) -> list[str]:
    """The command line ``argv`` as worker process ``index``: same arguments, one worker."""
    argv = list(argv)
    if "--" in argv:
        cut = argv.index("--")
        own, rest = argv[:cut], argv[cut:]
    else:
        own, rest = argv, []
    cleaned: list[str] = []
    skip = False
    for arg in own:
        if skip:
            skip = False
            continue
        if arg == "--workers":
            skip = True
            continue
        if arg.startswith("--workers="):
            continue
        cleaned.append(arg)
    return [sys.executable, "-m", "lightning_gaaf.cli.tune", *cleaned, "--worker-index", str(index), *rest]


def main(argv: Sequence[str] | None = None) -> None:
    """Entry point of ``gaaf-tune`` (arguments after ``--`` go to every trial's ``gaaf-fit``)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    own, fit_args = (argv[: argv.index("--")], argv[argv.index("--") + 1 :]) if "--" in argv else (argv, [])
    args = build_parser().parse_args(own)
    print(f"{PROG}: {start_threads(PROG).describe()}", flush=True)  # before torch is imported
    from lightning_gaaf.cli.tune.search_space import SearchSpaceError
    from lightning_gaaf.cli.tune.storage import PrunerSpecError, StorageError

    try:
        settings = settings_from_args(args, fit_args)
        settings.argv = argv
        if args.worker_index is not None:  # started by a parent gaaf-tune --workers N
            settings.workers = int(os.environ.get("GAAF_TUNE_WORKERS", "1"))
            work(settings, args.worker_index)
            return
        import optuna

        optuna.logging.set_verbosity(optuna.logging.WARNING)
        run(settings, report_only=args.report_only)
    except (TuneError, SearchSpaceError, PrunerSpecError, StorageError) as exc:
        sys.stderr.write(f"{PROG}: error: {exc}\n")
        raise SystemExit(2) from None
    print(
        f"{PROG}: wrote {settings.out / 'best.yaml'}, trials.csv, trials.md, history.png, study.json in {settings.out}"
    )


if __name__ == "__main__":
    main()
