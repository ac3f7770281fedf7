"""Optuna storage and pruner choices for ``gaaf-tune``, and the callback that prunes a ``gaaf-fit`` trial.

A trial is an ordinary ``gaaf-fit`` run in its own process. :class:`TrialPruning` joins it to its
Optuna trial through the study's storage: after every validation it reports the monitored metric
(``trial.report``) and, when the study's pruner says so, stops training at the end of that epoch
and leaves ``pruned.json`` in the run directory, which ``gaaf-tune`` reads to mark the trial pruned.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any

import optuna
import pytorch_lightning as pl
import sqlalchemy.exc
from typing_extensions import override

#: ``<run_dir>/PRUNED_FILE``: written when the pruner stopped the run (epoch and last value).
PRUNED_FILE = "pruned.json"


class StorageError(ValueError):
    """A storage URL that cannot be opened here (e.g. its database driver is missing)."""


class PrunerSpecError(ValueError):
    """A ``--pruner`` value that names no known pruner or has bad numbers."""


def _rdb_storage(spec: str, attempts: int = 5) -> optuna.storages.RDBStorage:
    """Optuna's RDB storage; a fresh database's schema is created by whichever process comes first.

    Workers started together on an empty database race to create Optuna's tables (PostgreSQL
    answers the loser with a unique violation on its catalogue): the loser tries again and then
    finds the tables made.
    """
    for attempt in range(1, attempts):
        try:
            return optuna.storages.RDBStorage(spec, engine_kwargs={"pool_pre_ping": True})
        except (sqlalchemy.exc.IntegrityError, sqlalchemy.exc.ProgrammingError):
            time.sleep(0.5 * attempt)
    return optuna.storages.RDBStorage(spec, engine_kwargs={"pool_pre_ping": True})


def open_storage(spec: str) -> optuna.storages.BaseStorage:
    """``spec`` is a database URL (``sqlite:///f.db``, ``postgresql://user@host/db``, ``mysql://...``:
    Optuna's RDB storage, which several processes and machines can share) or a file path (an Optuna
    journal file: nothing to start, safe for several processes on one machine)."""
    if "://" in spec:
        try:
            return _rdb_storage(spec)
        except sqlalchemy.exc.ArgumentError as exc:
            raise StorageError(
                f"storage {spec.split('@')[-1]!r}: not a usable database URL ({exc})"
            ) from None
        except ImportError as exc:
            raise StorageError(
                f"storage {spec.split('@')[-1]!r}: the database driver is not installed ({exc}; "
                "for PostgreSQL: pip install 'psycopg[binary]' and a postgresql+psycopg:// URL)"
            ) from None
    path = Path(spec)
    path.parent.mkdir(parents=True, exist_ok=True)
    return optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(str(path)))


def make_pruner(spec: str, direction: str = "maximize") -> optuna.pruners.BasePruner:
    """``none``; ``median[:STARTUP[:WARMUP]]`` (Optuna's MedianPruner: stop a trial whose value at an
    epoch is worse than the median of earlier trials at that epoch, after STARTUP finished trials
    (default 5) and WARMUP epochs (default 1)); ``threshold:VALUE`` (stop as soon as the metric is
    worse than VALUE: below it when maximizing, above it when minimizing)."""
    name, *args = spec.split(":")
    try:
        numbers = [float(a) for a in args]
    except ValueError:
        raise PrunerSpecError(f"pruner {spec!r}: the values after ':' must be numbers") from None
    if name == "none" and not numbers:
        return optuna.pruners.NopPruner()
    if name == "median" and len(numbers) <= 2:
        startup, warmup = (list(map(int, numbers)) + [5, 1][len(numbers) :])[:2]
        return optuna.pruners.MedianPruner(n_startup_trials=startup, n_warmup_steps=warmup)
    if name == "threshold" and len(numbers) == 1:
        key = "lower" if direction == "maximize" else "upper"
        return optuna.pruners.ThresholdPruner(**{key: numbers[0]})
    raise PrunerSpecError(f"pruner {spec!r}: expected none, median[:STARTUP[:WARMUP]] or threshold:VALUE")


class TrialPruning(pl.Callback):
    """Report ``monitor`` to an Optuna trial after each validation; stop the fit when it is pruned.

    The pruner is not asked after the last epoch (``max_epochs``): a run that used its whole budget
    is a complete trial.

    Args:
        storage: the study's storage (database URL or journal file path, as for ``gaaf-tune --storage``).
        study_name: the study.
        trial_number: the trial this run belongs to (``trial.number``).
        monitor: the epoch metric reported, e.g. ``val/acc``.
        pruner: pruner spec (:func:`make_pruner`); the study's direction decides what "worse" means.
    """

    def __init__(
        self,
        storage: str,
        study_name: str,
        trial_number: int,
        monitor: str = "val/acc",
        pruner: str = "median",
    ) -> None:
        super().__init__()
        self.storage, self.study_name, self.trial_number = storage, study_name, trial_number
        self.monitor, self.pruner = monitor, pruner
        self._trial: optuna.Trial | None = None
        self.pruned_at: int | None = None

    @property
    def state_key(self) -> str:
        return self._generate_state_key(study_name=self.study_name, trial_number=self.trial_number)

    def _connect(self) -> optuna.Trial:
        if self._trial is None:
            storage = open_storage(self.storage)
            study_id = storage.get_study_id_from_name(self.study_name)
            direction = storage.get_study_directions(study_id)[0]
            study = optuna.load_study(
                study_name=self.study_name,
                storage=storage,
                pruner=make_pruner(self.pruner, "maximize" if direction.name == "MAXIMIZE" else "minimize"),
            )
            trial_id = storage.get_trial_id_from_study_id_trial_number(study_id, self.trial_number)
            self._trial = optuna.trial.Trial(study, trial_id)
        return self._trial

    @override
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage == "fit" and trainer.is_global_zero:
            self._connect()  # a wrong storage or trial fails before training, not after an epoch

    @override
    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.sanity_checking or trainer.state.fn != "fit":
            return
        prune = False
        if trainer.is_global_zero:
            value = trainer.callback_metrics.get(self.monitor)
            if value is not None:
                value = float(value)
                epoch = trainer.current_epoch
                last = trainer.max_epochs is not None and 0 < trainer.max_epochs <= epoch + 1
                if math.isfinite(value):
                    trial = self._connect()
                    trial.report(value, step=epoch)
                    # A run that has used its whole budget is complete, whatever the pruner says.
                    prune = not last and trial.should_prune()
                if prune:
                    self.pruned_at = epoch + 1
                    path = Path(trainer.default_root_dir) / PRUNED_FILE
                    path.write_text(json.dumps({"epoch": epoch + 1, self.monitor: value}))
        prune = trainer.strategy.broadcast(prune, src=0)
        if prune:
            trainer.should_stop = True

    @override
    def state_dict(self) -> dict[str, Any]:
        return {"pruned_at": self.pruned_at}

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.pruned_at = state_dict.get("pruned_at")


#: The class path that adds :class:`TrialPruning` to a trial's Trainer (``--trainer.callbacks+=``);
#: ``best.yaml`` leaves it out again. One definition, so that adding and removing cannot drift apart.
PRUNING_CALLBACK = f"{TrialPruning.__module__}.{TrialPruning.__qualname__}"
