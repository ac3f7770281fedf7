"""What a gaaf-fit checkpoint holds and when it is written, so that a run can be continued exactly.

* :class:`LastCheckpoint` writes ``last.ckpt`` at the end of **every** training epoch, whatever the
  top-k policy of the other checkpoint callbacks (Lightning's ``save_last=True`` only refreshes
  ``last.ckpt`` when a top-k checkpoint is saved), and again at a graceful stop (SIGTERM, or SIGINT
  turned into one by :mod:`lightning_gaaf.cli.run_control`), where the fit loop stops between batches.
* :class:`RandomState` carries the global random generators (torch, CUDA, numpy, python), so that
  dropout and augmentation continue with the numbers the uninterrupted run would have drawn.

The training order itself comes from the DataModule's state and the fit loop's epoch counter
(:class:`~lightning_gaaf.datamodules.EpochSampler`).
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import Callback, ModelCheckpoint
from pytorch_lightning.trainer.states import TrainerFn
from pytorch_lightning.utilities.exceptions import SIGTERMException
from pytorch_lightning.utilities.rank_zero import rank_zero_info
from typing_extensions import override

__all__ = ["LAST_NAME", "LastCheckpoint", "RandomState"]

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
        self._last_global_step_saved = trainer.global_step
        rank_zero_info(
            f"Interrupted at epoch {trainer.current_epoch}, step {trainer.global_step}: saved {self.path}"
        )


class RandomState(Callback):
    """Save the global random generators in checkpoints; restore them when a fit resumes.

    The state is taken when the checkpoint is written and put back at ``on_train_start`` of a resumed
    fit (after Lightning's sanity check, which must not shift it); ``trainer.test(ckpt_path=...)`` does
    not touch the generators. Under DDP rank 0's state is saved and every rank gets it back: ranks
    seeded alike (``seed_everything`` without per-rank seeds) draw identical streams.
    """

    def __init__(self) -> None:
        self._pending: dict[str, Any] | None = None

    @override
    def state_dict(self) -> dict[str, Any]:
        # Tensors and plain Python values only: Lightning loads checkpoints with ``weights_only=True``.
        kind, keys, pos, has_gauss, cached_gauss = np.random.get_state(legacy=True)
        state: dict[str, Any] = {
            "torch": torch.get_rng_state(),
            "numpy": (
                str(kind),
                torch.from_numpy(keys.astype(np.int64)),
                int(pos),
                int(has_gauss),
                float(cached_gauss),
            ),
            "python": random.getstate(),
        }
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            state["cuda"] = torch.cuda.get_rng_state_all()
        return state

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._pending = dict(state_dict)

    @override
    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        state, self._pending = self._pending, None
        if state is None:
            return
        torch.set_rng_state(state["torch"])
        kind, keys, pos, has_gauss, cached_gauss = state["numpy"]
        np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, cached_gauss))
        random.setstate(state["python"])
        cuda = state.get("cuda")
        if cuda is not None and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(cuda)
