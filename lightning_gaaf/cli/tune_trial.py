"""One ``gaaf-tune`` trial: its ``gaaf-fit`` command, running it, and telling the study the outcome.

A trial is an ordinary ``gaaf-fit`` run in ``<out>/trials/trial_NNNN`` (its output in
``trial_NNNN.log`` beside it), started through ``gaaf-fit``'s ``main()`` in the worker process
(imports paid once) or, with ``--subprocess``, as its own process. Its objective is the best epoch
value of the search space's metric in the run's ``stats/metrics.json``; a run that the pruning
callback stopped is told to the study as pruned. A SIGINT/SIGTERM fails the running trial and
stops the worker (:class:`Signals`).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
import traceback
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import optuna

from lightning_gaaf.cli.search_space import overrides_yaml
from lightning_gaaf.cli.tune_pruning import PRUNED_FILE, PRUNING_CALLBACK
from lightning_gaaf.cli.tune_settings import PROG, TuneSettings

TRIALS_DIR = "trials"


def fit_command(config: Path, run_dir: Path, seed: int, fit_args: Sequence[str] = ()) -> list[str]:
    """``gaaf-fit`` as a process: ``config`` and ``fit_args`` trained into ``run_dir`` with ``seed``, without
    a progress bar (the output goes to a log). Trials and the retrained best configs start alike."""
    return [
        sys.executable,
        "-m",
        "lightning_gaaf.cli.fit",
        "--config",
        str(config),
        *fit_args,
        "--run_dir",
        str(run_dir),
        "--seed_everything",
        str(seed),
        "--trainer.enable_progress_bar",
        "false",
    ]


def trial_command(
    settings: TuneSettings, trial_number: int, values: dict[str, Any], run_dir: Path
) -> list[str]:
    """The ``gaaf-fit`` command line of one trial: config, user args, pruning callback, trial values."""
    cmd = fit_command(settings.config, run_dir, settings.seed, settings.fit_args)
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


def best_epoch(
    epochs: list[dict[str, Any]], metric: str, direction: str = "maximize"
) -> dict[str, Any] | None:
    """The epoch record of ``stats/metrics.json`` with the best value of ``metric``, None if no epoch has one.

    The trials' objective, and what the tuned runs report as their best validation epoch.
    """
    scored = [e for e in epochs if e.get(metric) is not None]
    if not scored:
        return None
    pick = max if direction == "maximize" else min
    return pick(scored, key=lambda e: e[metric])


def read_objective(run_dir: Path, metric: str, direction: str) -> dict[str, Any] | None:
    """Best epoch value of ``metric`` in ``<run_dir>/stats/metrics.json``, its epoch and the epoch count."""
    path = run_dir / "stats" / "metrics.json"
    try:
        epochs = json.loads(path.read_text())["epochs"]
    except (OSError, ValueError, KeyError):
        return None
    best = best_epoch(epochs, metric, direction)
    if best is None:
        return None
    return {"value": best[metric], "best_epoch": best["epoch"], "epochs_trained": len(epochs)}


def trial_env(settings: TuneSettings) -> dict[str, str]:
    """The environment of a trial: its own W&B service and run directory, the study as W&B group,
    the machine's cores shared between the workers."""
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


class Signals:
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
            Signals.received = signal.SIGTERM
            return 128 + signal.SIGTERM
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else 1
            if code in (128 + signal.SIGTERM, 128 + signal.SIGINT):
                # gaaf-fit stopped on a signal (its own handler took it from ours): stop the worker too.
                Signals.received = code - 128
            return code
        except Exception:  # a crash of one trial: keep its traceback in its log, go on with the next
            traceback.print_exc()
            return 1
        finally:
            Signals.install()  # Lightning leaves SIGINT ignored after an interrupted fit


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
                code = subprocess.call(cmd, stdout=fh, stderr=subprocess.STDOUT, env=trial_env(settings))
    except BaseException:
        study.tell(trial, state=optuna.trial.TrialState.FAIL)
        raise
    if Signals.received is not None:
        trial.set_user_attr("error", f"interrupted by signal {Signals.received}")
        study.tell(trial, state=optuna.trial.TrialState.FAIL)
        Signals.check()
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
