"""The checkpoints of a run: ``last.ckpt`` to continue from, and the best one to test.

* :class:`LastCheckpoint` writes ``last.ckpt`` at the end of **every** training epoch, whatever the
  top-k policy of the other checkpoint callbacks (Lightning's ``save_last=True`` only refreshes
  ``last.ckpt`` when a top-k checkpoint is saved), and again at a graceful stop (SIGTERM, or SIGINT
  turned into one by :mod:`lightning_gaaf.run.signals`), where the fit loop stops between batches.
* :class:`BestCheckpoint` keeps the best epoch on a validation metric the model logs, chosen by
  :data:`BEST_RULE`: ``val/acc`` (max) if logged, else ``val/loss`` (min), else the latest epoch.
  Any LightningModule gets it unless the config names its own ``ModelCheckpoint``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import ModelCheckpoint
from pytorch_lightning.trainer.states import TrainerFn
from pytorch_lightning.utilities.exceptions import SIGTERMException
from pytorch_lightning.utilities.rank_zero import rank_zero_info
from typing_extensions import override

__all__ = ["BEST_RULE", "LAST_NAME", "BestCheckpoint", "LastCheckpoint"]

#: The metrics :class:`BestCheckpoint` looks for, in order, with the direction that is better.
BEST_RULE: tuple[tuple[str, str], ...] = (("val/acc", "max"), ("val/loss", "min"))

#: File stem of the always-latest checkpoint (``<checkpoints>/last.ckpt``).
LAST_NAME = ModelCheckpoint.CHECKPOINT_NAME_LAST


class LastCheckpoint(ModelCheckpoint):
    """``<dirpath>/last.ckpt``: the state at the end of the latest epoch, or of a graceful stop.

    Saved in ``on_train_epoch_end`` after every other callback's epoch-end hook (Lightning runs
    checkpoint callbacks last), so it holds the complete epoch: the epoch's metric records, the other
    checkpoint callbacks' best paths, the loops' counters. After a stop signal
    (``trainer.received_sigterm``, under DDP on any rank) it is saved again at the end of the current
    training batch, or from ``on_exception`` when Lightning's ``SIGTERMException`` comes between two
    training batches. It is not saved inside the epoch's last batch or its validation: Lightning cuts
    that validation short and, resuming from there, skips the epoch's validation and epoch-end hooks;
    the end of the previous epoch is the exact point to continue from. Other exceptions leave the
    file alone (their state may be half-updated).

    Another ``ModelCheckpoint`` writing ``save_last`` into the same directory would race for the name
    (Lightning then writes ``last-v1.ckpt``), so :meth:`setup` turns its ``save_last`` off.

    Args:
        dirpath: the run's checkpoint directory.
    """

    def __init__(self, dirpath: str | Path) -> None:
        super().__init__(
            dirpath=str(dirpath),
            filename=LAST_NAME,
            monitor=None,
            save_top_k=1,
            save_last=False,
            every_n_epochs=1,
            save_on_train_epoch_end=True,
            enable_version_counter=False,
        )

    @property
    def path(self) -> Path:
        """``<dirpath>/last.ckpt``."""
        return Path(str(self.dirpath)) / f"{LAST_NAME}{self.FILE_EXTENSION}"

    @override
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        super().setup(trainer, pl_module, stage)
        for callback in trainer.checkpoint_callbacks:
            if (
                callback is not self
                and isinstance(callback, ModelCheckpoint)
                and callback.save_last
                and callback.dirpath is not None
                and Path(str(callback.dirpath)).resolve() == Path(str(self.dirpath)).resolve()
            ):
                rank_zero_info(f"{self.path} is written by LastCheckpoint every epoch; save_last is off")
                callback.save_last = False

    @override
    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)
        # A stop signal arrived during this batch: save now, before a validation that Lightning would cut
        # short. Not after the epoch's last batch: resuming from there, Lightning skips that epoch's
        # validation and epoch-end hooks, so the previous epoch's file is the exact point to go on from.
        if batch_idx + 1 >= trainer.num_training_batches:
            return
        stop = trainer.received_sigterm
        if trainer.world_size > 1:  # every rank saves (the save has a barrier) if any rank got it
            stop = trainer.strategy.reduce_boolean_decision(stop, all=False)
        if stop:
            self._save_interrupted(trainer)

    @override
    def on_exception(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException
    ) -> None:
        # Lightning stops between batches after SIGTERM; other exceptions may leave a half-done step.
        if isinstance(exception, SIGTERMException) and not (trainer.validating or trainer.sanity_checking):
            self._save_interrupted(trainer)

    def _save_interrupted(self, trainer: pl.Trainer) -> None:
        if trainer.state.fn != TrainerFn.FITTING or trainer.global_step == self._last_global_step_saved:
            return  # not fitting, or nothing trained since the last save
        trainer.save_checkpoint(self.path)
        # ModelCheckpoint's own record of the step it last saved (a private attribute; no public one
        # exists): set so that its epoch-end save does not write the same step again.
        # tests/test_resume.py::test_model_checkpoint_keeps_its_last_saved_step checks it still exists.
        self._last_global_step_saved = trainer.global_step
        rank_zero_info(
            f"Interrupted at epoch {trainer.current_epoch}, step {trainer.global_step}: saved {self.path}"
        )


class BestCheckpoint(ModelCheckpoint):
    """``<dirpath>/epochNNN-<metric>V.ckpt``: the best epoch on the first metric of :data:`BEST_RULE`
    that the model logs (decided at the first validation; a model logging none keeps the latest epoch).

    The choice is saved in checkpoints, so a resumed run keeps comparing on the same metric.

    Args:
        dirpath: the run's checkpoint directory.
    """

    def __init__(self, dirpath: str | Path) -> None:
        super().__init__(
            dirpath=str(dirpath), filename="epoch{epoch:03d}", save_top_k=1, auto_insert_metric_name=False
        )
        self._decided = False

    @property
    @override
    def state_key(self) -> str:
        # The monitor is chosen during the run; the key must not depend on it.
        return self._generate_state_key(rule=BEST_RULE)

    def _choose(self, monitor: str | None, mode: str) -> None:
        self.monitor, self.mode, self._decided = monitor, mode, True
        self.kth_value = torch.tensor(torch.inf if mode == "min" else -torch.inf)
        if monitor is not None:
            self.filename = f"epoch{{epoch:03d}}-{monitor.replace('/', '_')}{{{monitor}:.4f}}"

    @override
    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not self._decided and not trainer.sanity_checking:
            logged = trainer.callback_metrics
            monitor, mode = next(((k, m) for k, m in BEST_RULE if k in logged), (None, "min"))
            self._choose(monitor, mode)
        super().on_validation_end(trainer, pl_module)

    @override
    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "mode": self.mode, "decided": self._decided}

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if state_dict.get("decided"):
            self._choose(state_dict.get("monitor"), state_dict.get("mode", "min"))
        super().load_state_dict(state_dict)
