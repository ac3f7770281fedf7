"""What a run returns: how it ended, where it lives, its best checkpoint and its epoch records."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["DIVERGED_EXIT_CODE", "RunResult"]

#: Exit status of a run whose loss or a logged metric became NaN or infinite (the fit itself finished).
DIVERGED_EXIT_CODE = 3


@dataclass
class RunResult:
    """The outcome of :func:`~lightning_gaaf.run.fit_and_test`, read directly by the programs.

    Attributes:
        exit_code: the process status the run stands for: 0 finished (also when pruned), 3 finished but
            diverged, 128 + signal number when a signal stopped it (143 SIGTERM, 130 SIGINT).
        run_dir: the run directory (``config.yaml``, ``checkpoints/``, ``stats/``).
        best_checkpoint: the best checkpoint the run's ``ModelCheckpoint`` kept, if any.
        last_checkpoint: ``checkpoints/last.ckpt`` if written (the state to continue from).
        epochs: one record per finished epoch (``epoch``, ``step`` and every logged scalar).
        test: the test metrics (empty when the run was not tested).
        pruned_at: the epoch after which a pruning callback stopped the run, else ``None``.
        signal: the signal number that stopped the run, else ``None``.
        diverged: the first non-finite value the run logged (``{"step", "key", "value"}``), else
            ``None``; such a run ends with exit code :data:`DIVERGED_EXIT_CODE`.
    """

    exit_code: int
    run_dir: Path
    best_checkpoint: Path | None = None
    last_checkpoint: Path | None = None
    epochs: list[dict[str, Any]] = field(default_factory=list)
    test: dict[str, float] = field(default_factory=dict)
    pruned_at: int | None = None
    signal: int | None = None
    diverged: dict[str, Any] | None = None

    @property
    def interrupted(self) -> bool:
        """Whether a signal stopped the run before it finished."""
        return self.signal is not None

    @property
    def pruned(self) -> bool:
        """Whether a pruning callback stopped the run early."""
        return self.pruned_at is not None

    def best_epoch(self, metric: str, direction: str = "maximize") -> dict[str, Any] | None:
        """The epoch record with the best value of ``metric``, ``None`` if no epoch has one."""
        scored = [e for e in self.epochs if e.get(metric) is not None]
        if not scored:
            return None
        pick = max if direction == "maximize" else min
        return pick(scored, key=lambda e: e[metric])
