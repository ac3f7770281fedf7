"""The W&B run of a run directory: found again on resume, flagged when preempted, closed at the end."""

from __future__ import annotations

import re
import signal
from pathlib import Path
from typing import Any

__all__ = ["finish_wandb", "mark_wandb_interrupted", "wandb_run_id"]

_WANDB_RUN = re.compile(r"(?:offline-)?run-(\d{8}_\d{6})-(\w+)")


def _has_wandb_logger(trainer: Any) -> bool:
    from pytorch_lightning.loggers import WandbLogger

    return any(isinstance(logger, WandbLogger) for logger in trainer.loggers)


def wandb_run_id(run_dir: Path) -> str | None:
    """Id of the newest W&B run (online or offline) saved under ``run_dir/wandb``, if any."""
    folder = run_dir / "wandb"
    if not folder.is_dir():
        return None
    runs = sorted((m.group(1), m.group(2)) for p in folder.iterdir() if (m := _WANDB_RUN.fullmatch(p.name)))
    return runs[-1][1] if runs else None


def mark_wandb_interrupted(trainer: Any, signum: int | None) -> None:
    """Flag the live W&B run as preempted after SIGTERM (the usual preemption signal); rank 0 only."""
    if trainer is None or not trainer.is_global_zero or signum != signal.SIGTERM:
        return
    if _has_wandb_logger(trainer):
        import wandb

        if wandb.run is not None:
            wandb.run.mark_preempting()


def finish_wandb(trainer: Any, exit_code: int = 0) -> None:
    """Close the W&B run (marked failed for exit_code != 0) so a later run in this process starts afresh."""
    if trainer is None or not trainer.is_global_zero or not _has_wandb_logger(trainer):
        return
    import wandb

    if wandb.run is not None:
        wandb.finish(exit_code=exit_code)


def drop_anonymous_setting(trainer: Any) -> None:
    """Keep W&B from warning that ``anonymous`` has no effect at every start.

    Lightning's ``WandbLogger`` always passes ``anonymous=None`` to ``wandb.init``, and wandb >= 0.19
    warns about any value given for that retired setting. The arguments live in the private
    ``WandbLogger._wandb_init`` (read when the run starts, at first use of ``logger.experiment``);
    ``tests/test_run_outcome.py`` fails when Lightning renames it.
    """
    from pytorch_lightning.loggers import WandbLogger

    for logger in trainer.loggers:
        if isinstance(logger, WandbLogger) and logger._wandb_init.get("anonymous", 0) is None:
            del logger._wandb_init["anonymous"]
