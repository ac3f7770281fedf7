"""``gaaf-tune``: hyper-parameter search for any ``gaaf-fit`` config, on Optuna.

``gaaf-tune CONFIG --trials N [--workers W] [--storage URL] [-- GAAF-FIT ARGS...]`` runs an Optuna
study whose trials are ordinary ``gaaf-fit`` runs (each in its own process and run directory
``<out>/trials/trial_NNNN``, with the config's monitors and loggers; W&B groups them by study). The
search space is a YAML file next to the config (``search/<config stem>.yaml``, or ``--space``; format
in :mod:`lightning_gaaf.cli.search_space`); the objective is the best epoch value of the space's
metric (default ``val/acc``) read from the run's ``stats/metrics.json``. Trials do not run the test
set: nothing is ever chosen on test data.

Storage: by default an Optuna journal file ``<out>/study.journal`` (nothing to start; several local
processes can share it). ``--storage URL`` puts the study in a database (``postgresql://...``,
``mysql://...``, ``sqlite:///...``): start the same command on several machines against one URL and
they work on one study. ``--trials N`` is the study's total: re-running the command continues it
until N trials are complete or pruned (failed and interrupted trials are redone).

Output in ``--out`` (default ``tune/<study name>``): ``best.yaml`` (the best trial's config, runnable
with ``gaaf-fit --config``), ``trials.csv`` and ``trials.md``, ``history.png`` and ``study.json``.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import traceback
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import optuna

from lightning_gaaf.cli.bundled import ConfigNotFoundError, resolve_config
from lightning_gaaf.cli.search_space import (
    SearchSpace,
    SearchSpaceError,
    default_space_path,
    load_space,
    overrides_yaml,
)
from lightning_gaaf.cli.tune_pruning import (
    PRUNED_FILE,
    PRUNING_CALLBACK,
    PrunerSpecError,
    StorageError,
    make_pruner,
    open_storage,
)
from lightning_gaaf.cli.tune_report import write_outputs

PROG = "gaaf-tune"
JOURNAL_FILE = "study.journal"
TRIALS_DIR = "trials"
#: Trials that count towards ``--trials``; FAIL trials (crashed or interrupted) are redone.
_COUNTED = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)
_ACTIVE = (*_COUNTED, optuna.trial.TrialState.RUNNING, optuna.trial.TrialState.WAITING)


class TuneError(Exception):
    """A user mistake reported as one line ``gaaf-tune: error: ...`` with exit status 2."""


@dataclass
class TuneSettings:
    """Everything one gaaf-tune process needs to run trials of a study."""

    config: Path
    space: SearchSpace
    out: Path
    storage: str
    study_name: str
    n_trials: int
    fit_args: list[str] = field(default_factory=list)
    seed: int = 0
    sampler_seed: int | None = None
    pruner: str = "median"
    workers: int = 1
    in_process: bool = True
    max_failures: int = 3

    @property
    def signature(self) -> dict[str, Any]:
        """What makes two invocations the same study (checked when one continues a study)."""
        return {
            "config": self.config.stem,
            "metric": self.space.metric,
            "params": sorted(self.space.params),
            "fit_args": self.fit_args,
            "seed": self.seed,
        }


# --------------------------------------------------------------------------- study
def create_or_load_study(settings: TuneSettings) -> optuna.Study:
    """Create the study, or load it to continue; a study started with another config/space is an error."""
    storage = open_storage(settings.storage)
    study = optuna.create_study(
        study_name=settings.study_name,
        storage=storage,
        direction=settings.space.direction,
        load_if_exists=True,
    )
    if study.direction.name.lower() != settings.space.direction:
        raise TuneError(
            f"study {settings.study_name!r} in {settings.storage} was created to {study.direction.name.lower()} "
            f"its metric, this search space asks to {settings.space.direction}"
        )
    saved = study.user_attrs.get("gaaf_tune")
    if saved is None:
        study.set_user_attr("gaaf_tune", settings.signature)
    elif saved != settings.signature:
        diff = ", ".join(
            f"{k}: {saved.get(k)!r} -> {v!r}" for k, v in settings.signature.items() if saved.get(k) != v
        )
        raise TuneError(
            f"study {settings.study_name!r} in {settings.storage} was started with other settings ({diff}); "
            "continue it with the same ones, or pick another --study-name/--out"
        )
    return study


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def fail_interrupted_trials(study: optuna.Study) -> list[int]:
    """Mark RUNNING trials whose worker process on this host has died as FAIL (they are redone)."""
    host = socket.gethostname()
    failed = []
    for trial in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
        attrs = trial.user_attrs
        if attrs.get("host") == host and "pid" in attrs and not _pid_alive(int(attrs["pid"])):
            study.tell(trial.number, state=optuna.trial.TrialState.FAIL)
            failed.append(trial.number)
    return failed


@contextlib.contextmanager
def _file_lock(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def claim_trial(study: optuna.Study, n_trials: int, lock: Path) -> optuna.Trial | None:
    """A new trial, or None when the study already has ``n_trials`` finished or running ones.

    Counting and asking happen under a file lock, so local workers never start more than
    ``n_trials`` in total. Workers on other machines share the database but not the lock: at the
    very end of a study each extra machine can start at most one surplus trial.
    """
    with _file_lock(lock):
        active = study.get_trials(deepcopy=False, states=_ACTIVE)
        if len(active) >= n_trials:
            return None
        trial = study.ask()
        trial.set_user_attr("host", socket.gethostname())
        trial.set_user_attr("pid", os.getpid())
        return trial


# --------------------------------------------------------------------------- one trial
def trial_command(
    settings: TuneSettings, trial_number: int, values: dict[str, Any], run_dir: Path
) -> list[str]:
    """The ``gaaf-fit`` command line of one trial: config, user args, pruning callback, trial values."""
    cmd = [
        sys.executable,
        "-m",
        "lightning_gaaf.cli.fit",
        "--config",
        str(settings.config),
        *settings.fit_args,
        "--run_dir",
        str(run_dir),
        "--seed_everything",
        str(settings.seed),
        "--trainer.enable_progress_bar",
        "false",
    ]
    cmd += ["--trainer.limit_test_batches", "0"]  # trials never look at the test set
    if settings.pruner != "none":
        cmd += [
            f"--trainer.callbacks+={PRUNING_CALLBACK}",
            f"--trainer.callbacks.storage={settings.storage}",
            f"--trainer.callbacks.study_name={settings.study_name}",
            f"--trainer.callbacks.trial_number={trial_number}",
            f"--trainer.callbacks.monitor={settings.space.metric}",
            f"--trainer.callbacks.pruner={settings.pruner}",
        ]
    return [*cmd, "--config", overrides_yaml(values)]


def read_objective(run_dir: Path, metric: str, direction: str) -> dict[str, Any] | None:
    """Best epoch value of ``metric`` in ``<run_dir>/stats/metrics.json``, its epoch and the epoch count."""
    path = run_dir / "stats" / "metrics.json"
    try:
        epochs = json.loads(path.read_text())["epochs"]
    except (OSError, ValueError, KeyError):
        return None
    scored = [e for e in epochs if e.get(metric) is not None]
    if not scored:
        return None
    pick = max if direction == "maximize" else min
    best = pick(scored, key=lambda e: e[metric])
    return {"value": best[metric], "best_epoch": best["epoch"], "epochs_trained": len(epochs)}


def _trial_env(settings: TuneSettings) -> dict[str, str]:
    env = dict(os.environ)
    env.pop("WANDB_SERVICE", None)  # each trial starts its own W&B service
    env.pop("GAAF_FIT_RUN_DIR", None)
    env.setdefault("WANDB_RUN_GROUP", settings.study_name)
    env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // settings.workers)))
    return env


@contextlib.contextmanager
def _output_to(log: Path) -> Iterator[None]:
    """Send this process's stdout and stderr (file descriptors 1 and 2, so C and logging output too) to ``log``."""
    sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    with log.open("w") as fh:
        os.dup2(fh.fileno(), 1)
        os.dup2(fh.fileno(), 2)
        try:
            yield
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            os.close(saved[0])
            os.close(saved[1])


class _Signals:
    """The SIGINT/SIGTERM a worker received, if any: it finishes (fails) the current trial and stops.

    In-process trials need this: Lightning turns Ctrl+C into ``sys.exit(1)`` (and ignores SIGINT
    afterwards) and SIGTERM into a ``SIGTERMException``, both of which would otherwise look like one
    failed trial, after which the worker would go on with the next.
    """

    received: int | None = None

    @classmethod
    def handler(cls, signum: int, frame: Any) -> None:
        cls.received = signum
        if signum == signal.SIGINT:
            raise KeyboardInterrupt

    @classmethod
    def install(cls) -> None:
        if threading.current_thread() is threading.main_thread():
            for signum in (signal.SIGINT, signal.SIGTERM):
                signal.signal(signum, cls.handler)

    @classmethod
    def check(cls) -> None:
        """Exit like the signal would have (status 128 + signal number) once one was received."""
        if cls.received is not None:
            raise SystemExit(128 + cls.received)


def _fit_in_process(fit_args: list[str], log: Path) -> int:
    """``gaaf-fit FIT_ARGS`` through its ``main()`` in this process (imports paid once per worker); exit code."""
    from pytorch_lightning.utilities.exceptions import SIGTERMException

    from lightning_gaaf.cli import fit

    with _output_to(log):
        try:
            fit.main(fit_args)
            return 0
        except SIGTERMException:
            _Signals.received = signal.SIGTERM
            return 128 + signal.SIGTERM
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else 1
            if code in (128 + signal.SIGTERM, 128 + signal.SIGINT):
                # gaaf-fit stopped on a signal (its own handler took it from ours): stop the worker too.
                _Signals.received = code - 128
            return code
        except Exception:  # a crash of one trial: keep its traceback in its log, go on with the next
            traceback.print_exc()
            return 1
        finally:
            _Signals.install()  # Lightning leaves SIGINT ignored after an interrupted fit


def run_trial(settings: TuneSettings, study: optuna.Study, trial: optuna.Trial) -> optuna.trial.TrialState:
    """Run one trial as a ``gaaf-fit`` process and tell the study its outcome."""
    run_dir = (settings.out / TRIALS_DIR / f"trial_{trial.number:04d}").resolve()
    run_dir.mkdir(parents=True, exist_ok=True)
    values = settings.space.suggest(trial)
    trial.set_user_attr("run_dir", str(run_dir))
    cmd = trial_command(settings, trial.number, values, run_dir)
    log = run_dir.parent / f"trial_{trial.number:04d}.log"
    started = time.time()
    try:
        if settings.in_process:
            code = _fit_in_process(cmd[3:], log)
        else:
            with log.open("w") as fh:
                code = subprocess.call(cmd, stdout=fh, stderr=subprocess.STDOUT, env=_trial_env(settings))
    except BaseException:
        study.tell(trial, state=optuna.trial.TrialState.FAIL)
        raise
    if _Signals.received is not None:
        trial.set_user_attr("error", f"interrupted by signal {_Signals.received}")
        study.tell(trial, state=optuna.trial.TrialState.FAIL)
        _Signals.check()
    trial.set_user_attr("wall_time_s", round(time.time() - started, 1))
    result = read_objective(run_dir, settings.space.metric, settings.space.direction) if code == 0 else None
    if result is None:
        trial.set_user_attr("error", f"gaaf-fit exit {code}; log: {log}")
        study.tell(trial, state=optuna.trial.TrialState.FAIL)
        print(f"{PROG}: trial {trial.number} FAILED (exit {code}), log: {log}", flush=True)
        return optuna.trial.TrialState.FAIL
    for key in ("best_epoch", "epochs_trained"):
        trial.set_user_attr(key, result[key])
    if (run_dir / PRUNED_FILE).is_file():
        study.tell(trial, state=optuna.trial.TrialState.PRUNED)
        state = optuna.trial.TrialState.PRUNED
    else:
        study.tell(trial, result["value"])
        state = optuna.trial.TrialState.COMPLETE
    shown = ", ".join(
        f"{k.rsplit('.', 1)[-1]}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in values.items()
    )
    print(
        f"{PROG}: trial {trial.number} {state.name.lower()}: {settings.space.metric}={result['value']:.4f} "
        f"(epoch {result['best_epoch']}/{result['epochs_trained']}) {shown} [{time.time() - started:.0f} s]",
        flush=True,
    )
    return state


def work(settings: TuneSettings, worker_index: int = 0) -> int:
    """One worker: claim and run trials until the study has ``n_trials``; returns how many it ran."""
    if settings.in_process:
        os.environ.update(_trial_env(settings))
        import torch

        torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))
        _Signals.install()
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
        _Signals.check()
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
    settings.out.mkdir(parents=True, exist_ok=True)
    started = time.time()
    study = create_or_load_study(settings)
    if not report_only:
        interrupted = fail_interrupted_trials(study)
        if interrupted:
            print(f"{PROG}: trial(s) {interrupted} were interrupted; they are redone", flush=True)
        done = len(study.get_trials(deepcopy=False, states=_COUNTED))
        print(
            f"{PROG}: study {settings.study_name!r}: {done}/{settings.n_trials} trials done, storage {settings.storage}"
        )
        if settings.workers == 1:
            work(settings)
        else:
            procs = [subprocess.Popen(_worker_argv(i)) for i in range(settings.workers)]
            codes = [p.wait() for p in procs]
            if any(codes):
                raise TuneError(f"worker exit codes {codes}")
        wall = study.user_attrs.get("wall_time_s", 0.0) + (time.time() - started)
        study.set_user_attr("wall_time_s", round(wall, 1))
    return write_outputs(study, settings)


_ARGV: list[str] = []


def _worker_argv(index: int) -> list[str]:
    """This command line as worker process ``index``: same arguments, one worker."""
    argv = list(_ARGV)
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
    global _ARGV
    _ARGV = argv
    try:
        settings = settings_from_args(args, fit_args)
        if args.worker_index is not None:  # started by a parent gaaf-tune --workers N
            settings.workers = int(os.environ.get("GAAF_TUNE_WORKERS", "1"))
            work(settings, args.worker_index)
            return
        os.environ["GAAF_TUNE_WORKERS"] = str(settings.workers)
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
