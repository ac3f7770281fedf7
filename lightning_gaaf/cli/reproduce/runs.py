"""The runs of a reproduction: :func:`~lightning_gaaf.run.fit_and_test` per run, its output in a log.

One job at a time runs in this process; ``--jobs N`` runs N at once, each in a worker process of a
pool (a fit owns its process: signal handlers, the W&B run, the standard streams). Either way the
caller gets each run's returned :class:`~lightning_gaaf.run.RunResult`.
"""

from __future__ import annotations

import multiprocessing
import os
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lightning_gaaf.cli.logfile import output_to

if TYPE_CHECKING:
    from lightning_gaaf.run.result import RunResult

__all__ = ["Job", "Outcome", "run_job", "run_jobs"]


@dataclass(frozen=True)
class Job:
    """One run: a label to report it by, its ``gaaf-fit`` arguments and its log file."""

    label: Any
    args: tuple[str, ...]
    log: Path


@dataclass
class Outcome:
    """How one job ended: its result, or the one-line error / crash that stopped it."""

    job: Job
    result: RunResult | None
    error: str | None
    seconds: float

    @property
    def ok(self) -> bool:
        return self.result is not None and self.result.exit_code == 0


def run_job(job: Job, env: dict[str, str]) -> Outcome:
    """Run one job in this process with ``env`` set (a pool worker's, or the caller's)."""
    import traceback

    os.environ.update(env)
    if "WANDB_SERVICE" not in env:  # a W&B service of an earlier run in this process is not this run's
        os.environ.pop("WANDB_SERVICE", None)
    from lightning_gaaf.run import fit_and_test
    from lightning_gaaf.run.composition import UsageError

    started = time.time()
    job.log.parent.mkdir(parents=True, exist_ok=True)
    with output_to(job.log):
        try:
            result = fit_and_test(list(job.args))
        except UsageError as exc:
            print(f"gaaf-fit: error: {exc}")
            return Outcome(job, None, str(exc), time.time() - started)
        except Exception as exc:  # a crash of one run: its traceback in its log, the others go on
            traceback.print_exc()
            return Outcome(job, None, f"{type(exc).__name__}: {exc}", time.time() - started)
    return Outcome(job, result, None, time.time() - started)


def run_jobs(jobs: Sequence[Job], n_jobs: int, env: dict[str, str]) -> Iterator[Outcome]:
    """Run ``jobs`` (``n_jobs`` at once) with ``env`` set; yields each outcome as it is known, in order."""
    if n_jobs <= 1 or len(jobs) <= 1:
        for job in jobs:
            outcome = run_job(job, env)
            yield outcome
            if outcome.result is not None and outcome.result.signal is not None:
                return  # stopped by a signal: the reproduction stops too
        return
    with ProcessPoolExecutor(max_workers=n_jobs, mp_context=multiprocessing.get_context("spawn")) as pool:
        for outcome in pool.map(run_job, jobs, [env] * len(jobs)):
            yield outcome
