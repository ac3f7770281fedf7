"""Where the monitors' numbers go: every Lightning logger, ``trainer.callback_metrics``, W&B and
TensorBoard media, and the run directory.

Scalars reach every logger through ``logger.log_metrics`` and, on every rank,
``trainer.callback_metrics`` (so ``EarlyStopping`` / ``ModelCheckpoint`` can watch them). Histograms and images go to :class:`~pytorch_lightning.loggers.WandbLogger` and
:class:`~pytorch_lightning.loggers.TensorBoardLogger`; other loggers (CSV, MLflow, ...) have no such
media and skip them.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytorch_lightning as pl
from pytorch_lightning.loggers import TensorBoardLogger, WandbLogger
from torch import Tensor

#: (counts, edges): ``len(edges) == len(counts) + 1``.
Histogram = tuple[Sequence[float], Sequence[float]]


def all_reduce_sum(trainer: pl.Trainer, tensor: Tensor) -> Tensor:
    """Sum ``tensor`` over all ranks (one collective); identity on one process."""
    if trainer.world_size > 1:
        return trainer.strategy.reduce(tensor, reduce_op="sum")
    return tensor


def finite(scalars: Mapping[str, float | None]) -> dict[str, float]:
    return {k: float(v) for k, v in scalars.items() if v is not None and math.isfinite(v)}


def send_scalars(
    trainer: pl.Trainer,
    scalars: Mapping[str, float],
    histograms: Mapping[str, tuple[np.ndarray, np.ndarray]],
    step: int,
) -> None:
    """One record to every logger (rank 0): one ``log_metrics`` call, or one W&B history row that
    also carries the histograms."""
    if not trainer.is_global_zero:
        return
    for logger in trainer.loggers:
        if isinstance(logger, WandbLogger):
            media = _wandb_histograms(histograms)
            if scalars or media:
                logger.experiment.log({**scalars, **media, "trainer/global_step": step})
        elif scalars:
            logger.log_metrics(dict(scalars), step=step)


def _wandb(trainer: pl.Trainer) -> list[WandbLogger]:
    return [lg for lg in trainer.loggers if isinstance(lg, WandbLogger)] if trainer.is_global_zero else []


def _tensorboard(trainer: pl.Trainer) -> list[TensorBoardLogger]:
    return (
        [lg for lg in trainer.loggers if isinstance(lg, TensorBoardLogger)] if trainer.is_global_zero else []
    )


def wants_media(trainer: pl.Trainer) -> bool:
    """Whether this rank has a logger that takes histograms and images (W&B or TensorBoard)."""
    return bool(_wandb(trainer) or _tensorboard(trainer))


def nonempty_histograms(histograms: Mapping[str, Histogram]) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    hists = {k: (np.asarray(c, dtype=float), np.asarray(e, dtype=float)) for k, (c, e) in histograms.items()}
    return {k: (c, e) for k, (c, e) in hists.items() if c.sum() > 0}


def _wandb_histograms(hists: Mapping[str, tuple[np.ndarray, np.ndarray]]) -> dict[str, Any]:
    if not hists:
        return {}
    import wandb

    return {k: wandb.Histogram(np_histogram=(c, e)) for k, (c, e) in hists.items()}


def tensorboard_histograms(
    trainer: pl.Trainer,
    hists: Mapping[str, tuple[np.ndarray, np.ndarray]],
    step: int,
    sums: Mapping[str, tuple[float, float]] | None,
) -> None:
    for logger in _tensorboard(trainer):
        writer = logger.experiment
        for key, (counts, edges) in hists.items():
            centres = 0.5 * (edges[:-1] + edges[1:])
            total, squares = (sums or {}).get(key) or (
                float((counts * centres).sum()),
                float((counts * centres * centres).sum()),
            )
            writer.add_histogram_raw(
                key,
                min=float(edges[0]),
                max=float(edges[-1]),
                num=int(counts.sum()),
                sum=float(total),
                sum_squares=float(squares),
                bucket_limits=edges[1:].tolist(),
                bucket_counts=counts.tolist(),
                global_step=step,
            )


def log_images(trainer: pl.Trainer, images: Mapping[str, Path], step: int) -> None:
    """PNG files as ``wandb.Image`` (W&B) and ``add_image`` (TensorBoard), rank 0."""
    if not images:
        return
    runs = _wandb(trainer)
    if runs:
        import wandb

        payload = {key: wandb.Image(str(path)) for key, path in images.items()}
        for logger in runs:
            logger.experiment.log({**payload, "trainer/global_step": step})
    boards = _tensorboard(trainer)
    if boards:
        import matplotlib.image as mpimg

        for key, path in images.items():
            pixels = mpimg.imread(str(path))[..., :3]
            for logger in boards:
                logger.experiment.add_image(key, pixels, global_step=step, dataformats="HWC")


def log_table(
    trainer: pl.Trainer, key: str, columns: Sequence[str], rows: Sequence[Sequence[Any]], step: int
) -> None:
    """A table (W&B only; the same rows are in the stats file for everyone else)."""
    runs = _wandb(trainer)
    if runs and rows:
        import wandb

        for logger in runs:
            logger.experiment.log(
                {
                    key: wandb.Table(columns=list(columns), data=[list(r) for r in rows]),
                    "trainer/global_step": step,
                }
            )


def log_summary(trainer: pl.Trainer, metrics: Mapping[str, float | None], others: bool = True) -> None:
    """Whole-run numbers: the W&B run summary for WandbLogger; ``log_metrics`` for other loggers
    unless ``others`` is False (the values were logged as scalars already)."""
    clean = finite(metrics)
    if not clean or not trainer.is_global_zero:
        return
    for logger in trainer.loggers:
        if isinstance(logger, WandbLogger):
            for key, value in clean.items():
                logger.experiment.summary[key] = value
        elif others:
            logger.log_metrics(clean, step=trainer.global_step)
