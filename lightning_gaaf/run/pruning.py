"""Optuna pruning of a run: report the monitored metric after each validation, stop when pruned.

:class:`TrialPruning` is given the live ``optuna.Trial`` (a ``gaaf-tune`` trial run in-process); the
run's :class:`~lightning_gaaf.run.result.RunResult` then says ``pruned_at``. :class:`StoredTrialPruning`
finds its trial through the study's storage, for a trial that runs as its own ``gaaf-fit`` process
(``gaaf-tune --subprocess``); it records ``pruned_at`` as a user attribute of the trial.
"""

from __future__ import annotations

import math
from typing import Any

import pytorch_lightning as pl
from typing_extensions import override

__all__ = ["StoredTrialPruning", "TrialPruning"]

#: The trial's user attribute where :class:`StoredTrialPruning` records the epoch it was pruned after.
PRUNED_AT_ATTR = "pruned_at"


class TrialPruning(pl.Callback):
    """Report ``monitor`` to an Optuna trial after each validation; stop the fit when it is pruned.

    The pruner is not asked after the last epoch (``max_epochs``): a run that used its whole budget
    is a complete trial.

    Args:
        trial: the Optuna trial this run is (its study's pruner decides).
        monitor: the epoch metric reported, e.g. ``val/acc``.
    """

    def __init__(self, trial: Any, monitor: str = "val/acc") -> None:
        super().__init__()
        self.trial, self.monitor = trial, monitor
        self.pruned_at: int | None = None

    @property
    def state_key(self) -> str:
        return self._generate_state_key(monitor=self.monitor)

    def _connect(self) -> Any:
        return self.trial

    def _record_pruned(self, epoch: int) -> None:
        self.pruned_at = epoch

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
            if value is not None and math.isfinite(float(value)):
                epoch = trainer.current_epoch
                last = trainer.max_epochs is not None and 0 < trainer.max_epochs <= epoch + 1
                trial = self._connect()
                trial.report(float(value), step=epoch)
                # A run that has used its whole budget is complete, whatever the pruner says.
                prune = not last and trial.should_prune()
                if prune:
                    self._record_pruned(epoch + 1)
        prune = trainer.strategy.broadcast(prune, src=0)
        if prune:
            trainer.should_stop = True

    @override
    def state_dict(self) -> dict[str, Any]:
        return {"pruned_at": self.pruned_at}

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.pruned_at = state_dict.get("pruned_at")


class StoredTrialPruning(TrialPruning):
    """:class:`TrialPruning` for a trial in another process, found through the study's storage.

    Args:
        storage: the study's storage (database URL or journal file path, as for ``gaaf-tune --storage``).
        study_name: the study.
        trial_number: the trial this run belongs to (``trial.number``).
        monitor: the epoch metric reported, e.g. ``val/acc``.
        pruner: pruner spec (``gaaf-tune --pruner``); the study's direction decides what "worse" means.
    """

    def __init__(
        self,
        storage: str,
        study_name: str,
        trial_number: int,
        monitor: str = "val/acc",
        pruner: str = "median",
    ) -> None:
        super().__init__(trial=None, monitor=monitor)
        self.storage, self.study_name, self.trial_number, self.pruner = (
            storage,
            study_name,
            trial_number,
            pruner,
        )

    @property
    def state_key(self) -> str:
        return self._generate_state_key(study_name=self.study_name, trial_number=self.trial_number)

    def _connect(self) -> Any:
        if self.trial is None:
            import optuna

            from lightning_gaaf.cli.tune.storage import make_pruner, open_storage

            storage = open_storage(self.storage)
            study_id = storage.get_study_id_from_name(self.study_name)
            direction = storage.get_study_directions(study_id)[0]
            study = optuna.load_study(
                study_name=self.study_name,
                storage=storage,
                pruner=make_pruner(self.pruner, "maximize" if direction.name == "MAXIMIZE" else "minimize"),
            )
            trial_id = storage.get_trial_id_from_study_id_trial_number(study_id, self.trial_number)
            # Optuna has no public way to get the Trial of a running trial by number: its constructor
            # is documented but "not recommended". tests/test_tune.py::test_optuna_trial_constructor_
            # reaches_a_running_trial fails loudly when its signature changes.
            self.trial = optuna.trial.Trial(study, trial_id)
        return self.trial

    def _record_pruned(self, epoch: int) -> None:
        super()._record_pruned(epoch)
        self._connect().set_user_attr(PRUNED_AT_ATTR, epoch)
