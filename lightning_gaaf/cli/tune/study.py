"""The study in its storage: create or continue it, fail trials whose worker died, claim new trials.

The storage (journal file or database) is the only thing ``gaaf-tune`` workers share, on one
machine or several; what they must agree on is here: that a continued study has the same settings,
that a dead worker's trial is redone, and that local workers never claim more than ``--trials``.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import socket
from collections.abc import Iterator
from pathlib import Path

import optuna

from lightning_gaaf.cli.tune.settings import TuneError, TuneSettings
from lightning_gaaf.cli.tune.storage import open_storage

#: Trials that count towards ``--trials``; FAIL trials (crashed or interrupted) are redone.
COUNTED = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)
_ACTIVE = (*COUNTED, optuna.trial.TrialState.RUNNING, optuna.trial.TrialState.WAITING)


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
