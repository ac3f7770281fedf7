"""Test-only pieces for the resume tests: a callback that parks a fit at a chosen step for a real signal.

The gaaf-fit subprocess gets it with ``--trainer.callbacks+=_resume_helpers.PauseAtStep`` and this
folder on ``PYTHONPATH``: after training step ``step`` it writes ``marker`` and waits (at most
``timeout`` seconds) until Lightning has received SIGTERM, so the test's ``os.kill`` lands at a known
batch boundary instead of wherever a timer happens to fall.
"""

from __future__ import annotations

import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
import pytorch_lightning as pl
from typing_extensions import override


class PauseAtStep(pl.Callback):
    """After global step ``step``: write ``marker``, then wait for ``trainer.received_sigterm``."""

    def __init__(self, step: int, marker: str, timeout: float = 120.0) -> None:
        self.step = step
        self.marker = marker
        self.timeout = timeout

    @override
    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        if trainer.global_step != self.step:
            return
        if trainer.is_global_zero:
            Path(self.marker).write_text(str(self.step))
        deadline = time.monotonic() + self.timeout
        while not trainer.received_sigterm and time.monotonic() < deadline:
            time.sleep(0.05)


def pause_at(cwd: Path, step: int) -> tuple[list[str], Path]:
    """gaaf-fit arguments that park the fit after training step ``step``, and the file that says so."""
    marker = cwd / f"paused-at-{step}"
    args = ["--trainer.callbacks+=_resume_helpers.PauseAtStep"]
    args += [
        "--trainer.callbacks.init_args.step",
        str(step),
        "--trainer.callbacks.init_args.marker",
        str(marker),
    ]
    return args, marker


def wait_until_paused(proc: subprocess.Popen, marker: Path, step: int, timeout: float = 600) -> None:
    """Wait for ``marker``; fail the test (and kill the fit) if the fit ends or times out first."""
    deadline = time.monotonic() + timeout
    while not marker.exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            _, err = proc.communicate()
            pytest.fail(f"the fit never reached step {step} (exit {proc.returncode}):\n{(err or '')[-3000:]}")
        time.sleep(0.1)
