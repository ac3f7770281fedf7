"""``gaaf-fit``: train one configured experiment, then test its best checkpoint.

``gaaf-fit --config mnist_gaaf`` fits and tests; every LightningCLI override works
(``--trainer.max_epochs 3``, ``--model.optimizer.lr 0.1``, ``--print_config``); ``--list-configs``
lists the bundled configs. What a run is (its directory, saved config, checkpoints, resume, signals)
is :mod:`lightning_gaaf.run`; this module parses the command line, calls
:func:`~lightning_gaaf.run.fit_and_test` and prints the result:

* a user mistake (bad key or value, missing dataset, unusable checkpoint, unavailable accelerator) is
  one line ``gaaf-fit: error: ...`` with exit status 2; any other error keeps its traceback;
* SIGTERM / Ctrl-C stop after the current batch with exit status 143 / 130 and print the command that
  continues the run (docs/resume.md);
* the last lines are the run directory and the best checkpoint.

Listing configs and naming a config that does not exist import neither torch nor Lightning.
"""

from __future__ import annotations

import logging
import shlex
import signal
import sys
import warnings
from collections.abc import Sequence
from typing import TYPE_CHECKING, NoReturn

from lightning_gaaf.cli.threads import start_threads
from lightning_gaaf.run.bundled import format_config_list
from lightning_gaaf.run.composition import UsageError, condense, expand_config_args
from lightning_gaaf.run.directory import RUN_CONFIG

if TYPE_CHECKING:
    from lightning_gaaf.run.result import RunResult

PROG = "gaaf-fit"
LIST_CONFIGS_FLAG = "--list-configs"


def fail(message: str) -> NoReturn:
    """Print ``gaaf-fit: error: <message>`` on one line and exit with status 2."""
    sys.stderr.write(f"{PROG}: error: {condense(message)}\n")
    sys.stderr.flush()
    raise SystemExit(2)


def resume_command(result: RunResult) -> str:
    """The command that continues an interrupted run, ready to paste."""
    run_dir = str(result.run_dir)
    config = str(result.run_dir / RUN_CONFIG)
    return shlex.join([PROG, "--config", config, "--ckpt_path", "last", "--run_dir", run_dir])


def _is_rank_zero() -> bool:
    from pytorch_lightning.utilities.rank_zero import rank_zero_only

    return getattr(rank_zero_only, "rank", 0) == 0


def report(result: RunResult) -> None:
    """Print how the run ended: an interruption on stderr, then the run directory and best checkpoint."""
    if not _is_rank_zero():
        return
    if result.signal is not None:
        name = signal.Signals(result.signal).name
        message = f"{PROG}: interrupted by {name} (exit {result.exit_code})"
        if result.last_checkpoint is not None:
            message += f"; continue with: {resume_command(result)}"
        sys.stderr.write(message + "\n")
        sys.stderr.flush()
    if result.diverged is not None:
        d = result.diverged
        sys.stderr.write(
            f"{PROG}: the run diverged: {d['key']} was {d['value']} at step {d['step']}"
            f" (exit {result.exit_code}); try a smaller learning rate\n"
        )
        sys.stderr.flush()
    print(f"{PROG}: run directory: {result.run_dir}")
    if result.best_checkpoint is not None:
        print(f"{PROG}: best checkpoint: {result.best_checkpoint}")
    sys.stdout.flush()


class _StartupNoise(logging.Filter):
    """Lightning's advertisement for another logger package: not about this run."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "litlogger" not in record.getMessage()


_STARTUP_NOISE = _StartupNoise()


def quiet_startup_noise() -> None:
    """Hide messages that say nothing about the run (an advertisement, a library's own deprecation)."""
    logging.getLogger("pytorch_lightning.utilities.rank_zero").addFilter(_STARTUP_NOISE)  # once per logger
    warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\)` is deprecated")


def main(args: Sequence[str] | None = None) -> None:
    """Parse ``args`` (default ``sys.argv[1:]``), fit, test the best checkpoint, print the run directory.

    Under ``--trainer.strategy ddp`` Lightning restarts this program once per extra device with the
    original ``sys.argv``, so multi-process runs must be started as a program, not via ``main(args)``.
    """
    argv = list(sys.argv[1:] if args is None else args)
    if LIST_CONFIGS_FLAG in argv:
        print(format_config_list())
        raise SystemExit(0)
    try:
        expand_config_args(argv)  # a config that does not exist: one line, before any heavy import
    except UsageError as exc:
        fail(str(exc))
    policy = start_threads(PROG)  # before torch is imported: the OpenMP runtime reads it once
    from lightning_gaaf.run import fit_and_test

    if _is_rank_zero() and not any(a.startswith("--print_config") for a in argv):  # that prints YAML only
        print(f"{PROG}: {policy.describe()}", flush=True)
    quiet_startup_noise()
    try:
        result = fit_and_test(argv)
    except UsageError as exc:
        fail(str(exc))
    report(result)
    if result.exit_code:
        raise SystemExit(result.exit_code)


if __name__ == "__main__":
    main()
