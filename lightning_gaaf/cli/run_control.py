"""How a gaaf-fit run stops and continues: ``--ckpt_path last|best|PATH``, signals, exit codes, W&B.

* :func:`resolve_checkpoint` turns ``last`` / ``best`` / a path into a checkpoint file and the run
  directory it belongs to, so that a resumed run continues in its own directory (no new version).
* :func:`wandb_run_id` finds the W&B run of a run directory, so that the resumed fit logs into the same
  W&B run (offline: the same run id).
* :class:`StopSignals` records SIGTERM / SIGINT during a fit and turns the first SIGINT (Ctrl-C) into
  the same graceful stop as SIGTERM: Lightning finishes the current batch, the monitors and
  :class:`~lightning_gaaf.cli.checkpoints.LastCheckpoint` save what they have, and the program exits
  with :func:`exit_code` (128 + signal number: 143 for SIGTERM, 130 for SIGINT). A second SIGINT stops
  at once. Lightning's SLURM handlers (SIGUSR1 requeue) are left alone.
* :func:`mark_wandb_interrupted` flags the W&B run as preempted; closing it with a non-zero exit code
  marks it failed.
"""

from __future__ import annotations

import re
import signal
import sys
from pathlib import Path
from types import FrameType, TracebackType
from typing import Any

import torch
from pytorch_lightning import Trainer
from pytorch_lightning.callbacks import ModelCheckpoint
from pytorch_lightning.loggers import WandbLogger
from pytorch_lightning.utilities.exceptions import SIGTERMException

from lightning_gaaf.cli.checkpoints import LAST_NAME

__all__ = [
    "CheckpointNotFoundError",
    "StopSignals",
    "exit_code",
    "report_interruption",
    "mark_wandb_interrupted",
    "resolve_checkpoint",
    "run_dir_of_checkpoint",
    "wandb_run_id",
]

CHECKPOINTS = "checkpoints"
RUN_CONFIG = "config.yaml"
_LAST_FILE = f"{LAST_NAME}{ModelCheckpoint.FILE_EXTENSION}"
_WANDB_RUN = re.compile(r"(?:offline-)?run-(\d{8}_\d{6})-(\w+)")


class CheckpointNotFoundError(ValueError):
    """``--ckpt_path`` names no checkpoint (missing file, no run with a ``last.ckpt``, no best recorded)."""


# --------------------------------------------------------------------------- checkpoint resolution
def run_dir_of_checkpoint(path: Path) -> Path | None:
    """The run directory holding ``path`` (``<run>/checkpoints/<file>`` next to ``<run>/config.yaml``)."""
    parent = path.absolute().parent
    if parent.name == CHECKPOINTS and (parent.parent / RUN_CONFIG).is_file():
        return parent.parent
    return None


def _versions(runs_root: Path) -> list[Path]:
    if not runs_root.is_dir():
        return []
    found = [
        (int(m.group(1)), p) for p in runs_root.iterdir() if (m := re.fullmatch(r"version_(\d+)", p.name))
    ]
    return [p for _, p in sorted(found, reverse=True)]


def _latest_run(runs_root: Path) -> Path:
    for run in _versions(runs_root):
        if (run / CHECKPOINTS / _LAST_FILE).is_file():
            return run
    raise CheckpointNotFoundError(
        f"ckpt_path: no run under {runs_root} has {CHECKPOINTS}/{_LAST_FILE}; pass --run_dir RUN or a checkpoint path"
    )


def _best_of(last: Path) -> Path:
    """The best checkpoint recorded by the monitored ``ModelCheckpoint`` whose state ``last`` holds."""
    state = torch.load(last, map_location="cpu", weights_only=False).get("callbacks", {})
    for key, value in state.items():
        if key.startswith(ModelCheckpoint.__name__) and value.get("monitor") and value.get("best_model_path"):
            best = Path(value["best_model_path"])
            # A run directory that moved: the file name is still right, next to last.ckpt.
            for candidate in (best, last.parent / best.name):
                if candidate.is_file():
                    return candidate
            raise CheckpointNotFoundError(f"ckpt_path=best: {best} (recorded in {last}) does not exist")
    raise CheckpointNotFoundError(
        f"ckpt_path=best: {last} records no best checkpoint of a monitored ModelCheckpoint"
    )


def resolve_checkpoint(value: str, run_dir: Path | None, runs_root: Path) -> tuple[Path, Path | None]:
    """``(checkpoint file, run directory to continue in)`` for ``--ckpt_path value``.

    Args:
        value: ``"last"`` (the run's ``checkpoints/last.ckpt``), ``"best"`` (the best checkpoint that the
            run's monitored ``ModelCheckpoint`` recorded), or a checkpoint file path.
        run_dir: the run directory if the user chose one (``--run_dir``); ``last`` / ``best`` refer to it.
        runs_root: ``runs/<config name>``: without ``run_dir``, ``last`` / ``best`` refer to its newest
            ``version_N`` that has a ``last.ckpt``.

    Returns the checkpoint and the run directory it lives in (``run_dir`` if given, else the directory of
    the checkpoint when it is ``<run>/checkpoints/<file>``, else ``None``: a new run directory).
    """
    if value in ("last", "best"):
        run = run_dir if run_dir is not None else _latest_run(runs_root)
        last = run / CHECKPOINTS / _LAST_FILE
        if not last.is_file():
            raise CheckpointNotFoundError(f"ckpt_path={value}: {last.absolute()} does not exist")
        ckpt = last if value == "last" else _best_of(last)
        return ckpt.absolute(), run.absolute()
    path = Path(value).expanduser()
    if not path.is_file():
        raise CheckpointNotFoundError(
            f"ckpt_path: {path.absolute()} is not a file (expected last, best or a path)"
        )
    return path.absolute(), (run_dir.absolute() if run_dir is not None else run_dir_of_checkpoint(path))


# --------------------------------------------------------------------------- W&B
def wandb_run_id(run_dir: Path) -> str | None:
    """Id of the newest W&B run (online or offline) saved under ``run_dir/wandb``, if any."""
    folder = run_dir / "wandb"
    if not folder.is_dir():
        return None
    runs = sorted((m.group(1), m.group(2)) for p in folder.iterdir() if (m := _WANDB_RUN.fullmatch(p.name)))
    return runs[-1][1] if runs else None


def mark_wandb_interrupted(trainer: Trainer | None, signum: int | None) -> None:
    """Flag the live W&B run as preempted after SIGTERM (the usual preemption signal); rank 0 only."""
    if trainer is None or not trainer.is_global_zero or signum != signal.SIGTERM:
        return
    if any(isinstance(logger, WandbLogger) for logger in trainer.loggers):
        import wandb

        if wandb.run is not None:
            wandb.run.mark_preempting()


# --------------------------------------------------------------------------- signals and exit codes
class StopSignals:
    """Context manager: record SIGTERM / SIGINT; inside Lightning's fit, SIGINT stops like SIGTERM.

    Lightning installs its SIGTERM handler when ``fit`` / ``test`` start and calls the handler found
    before it too, so the recorder installed here still sees SIGTERM; Lightning's handler sets the flag
    its loops check between batches (and under DDP tells the other ranks). The first SIGINT is passed to
    that handler as a SIGTERM, so it stops just as gracefully (under DDP the launcher forwards SIGTERM to
    the worker processes). Outside Lightning's run, and for a second SIGINT, Python's
    ``KeyboardInterrupt`` is raised as usual; SIGTERM outside the run raises ``SystemExit(143)``.

    ``received`` is the first signal recorded (``None`` without one). The previous handlers are put back
    on exit.
    """

    def __init__(self) -> None:
        self.received: int | None = None
        self._sigints = 0
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> StopSignals:
        for signum, handler in ((signal.SIGTERM, self._on_sigterm), (signal.SIGINT, self._on_sigint)):
            self._previous[signum] = signal.getsignal(signum)
            signal.signal(signum, handler)
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous = {}

    def _record(self, signum: int) -> None:
        if self.received is None:
            self.received = signum

    def _on_sigterm(self, signum: int, frame: FrameType | None) -> None:
        self._record(signum)
        if signal.getsignal(signal.SIGTERM) == self._on_sigterm:  # not inside Lightning's fit / test
            raise SystemExit(128 + signal.SIGTERM)

    def _on_sigint(self, signum: int, frame: FrameType | None) -> None:
        self._record(signum)
        self._sigints += 1
        lightning = signal.getsignal(signal.SIGTERM)
        if self._sigints > 1 or lightning == self._on_sigterm or not callable(lightning):
            raise KeyboardInterrupt
        lightning(signal.SIGTERM, frame)


def report_interruption(prog: str, code: int, trainer: Trainer | None) -> None:
    """Print ``<prog>: interrupted by SIGTERM (exit 143); continue with ...`` on stderr (rank 0 only).

    The hint to continue appears when the run has a ``last.ckpt``.
    """
    if trainer is not None and not trainer.is_global_zero:
        return
    name = signal.Signals(code - 128).name if 128 < code < 128 + signal.NSIG else f"signal {code - 128}"
    message = f"{prog}: interrupted by {name} (exit {code})"
    if trainer is not None:
        run_dir = Path(trainer.default_root_dir).absolute()
        if (run_dir / CHECKPOINTS / _LAST_FILE).is_file():
            message += f"; continue with --ckpt_path last --run_dir {run_dir}"
    sys.stderr.write(message + "\n")
    sys.stderr.flush()


def exit_code(exception: BaseException, received: int | None) -> int | None:
    """Exit status for an exception that ended the run because of a signal, else ``None``.

    128 + the signal number (143 SIGTERM, 130 SIGINT), the shells' convention for a process stopped by a
    signal. Lightning raises ``SIGTERMException`` (a ``SystemExit`` with status 0) after a graceful stop,
    and ``SystemExit(1)`` after handling a ``KeyboardInterrupt``.
    """
    if isinstance(exception, SIGTERMException):
        return 128 + (received if received is not None else signal.SIGTERM)
    if received is not None and isinstance(exception, (KeyboardInterrupt, SystemExit)):
        return 128 + received
    return None
