"""Where the monitors' numbers go: every Lightning logger, ``trainer.callback_metrics``, W&B and
TensorBoard media, and the run directory.

Scalars reach every logger through ``logger.log_metrics`` and, on every rank,
``trainer.callback_metrics`` (so ``EarlyStopping`` / ``ModelCheckpoint`` can watch them). Histograms and images go to :class:`~pytorch_lightning.loggers.WandbLogger` and
:class:`~pytorch_lightning.loggers.TensorBoardLogger`; other loggers (CSV, MLflow, ...) have no such
media and skip them.
"""

from __future__ import annotations

import math
import weakref
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch
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


@dataclass
class _Record:
    """The monitors' numbers of one step, not yet handed to the loggers."""

    step: int
    scalars: dict[str, float] = field(default_factory=dict)
    histograms: dict[str, tuple[np.ndarray, np.ndarray]] = field(default_factory=dict)


_PENDING: weakref.WeakKeyDictionary[pl.Trainer, _Record] = weakref.WeakKeyDictionary()


def log_scalars(
    trainer: pl.Trainer,
    scalars: Mapping[str, float | None],
    step: int,
    histograms: Mapping[str, Histogram] | None = None,
    sums: Mapping[str, tuple[float, float]] | None = None,
) -> None:
    """One step's numbers: finite scalars to ``trainer.callback_metrics`` now (all ranks) and to every
    logger at ``step`` (rank 0); ``histograms`` (see :func:`log_histograms`) to W&B, in the same
    record as the scalars, and to TensorBoard.

    All monitors' numbers of one step go to the loggers as one record (one ``log_metrics`` call per
    logger, one W&B history row): they are collected until a monitor logs another step or
    :func:`flush_logs` runs (every monitor calls it when it saves its statistics and on exceptions).
    A logger call costs about a millisecond (W&B), several per logging step added up.

    ``callback_metrics`` is the dict ``EarlyStopping`` and ``ModelCheckpoint`` read; the values are
    written into it directly rather than through ``LightningModule.log``: every key logged that way
    is carried by Lightning's result collection and re-read at every later batch of the epoch,
    which would make the monitors cost time on steps where they record nothing.
    """
    clean = finite(scalars)
    trainer.callback_metrics.update({key: torch.tensor(value) for key, value in clean.items()})
    if not trainer.is_global_zero:
        return
    hists = _nonempty(histograms or {})
    _tensorboard_histograms(trainer, hists, step, sums)
    record = _PENDING.get(trainer)
    if record is not None and record.step != step:
        flush_logs(trainer)
        record = None
    if record is None:
        record = _PENDING[trainer] = _Record(step)
    record.scalars.update(clean)
    record.histograms.update(hists)


def flush_logs(trainer: pl.Trainer) -> None:
    """Hand the collected record (if any) to every logger."""
    record = _PENDING.pop(trainer, None)
    if record is None or not trainer.is_global_zero:
        return
    for logger in trainer.loggers:
        if isinstance(logger, WandbLogger):
            media = _wandb_histograms(record.histograms)
            if record.scalars or media:
                logger.experiment.log({**record.scalars, **media, "trainer/global_step": record.step})
        elif record.scalars:
            logger.log_metrics(record.scalars, step=record.step)


def _wandb(trainer: pl.Trainer) -> list[WandbLogger]:
    return [lg for lg in trainer.loggers if isinstance(lg, WandbLogger)] if trainer.is_global_zero else []


def _tensorboard(trainer: pl.Trainer) -> list[TensorBoardLogger]:
    return (
        [lg for lg in trainer.loggers if isinstance(lg, TensorBoardLogger)] if trainer.is_global_zero else []
    )


def wants_media(trainer: pl.Trainer) -> bool:
    """Whether this rank has a logger that takes histograms and images (W&B or TensorBoard)."""
    return bool(_wandb(trainer) or _tensorboard(trainer))


def _nonempty(histograms: Mapping[str, Histogram]) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    hists = {k: (np.asarray(c, dtype=float), np.asarray(e, dtype=float)) for k, (c, e) in histograms.items()}
    return {k: (c, e) for k, (c, e) in hists.items() if c.sum() > 0}


def _wandb_histograms(hists: Mapping[str, tuple[np.ndarray, np.ndarray]]) -> dict[str, Any]:
    if not hists:
        return {}
    import wandb

    return {k: wandb.Histogram(np_histogram=(c, e)) for k, (c, e) in hists.items()}


def _tensorboard_histograms(
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


def log_histograms(
    trainer: pl.Trainer,
    histograms: Mapping[str, Histogram],
    step: int,
    sums: Mapping[str, tuple[float, float]] | None = None,
) -> None:
    """Histograms on given edges to W&B (``wandb.Histogram``) and TensorBoard (``add_histogram_raw``),
    rank 0. ``sums`` optionally gives ``(sum, sum of squares)`` of the values per key (TensorBoard
    shows them); otherwise they are estimated from the bin centres. Empty histograms are skipped."""
    if trainer.is_global_zero:
        log_scalars(trainer, {}, step, histograms, sums)


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


def stats_dir(trainer: pl.Trainer) -> Path:
    """``<run_dir>/stats`` with the run directory ``trainer.default_root_dir`` (gaaf-fit sets it)."""
    return Path(trainer.default_root_dir) / "stats"


def report_dir(trainer: pl.Trainer) -> Path:
    """``<run_dir>/report`` (created)."""
    path = Path(trainer.default_root_dir) / "report"
    path.mkdir(parents=True, exist_ok=True)
    return path
