"""One ``gaaf-tune`` trial: its run, and telling the study the outcome.

A trial is an ordinary run in ``<out>/trials/trial_NNNN`` (its output in ``trial_NNNN.log`` beside it),
run by :func:`lightning_gaaf.run.fit_and_test` in the worker process (imports paid once) with a
:class:`~lightning_gaaf.run.pruning.TrialPruning` callback; its objective is the best epoch value of the
search space's metric in the returned result. With ``--subprocess`` each trial is its own ``gaaf-fit``
process; it reports its epochs to the study's storage, which then holds the outcome. Trials do not run
the test set. A SIGINT/SIGTERM fails the running trial and stops the worker (:class:`Signals`).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
import traceback
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import optuna

from lightning_gaaf.cli.logfile import output_to
from lightning_gaaf.cli.tune.search_space import overrides_yaml
from lightning_gaaf.cli.tune.settings import PROG, TuneSettings

TRIALS_DIR = "trials"
#: The class path of the pruning callback a ``--subprocess`` trial gets (``--trainer.callbacks+=``).
STORED_PRUNING = "lightning_gaaf.run.pruning.StoredTrialPruning"


def fit_args(config: Path, run_dir: Path, seed: int, extra: Sequence[str] = ()) -> list[str]:
    """``gaaf-fit`` arguments: ``config`` and ``extra`` trained into ``run_dir`` with ``seed``, without a
    progress bar (the output goes to a log). Trials and the retrained best configs start alike."""
    return [
        "--config", str(config), *extra, "--run_dir", str(run_dir),
        "--seed_everything", str(seed), "--trainer.enable_progress_bar", "false",
    ]  # fmt: skip


def trial_args(settings: TuneSettings, values: dict[str, Any], run_dir: Path) -> list[str]:
    """The ``gaaf-fit`` arguments of one trial: config, user args, the trial's values on top."""
    return [
        *fit_args(settings.config, run_dir, settings.seed, settings.fit_args),
        "--config",
        overrides_yaml(values),
    ]


def trial_env(settings: TuneSettings) -> dict[str, str]:
    """The environment of a trial: its own W&B service and run directory, the study as W&B group,
    the machine's cores shared between the workers."""
    env = dict(os.environ)
    env.pop("WANDB_SERVICE", None)  # each trial starts its own W&B service
    env.pop("GAAF_FIT_RUN_DIR", None)
    env.setdefault("WANDB_RUN_GROUP", settings.study_name)
    env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // settings.workers)))
    return env


class Signals:
    """The SIGINT/SIGTERM a worker received between trials, if any: it stops the worker.

    During a trial's fit the run's own handler takes the signal and the run returns with exit code
    143 / 130; :func:`run_trial` then records it here.
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


#: A trial's outcome: (exit code, best value, its epoch, epochs trained, pruned, error message)
Outcome = tuple[int, float | None, int | None, int, bool, str | None]


def _in_process(settings: TuneSettings, trial: optuna.Trial, args: list[str], log: Path) -> Outcome:
    """The trial through :func:`fit_and_test` in this process; the outcome from the returned result."""
    from lightning_gaaf.run import fit_and_test
    from lightning_gaaf.run.composition import UsageError
    from lightning_gaaf.run.pruning import TrialPruning

    metric = settings.space.metric
    callbacks = [TrialPruning(trial, metric)] if settings.pruner != "none" else []
    with output_to(log):
        try:
            result = fit_and_test(args, callbacks=callbacks, test=False)
        except UsageError as exc:
            print(f"gaaf-fit: error: {exc}")
            return 2, None, None, 0, False, str(exc)
        except Exception as exc:  # a crash of one trial: keep its traceback in its log, go on with the next
            traceback.print_exc()
            return 1, None, None, 0, False, f"{type(exc).__name__}: {exc}"
        finally:
            Signals.install()  # Lightning leaves SIGINT ignored after an interrupted fit
    if result.signal is not None:
        Signals.received = result.signal
    best = result.best_epoch(metric, settings.space.direction)
    value, epoch = (best[metric], best["epoch"]) if best is not None else (None, None)
    return result.exit_code, value, epoch, len(result.epochs), result.pruned, None


def _as_process(
    settings: TuneSettings, study: optuna.Study, trial: optuna.Trial, args: list[str], log: Path
) -> Outcome:
    """The trial as its own ``gaaf-fit`` process; the outcome from what it reported to the study's storage."""
    from lightning_gaaf.run.pruning import PRUNED_AT_ATTR

    cmd = [
        sys.executable, "-m", "lightning_gaaf.cli.fit", *args,
        f"--trainer.callbacks+={STORED_PRUNING}",
        f"--trainer.callbacks.storage={settings.storage}",
        f"--trainer.callbacks.study_name={settings.study_name}",
        f"--trainer.callbacks.trial_number={trial.number}",
        f"--trainer.callbacks.monitor={settings.space.metric}",
        f"--trainer.callbacks.pruner={settings.pruner}",
        "--trainer.limit_test_batches", "0",  # trials never look at the test set
    ]  # fmt: skip
    with log.open("w") as fh:
        code = subprocess.call(cmd, stdout=fh, stderr=subprocess.STDOUT, env=trial_env(settings))
    if code in (128 + signal.SIGTERM, 128 + signal.SIGINT):
        Signals.received = code - 128
    frozen = next(t for t in study.get_trials(deepcopy=False) if t.number == trial.number)
    reported = frozen.intermediate_values  # {epoch (0-based): value}
    if not reported:
        return code, None, None, 0, False, None
    pick = max if settings.space.direction == "maximize" else min
    epoch = pick(reported, key=lambda e: reported[e])
    pruned = frozen.user_attrs.get(PRUNED_AT_ATTR) is not None
    return code, reported[epoch], epoch + 1, max(reported) + 1, pruned, None


def run_trial(settings: TuneSettings, study: optuna.Study, trial: optuna.Trial) -> optuna.trial.TrialState:
    """Run one trial and tell the study its outcome."""
    run_dir = (settings.out / TRIALS_DIR / f"trial_{trial.number:04d}").resolve()
    run_dir.parent.mkdir(parents=True, exist_ok=True)
    values = settings.space.suggest(trial)
    trial.set_user_attr("run_dir", str(run_dir))
    args = trial_args(settings, values, run_dir)
    log = run_dir.parent / f"trial_{trial.number:04d}.log"
    started = time.time()
    try:
        if settings.in_process:
            outcome = _in_process(settings, trial, args, log)
        else:
            outcome = _as_process(settings, study, trial, args, log)
    except BaseException:
        study.tell(trial, state=optuna.trial.TrialState.FAIL)
        raise
    code, value, best_epoch, epochs, pruned, error = outcome
    if Signals.received is not None:
        trial.set_user_attr("error", f"interrupted by signal {Signals.received}")
        study.tell(trial, state=optuna.trial.TrialState.FAIL)
        Signals.check()
    trial.set_user_attr("wall_time_s", round(time.time() - started, 1))
    if code != 0 or value is None:
        trial.set_user_attr("error", error or f"gaaf-fit exit {code}; log: {log}")
        study.tell(trial, state=optuna.trial.TrialState.FAIL)
        print(f"{PROG}: trial {trial.number} FAILED (exit {code}), log: {log}", flush=True)
        return optuna.trial.TrialState.FAIL
    trial.set_user_attr("best_epoch", best_epoch)
    trial.set_user_attr("epochs_trained", epochs)
    if pruned:
        study.tell(trial, state=optuna.trial.TrialState.PRUNED)
        state = optuna.trial.TrialState.PRUNED
    else:
        study.tell(trial, value)
        state = optuna.trial.TrialState.COMPLETE
    shown = ", ".join(
        f"{k.rsplit('.', 1)[-1]}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in values.items()
    )
    print(
        f"{PROG}: trial {trial.number} {state.name.lower()}: {settings.space.metric}={value:.4f} "
        f"(epoch {best_epoch}/{epochs}) {shown} [{time.time() - started:.0f} s]",
        flush=True,
    )
    return state
