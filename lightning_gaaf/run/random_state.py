"""The global random generators carried in checkpoints, so a resumed fit draws the numbers an uninterrupted one would.

The training order itself comes from the DataModule's state and the fit loop's epoch counter
(:class:`~lightning_gaaf.datamodules.EpochSampler`).
"""

from __future__ import annotations

import random
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import Callback
from typing_extensions import override

__all__ = ["RandomState"]


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
