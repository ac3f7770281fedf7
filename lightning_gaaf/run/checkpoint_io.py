"""Checkpoint files written whole or not at all: a full disk keeps the previous checkpoint.

Lightning's :class:`~lightning_fabric.plugins.io.torch_io.TorchCheckpointIO` (2.6) writes a local
checkpoint through an fsspec transaction whose temporary file lies in the system's temporary
directory; the commit then *copies* it across file systems into the checkpoint's place, so a disk that
fills up during the copy leaves a truncated ``last.ckpt`` where the good one was.
:class:`AtomicCheckpointIO` writes into a temporary file next to the checkpoint and renames it over
the old one (``os.replace``, atomic on POSIX): every checkpoint of a run (best, ``last.ckpt``, the one
of a graceful stop) is either the new one or the previous one, never a piece.
:func:`use_atomic_checkpoints` gives it to a Trainer whose checkpoint plugin the user did not choose.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from lightning_fabric.plugins.io.torch_io import TorchCheckpointIO
from lightning_fabric.utilities.cloud_io import get_filesystem
from lightning_fabric.utilities.types import _PATH
from typing_extensions import override

from lightning_gaaf.atomic_write import write_atomically

__all__ = ["AtomicCheckpointIO", "CheckpointWriteError", "use_atomic_checkpoints"]


class CheckpointWriteError(OSError):
    """A checkpoint that could not be written (full disk, no permission); the previous file is unchanged."""


class AtomicCheckpointIO(TorchCheckpointIO):
    """:class:`TorchCheckpointIO` whose local files are replaced atomically.

    The checkpoint goes to ``.<name>.<pid>.tmp`` in the checkpoint's directory, is flushed to the disk,
    then renamed over ``<name>``. On failure the temporary file is removed and
    :class:`CheckpointWriteError` says which checkpoint and why, in one line. Remote paths (``s3://``
    and other fsspec URLs) are written by Lightning's own code.
    """

    @override
    def save_checkpoint(
        self, checkpoint: dict[str, Any], path: _PATH, storage_options: Any | None = None
    ) -> None:
        if not _is_local(path):
            super().save_checkpoint(checkpoint, path, storage_options=storage_options)
            return
        if storage_options is not None:
            super().save_checkpoint(checkpoint, path, storage_options=storage_options)  # raises TypeError
        path = Path(path)
        buffer = io.BytesIO()  # serialized first: a failure to pickle is a bug, not a disk error
        torch.save(checkpoint, buffer)
        try:
            write_atomically(path, buffer.getbuffer())
        except OSError as err:
            error = CheckpointWriteError(f"could not write checkpoint {path}: {err.strerror or err}")
            error.errno = err.errno
            raise error from None


def _is_local(path: _PATH) -> bool:
    return "file" in (get_filesystem(path).protocol or ())


def use_atomic_checkpoints(trainer: pl.Trainer, user_chose_io: bool) -> None:
    """Give ``trainer``'s strategy an :class:`AtomicCheckpointIO` where it would use Lightning's default.

    ``user_chose_io``: the configuration named a checkpoint plugin (``trainer.plugins``) or a strategy
    object, whose choice stands. Strategies with a writer of their own (XLA, DeepSpeed, sharded FSDP,
    ``AsyncCheckpointIO``) keep it too: only a plain :class:`TorchCheckpointIO` is replaced.
    """
    if user_chose_io:
        return
    if type(trainer.strategy.checkpoint_io) is TorchCheckpointIO:
        trainer.strategy.checkpoint_io = AtomicCheckpointIO()
