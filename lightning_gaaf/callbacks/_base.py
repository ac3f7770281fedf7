"""What every monitor shares: its ``state_key``, checkpointed history, the step log and writing ``stats/`` + ``report/``."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar

import pytorch_lightning as pl
from pytorch_lightning.callbacks import Callback
from pytorch_lightning.utilities.rank_zero import rank_zero_warn
from typing_extensions import override

from lightning_gaaf.callbacks._args import check_interval, is_log_step, resolve_interval
from lightning_gaaf.callbacks._loggers import Histogram, log_images, log_summary
from lightning_gaaf.callbacks._steplog import StepLog
from lightning_gaaf.stats import write_stats


def run_directory(trainer: pl.Trainer) -> Path:
    """Where a trainer's monitors write ``stats/`` and ``report/``: ``trainer.log_dir`` (the logger's
    experiment directory, as for Lightning's own files), else ``trainer.default_root_dir``.

    ``trainer.log_dir`` is a collective under DDP (rank 0's path is broadcast): call it on every rank.
    """
    return Path(trainer.log_dir or trainer.default_root_dir)


class Monitor(Callback):
    """Base of the monitors: subclasses set ``statistic`` and implement :meth:`stats`.

    * ``state_key`` is built from the class name and the arguments that change what is recorded, so
      two monitors of one class with different arguments keep separate states in a checkpoint. It
      is built once: Lightning reads it at every hook call (as its profiler's action name), and
      the arguments do not change after construction.
    * Files go to ``<dirpath>/stats/<statistic>.json`` and ``<dirpath>/report/``; ``dirpath`` None
      (default) means :func:`run_directory` of the trainer, resolved at ``setup``.
    * :meth:`save` writes the stats file (rank 0), draws the monitor's figures into ``report/`` and
      logs them; on any exception ending a fit, validate or test run (``on_exception``) the file is
      written with ``"partial": true`` so nothing recorded is lost. A monitor that recorded nothing
      in this process writes nothing: a run that fails before its first step (an unreadable
      checkpoint, a model that does not fit it) leaves the files of earlier fits as they were.
    * The monitors of one trainer log through one :class:`StepLog`, so every logger gets one
      record per step for all of them.
    """

    statistic: ClassVar[str]
    #: Whether :meth:`summary` only repeats scalars already logged (then only W&B's summary gets it).
    summary_is_logged: ClassVar[bool] = False

    def __init__(self) -> None:
        #: Directory holding ``stats/`` and ``report/``; None: :func:`run_directory` of the trainer.
        self.dirpath: str | Path | None = None
        self._run_dir: Path | None = None
        self._step_log: StepLog | None = None
        self._recorded = False

    def _state_key_args(self) -> dict[str, Any]:
        return {}

    @property
    @override
    def state_key(self) -> str:
        key = self.__dict__.get("_state_key")
        if key is None:
            key = self._state_key = self._generate_state_key(**self._state_key_args())
        return key

    @override
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        self._run_dir = Path(self.dirpath) if self.dirpath is not None else run_directory(trainer)

    @property
    def stats_dir(self) -> Path | None:
        """``<run dir>/stats`` (None before ``setup``)."""
        return None if self._run_dir is None else self._run_dir / "stats"

    @property
    def report_dir(self) -> Path | None:
        """``<run dir>/report`` (None before ``setup``)."""
        return None if self._run_dir is None else self._run_dir / "report"

    def mark_recorded(self) -> None:
        """Something new was recorded: :meth:`save` writes the files from now on."""
        self._recorded = True

    # -- logging -----------------------------------------------------------------------------------

    def step_log(self, trainer: pl.Trainer) -> StepLog:
        """The step log shared by the monitors of ``trainer``: held by the first monitor in
        ``trainer.callbacks`` (this one when it is alone), made anew for another trainer."""
        holder = next((c for c in trainer.callbacks if isinstance(c, Monitor)), self)
        log = holder._step_log
        if log is None or not log.belongs_to(trainer):
            log = holder._step_log = StepLog(trainer)
        return log

    def log_step(
        self,
        trainer: pl.Trainer,
        scalars: Mapping[str, float | None],
        step: int,
        histograms: Mapping[str, Histogram] | None = None,
        sums: Mapping[str, tuple[float, float]] | None = None,
    ) -> None:
        """One step's numbers: finite scalars to ``trainer.callback_metrics`` (all ranks) and, with
        ``histograms`` ({key: (counts, edges)} on given edges; empty ones skipped), to every logger
        as part of the step's one record (rank 0; histograms to W&B and TensorBoard only).
        ``sums`` optionally gives ``(sum, sum of squares)`` per histogram key (TensorBoard shows
        them; otherwise they are estimated from the bin centres)."""
        self.step_log(trainer).add(trainer, step, scalars, histograms, sums)

    def flush_logs(self, trainer: pl.Trainer) -> None:
        """Hand the step log's collected record to the loggers."""
        self.step_log(trainer).flush(trainer)

    @override
    def on_save_checkpoint(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        # The record of the last logging step goes to the loggers before the checkpoint exists: a run
        # killed after the checkpoint continues after that step and would never log the record.
        self.flush_logs(trainer)

    # -- results -----------------------------------------------------------------------------------

    def stats(self) -> dict[str, Any]:
        """Everything recorded so far, in the layout of ``stats/<statistic>.json``."""
        raise NotImplementedError

    def summary(self) -> dict[str, float]:
        """Whole-run numbers for the loggers' run summary (``gaaf/<statistic>_mean/<layer>``...)."""
        return {}

    def draw(self, stats: Mapping[str, Any], out: Path) -> dict[str, Path]:
        """Draw the figures of ``stats`` into ``out``; return ``{logger key: png path}``."""
        return {}

    def write(self, trainer: pl.Trainer, partial: bool = False) -> dict[str, Any] | None:
        """Rank 0: write ``stats/<statistic>.json`` if anything was recorded; return what was written."""
        if not trainer.is_global_zero or not self._recorded or self.stats_dir is None:
            return None
        stats = self.stats()
        write_stats(self.stats_dir, self.statistic, stats, partial=partial)
        return stats

    def save(self, trainer: pl.Trainer, partial: bool = False) -> None:
        """Rank 0: the stats file, the figures and (unless ``partial``) the summary and images for the
        loggers; nothing when nothing was recorded."""
        self.flush_logs(trainer)
        stats = self.write(trainer, partial)
        if stats is None:
            return
        self.report_dir.mkdir(parents=True, exist_ok=True)
        images = self.draw(stats, self.report_dir)
        if not partial:
            log_summary(trainer, self.summary(), others=not self.summary_is_logged)
            log_images(trainer, images, trainer.global_step)

    def release(self) -> None:
        """Remove hooks and forget unfinished accumulations (called on exceptions)."""

    @override
    def on_exception(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException
    ) -> None:
        self.release()
        try:
            self.save(trainer, partial=True)
        except Exception as err:  # never hide the exception that ended the run
            rank_zero_warn(f"{type(self).__name__}: could not save the partial statistics ({err})")


class StepHistory(Monitor):
    """A monitor recording per-layer values every ``log_every_n_steps`` optimizer steps.

    It owns the interval (Lightning's meaning: after steps N-1, 2N-1, ...; None: the trainer's
    ``log_every_n_steps``) and the checkpointed ``steps`` / ``history``. A resumed fit continues the
    history. Only a fresh monitor takes the checkpoint's history: ``trainer.test(ckpt_path="best")``
    restores callback states too and must not cut a finished history back to the best epoch.
    """

    def __init__(self, log_every_n_steps: int | None = None) -> None:
        super().__init__()
        self.log_every_n_steps = check_interval(type(self).__name__, "log_every_n_steps", log_every_n_steps)
        self.steps: list[int] = []
        self.history: dict[str, Any] = {}
        self._every = 0

    @override
    def _state_key_args(self) -> dict[str, Any]:
        return {"log_every_n_steps": self.log_every_n_steps}

    @override
    def state_dict(self) -> dict[str, Any]:
        return {"steps": list(self.steps), "history": self.history}

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if not self.steps:
            self.steps = list(state_dict.get("steps", []))
            self.history = state_dict.get("history", {})

    def start_history(
        self, trainer: pl.Trainer, layers: Iterable[str], empty: Callable[[int], Any] | None = None
    ) -> None:
        """At fit start: fix the interval; a layer new to a resumed history gets ``empty(n)`` records
        for the ``n`` steps already recorded (default: NaN for each)."""
        self._every = resolve_interval(self.log_every_n_steps, trainer.log_every_n_steps)
        for name in layers:
            self.history.setdefault(name, (empty or _nans)(len(self.steps)))

    def is_due(self, step: int) -> bool:
        """Whether ``step`` is a logging step not recorded yet (a resumed fit may replay the step it
        was saved at)."""
        return is_log_step(step, self._every) and self.record_step(step)

    def record_step(self, step: int) -> bool:
        """Whether ``step`` is new."""
        return not self.steps or step > self.steps[-1]

    def append(self, step: int, values: Mapping[str, float]) -> None:
        """Record one value per layer at ``step``."""
        self.mark_recorded()
        self.steps.append(step)
        for name, value in values.items():
            self.history[name].append(value)

    @override
    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """The history is complete when training ends: write it (subclasses finish pending work first)."""
        self.save(trainer)

    def history_stats(self) -> dict[str, Any]:
        """The part of ``stats/<statistic>.json`` every step monitor shares."""
        return {
            "log_every_n_steps": self._every,
            "steps": list(self.steps),
            "layers": {name: list(values) for name, values in self.history.items()},
        }


def _nans(n: int) -> list[float]:
    return [math.nan] * n


def finite_means(history: Mapping[str, Sequence[float]]) -> dict[str, float]:
    """Mean of the finite values of each layer's history (NaN where there is none)."""
    out = {}
    for name, values in history.items():
        kept = [v for v in values if v is not None and math.isfinite(v)]
        out[name] = sum(kept) / len(kept) if kept else math.nan
    return out
