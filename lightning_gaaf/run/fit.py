"""One run from start to result: build it from ``gaaf-fit`` arguments, fit, test the best checkpoint.

:func:`fit_and_test` is what every program calls (``gaaf-fit``, each ``gaaf-tune`` trial, each
``gaaf-reproduce`` run), in-process, and it returns a :class:`~lightning_gaaf.run.result.RunResult`.
User mistakes (bad key or value, missing dataset, unusable checkpoint, unavailable accelerator) raise
:class:`~lightning_gaaf.run.composition.UsageError` with a one-line message; anything else raised
inside training is a bug and keeps its traceback. A run that fails before its first training step
removes what it made.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pytorch_lightning import Callback, Trainer
from pytorch_lightning.accelerators import CPUAccelerator
from pytorch_lightning.callbacks import ModelCheckpoint
from pytorch_lightning.utilities.exceptions import MisconfigurationException
from pytorch_lightning.utilities.model_helpers import is_overridden
from pytorch_lightning.utilities.rank_zero import rank_zero_info, rank_zero_warn

from lightning_gaaf.callbacks import MetricsMonitor
from lightning_gaaf.datamodules import DatasetCorruptedError, DatasetNotFoundError
from lightning_gaaf.run.builder import GaafCLI
from lightning_gaaf.run.checkpoint_io import CheckpointWriteError
from lightning_gaaf.run.checkpoints import LastCheckpoint
from lightning_gaaf.run.composition import UsageError
from lightning_gaaf.run.directory import RUN_DIR_ENV
from lightning_gaaf.run.pruning import TrialPruning
from lightning_gaaf.run.result import DIVERGED_EXIT_CODE, RunResult
from lightning_gaaf.run.resume import UnusableCheckpointError, check_checkpoint
from lightning_gaaf.run.signals import StopSignals, exit_code
from lightning_gaaf.run.threads import oversubscription, usable_cores
from lightning_gaaf.run.wandb_run import finish_wandb, mark_wandb_interrupted
from lightning_gaaf.stats import StatsWriteError

__all__ = ["fit_and_test"]

#: Mistakes in the command line, the config or the environment, found while the run is built.
SETUP_ERRORS = (
    UsageError,
    ValueError,
    MisconfigurationException,
    DatasetNotFoundError,
    DatasetCorruptedError,
)
#: The same kind of mistake found once training runs (data read in ``prepare_data``/``setup``, a model
#: without ``training_step``). Anything else raised inside training is a bug and keeps its traceback.
#: A statistics file or checkpoint that cannot be written (a full disk) is reported the same way: one
#: line, the previous file kept.
RUN_ERRORS = (
    MisconfigurationException,
    DatasetNotFoundError,
    DatasetCorruptedError,
    StatsWriteError,
    CheckpointWriteError,
)


def _test(trainer: Trainer, model: Any, data: Any) -> None:
    """Test the best checkpoint once, where the model has a ``test_step`` and the data a test split."""
    if not is_overridden("test_step", model) or data is None or not is_overridden("test_dataloader", data):
        rank_zero_info("no test: the model has no test_step or the data no test_dataloader")
        return
    ckpt = trainer.checkpoint_callback
    # The file itself, not "best": Lightning would warn that several ModelCheckpoints exist (LastCheckpoint).
    best = ckpt.best_model_path if isinstance(ckpt, ModelCheckpoint) and ckpt.best_model_path else None
    trainer.test(model, datamodule=data, ckpt_path=best)


def _warn_oversubscription(trainer: Trainer) -> None:
    """Warn (rank 0) when a CPU run starts more processes x threads than the cores it may use."""
    if not isinstance(trainer.accelerator, CPUAccelerator) or trainer.num_devices < 2:
        return
    cores = usable_cores()
    processes = trainer.num_devices
    # Lightning gives each CPU process cores // processes threads unless OMP_NUM_THREADS is set.
    threads = int(os.environ.get("OMP_NUM_THREADS") or max(1, (os.cpu_count() or 1) // processes))
    message = oversubscription(processes, threads, cores)
    if message is not None:
        rank_zero_warn(message)


def _result(cli: GaafCLI, code: int, signum: int | None = None) -> RunResult:
    trainer = cli.trainer
    best = getattr(trainer.checkpoint_callback, "best_model_path", "") or None
    last = next((c.path for c in trainer.callbacks if isinstance(c, LastCheckpoint)), None)
    history = next((c for c in trainer.callbacks if isinstance(c, MetricsMonitor)), None)
    pruning = next((c for c in trainer.callbacks if isinstance(c, TrialPruning)), None)
    diverged = history.diverged if history is not None else None
    if code == 0 and diverged is not None:
        code = DIVERGED_EXIT_CODE
    return RunResult(
        exit_code=code,
        run_dir=Path(cli.run_dir or trainer.default_root_dir).absolute(),
        best_checkpoint=Path(best).absolute() if best else None,
        last_checkpoint=last.absolute() if last is not None and last.is_file() else None,
        epochs=list(history.epochs) if history is not None else [],
        test=dict(history.test) if history is not None else {},
        pruned_at=pruning.pruned_at if pruning is not None else None,
        signal=signum,
        diverged=diverged,
    )


def fit_and_test(
    args: Sequence[str] | None = None, *, callbacks: Sequence[Callback] = (), test: bool = True
) -> RunResult:
    """Fit the run that ``gaaf-fit`` ``args`` describe (default ``sys.argv[1:]``), test its best checkpoint.

    Args:
        args: ``gaaf-fit`` arguments: ``--config`` files or bundled names and LightningCLI overrides
            (``--ckpt_path`` continues a run, ``--run_dir`` places it).
        callbacks: added to the Trainer, not to the saved config (a tuning trial's pruning callback).
        test: test the best checkpoint after the fit (tuning trials never look at the test set).

    Returns:
        The :class:`RunResult`; a run stopped by SIGTERM / Ctrl-C returns with ``exit_code`` 143 / 130.

    Raises:
        UsageError: a mistake in the arguments, the config, the data or the checkpoint (one line).

    Under ``--trainer.strategy ddp`` Lightning restarts the program once per extra device with the
    original ``sys.argv``, so multi-process runs must be started as a program (``gaaf-fit``).
    """
    owns_run_dir_env = RUN_DIR_ENV not in os.environ
    signals = StopSignals()
    try:
        try:
            cli = GaafCLI(args=args, extra_callbacks=callbacks)
        except SETUP_ERRORS as exc:
            raise UsageError(str(exc)) from None
        if cli.config.get("ckpt_path"):
            try:
                check_checkpoint(Path(cli.config["ckpt_path"]), cli.model)
            except UnusableCheckpointError as exc:
                if cli.run_directory is not None:
                    cli.run_directory.discard()  # only what this process made: nothing of an old run
                raise UsageError(str(exc)) from None
        return _fit(cli, signals, owns_run_dir_env, test)
    finally:
        if owns_run_dir_env:
            os.environ.pop(RUN_DIR_ENV, None)


def _fit(cli: GaafCLI, signals: StopSignals, owns_run_dir_env: bool, test: bool) -> RunResult:
    trainer, model, data = cli.trainer, cli.model, cli.datamodule
    if cli.run_dir is not None:  # DDP worker processes inherit the environment at launch
        os.environ[RUN_DIR_ENV] = str(cli.run_dir)
    _warn_oversubscription(trainer)
    try:
        with signals:
            trainer.fit(model, datamodule=data, ckpt_path=cli.config.get("ckpt_path"))
            if test:
                _test(trainer, model, data)
    except (KeyboardInterrupt, SystemExit) as exc:
        code = exit_code(exc, signals.received)
        if code is None:
            raise
        mark_wandb_interrupted(trainer, signals.received)
        finish_wandb(trainer, exit_code=code)
        # A worker process that rank 0 started for DDP: rank 0 reports the status. A non-zero exit
        # here makes Lightning's launcher SIGKILL rank 0 (and the rest) before its graceful stop.
        return _result(cli, code if owns_run_dir_env else 0, signals.received)
    except BaseException as exc:
        user_error = isinstance(exc, RUN_ERRORS)
        finish_wandb(trainer, exit_code=2 if user_error else 1)
        if trainer.global_step == 0 and cli.run_directory is not None and cli.run_directory.is_new:
            cli.run_directory.discard()  # failed before its first step: nothing worth keeping
        if user_error:
            raise UsageError(str(exc)) from None
        raise
    finish_wandb(trainer)
    return _result(cli, 0)
