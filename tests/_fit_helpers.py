"""gaaf-fit inside the test process: the library entry point instead of a new Python process.

A new process pays 20-40 s of imports and W&B start-up before it trains a few batches; this runs
the same code in the test process, with the working directory, environment and output of a program
run. Only tests of the process boundary itself (signals, DDP launch, the installed wheel) need
:func:`_cli_helpers.run_fit`.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import sys
import traceback
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass
class FitResult:
    """What a ``gaaf-fit`` process would have left: its exit status and its two output streams."""

    returncode: int
    stdout: str
    stderr: str


def run_entry_point(args: Sequence[str]) -> None:
    """The library function behind ``gaaf-fit``: the single line to change when it moves."""
    from lightning_gaaf.cli.fit import main

    main(list(args))


@contextlib.contextmanager
def program_context(cwd: Path, env: dict[str, str]) -> Iterator[None]:
    """Run in ``cwd`` with exactly ``env``; the previous directory and environment come back afterwards.

    The whole environment is restored, not only ``env``'s keys: Lightning's ``seed_everything`` and
    W&B set variables of their own that must not leak into later tests.
    """
    saved_env, saved_cwd = dict(os.environ), Path.cwd()
    os.environ.clear()
    os.environ.update(env)
    os.chdir(cwd)
    try:
        yield
    finally:
        os.chdir(saved_cwd)
        os.environ.clear()
        os.environ.update(saved_env)


#: Loggers that Lightning gives a stderr handler of their own when it is imported in a program (not
#: under pytest, whose root handlers make Lightning propagate to them instead).
LIGHTNING_LOGGERS = ("pytorch_lightning", "lightning_fabric")


@contextlib.contextmanager
def _captured(out: io.StringIO, err: io.StringIO) -> Iterator[None]:
    """``print`` to ``out``; warnings, Lightning's messages and every logging stream handler to ``err``."""
    handlers = [
        handler
        for logger in [logging.getLogger(), *logging.Logger.manager.loggerDict.values()]
        if isinstance(logger, logging.Logger)
        for handler in logger.handlers
        if type(handler) is logging.StreamHandler
    ]
    streams = [_swap_stream(handler, err) for handler in handlers]
    added = []
    for name in LIGHTNING_LOGGERS:
        logger = logging.getLogger(name)
        if not any(type(handler) is logging.StreamHandler for handler in logger.handlers):
            added.append((logger, logging.StreamHandler(err)))
            logger.addHandler(added[-1][1])
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            yield
    finally:
        for logger, handler in added:
            logger.removeHandler(handler)
        for handler, stream in zip(handlers, streams, strict=True):
            _swap_stream(handler, stream)


def _swap_stream(handler: logging.StreamHandler, stream: Any) -> Any:
    """``handler.setStream(stream)``, also when its stream was closed: a library that made its handler
    while an earlier test captured stderr (capsys) keeps that capture's stream, closed since."""
    if getattr(handler.stream, "closed", False):
        old, handler.stream = handler.stream, stream
        return old
    return handler.setStream(stream)


def fit_in_process(*args: str, cwd: Path, env: dict[str, str], wandb: bool = False) -> FitResult:
    """``gaaf-fit ARGS`` as a program run in ``cwd`` with ``env`` would end, without a new process.

    W&B is disabled unless ``wandb`` (a test that reads the W&B run): its service start costs seconds.
    """
    env = {**env, "WANDB_MODE": env.get("WANDB_MODE", "offline") if wandb else "disabled"}
    return run_program(run_entry_point, args, cwd, env)


def run_program(
    main: Callable[[list[str]], Any], argv: Sequence[str], cwd: Path, env: dict[str, str]
) -> FitResult:
    """``main(argv)`` as the program run in ``cwd`` with ``env`` would end: exit status and output.

    Exit status as the interpreter gives it: ``SystemExit``'s code, 1 and the traceback on stderr for
    any other exception.
    """
    out, err = io.StringIO(), io.StringIO()
    # A program starts without W&B settings: an earlier test's W&B object (a logger built with
    # WANDB_MODE=disabled, say) leaves wandb's process-wide settings behind, which this run would take.
    stop_wandb_service()
    with program_context(cwd, env), _captured(out, err):
        try:
            main(list(argv))
            code = 0
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
            if exc.code is not None and not isinstance(exc.code, int):
                print(exc.code, file=sys.stderr)
        except Exception:
            traceback.print_exc()
            code = 1
        finally:
            stop_wandb_service()  # with or without W&B: a disabled run's settings stay for the next one too
    return FitResult(code, out.getvalue(), err.getvalue())


def stop_wandb_service() -> None:
    """End this process's W&B service and settings, as a program's exit would.

    The service is a process of its own, started in the working directory of the first run; left
    running, it takes the next in-process run too and does not write that run's offline files where
    the run's (relative) directory says, so ``wandb leet inspect`` finds no run there.
    """
    if "wandb" in sys.modules:
        import wandb

        wandb.teardown()


#: Every Lightning logger gaaf-fit is tested with: W&B (the default), CSV, TensorBoard, MLflow.
ALL_LOGGERS_YAML = """
trainer:
  logger:
    - class_path: pytorch_lightning.loggers.WandbLogger
      init_args: {project: lightning-gaaf, offline: true}
    - class_path: pytorch_lightning.loggers.CSVLogger
      init_args: {save_dir: csv}
    - class_path: pytorch_lightning.loggers.TensorBoardLogger
      init_args: {save_dir: tb}
    - class_path: pytorch_lightning.loggers.MLFlowLogger
      init_args: {experiment_name: gaaf, tracking_uri: "sqlite:///mlflow.db"}
"""


@dataclass
class ReferenceRun:
    """The shared tiny gaaf-fit run: where it ran, its run directory and what it printed."""

    cwd: Path
    run_dir: Path
    result: FitResult
    args: list[str]


def reference_run(cwd: Path, data_dir: Path, configs: Path, fit_args: Sequence[str]) -> ReferenceRun:
    """``gaaf-fit --config mnist_gaaf`` (GAAF, the monitors of the paper's configs) with all four
    loggers and ``fit_args``, in this process: one run that the CLI, entry-point, logger and resume
    tests can all read instead of each starting its own.

    The loggers come in through a config ``mnist_gaaf.yaml`` of its own whose ``defaults`` is the
    bundled one, so the run keeps the experiment's name (``runs/mnist_gaaf/version_0``).
    """
    from _cli_helpers import fit_env

    config = cwd / "configs" / "mnist_gaaf.yaml"
    config.parent.mkdir(parents=True, exist_ok=True)
    config.write_text(f"defaults: {configs / 'mnist_gaaf.yaml'}\n{ALL_LOGGERS_YAML}")
    args = ["--config", str(config), *fit_args]
    result = fit_in_process(*args, cwd=cwd, env=fit_env(data_dir), wandb=True)
    assert result.returncode == 0, result.stderr[-3000:]
    return ReferenceRun(cwd, cwd / "runs" / "mnist_gaaf" / "version_0", result, args)
