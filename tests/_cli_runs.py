"""Session runs of the gaaf-fit tests that need a real program: DDP starts one process per device.

Lightning's DDP launcher restarts the program with its original ``sys.argv``, so a multi-process run
cannot be ``main(args)`` in the test process. One two-rank run serves every DDP assertion.
"""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import pytest
from _cli_helpers import CONFIGS, fit_env, run_fit, tiny, wandb_records


@dataclass
class DDPRun:
    """Where the two-rank run ran, its fresh native-kernel cache and the finished process."""

    cwd: Path
    cache: Path
    result: subprocess.CompletedProcess

    @cached_property
    def run_dir(self) -> Path:
        """The one run directory (the DDP tests check that there is only one)."""
        return self.cwd / "runs" / "mnist_gaaf" / "version_0"

    @cached_property
    def wandb_records(self) -> list[dict[str, Any]]:
        """The records of the run's offline W&B run, read once for every test."""
        return wandb_records(self.run_dir)


@pytest.fixture(scope="session", name="ddp_run")
def ddp_run_fixture(tmp_path_factory: pytest.TempPathFactory, mnist_dir: Path) -> DDPRun:
    """``gaaf-fit --config mnist_gaaf`` on 2 CPU processes (gloo), GAAF on the native kernels, whose
    cache starts empty so that both ranks build it at once; a few steps of the synthetic MNIST."""
    cwd = tmp_path_factory.mktemp("ddp_run")
    cache = cwd / "kernel-cache"
    args = ["--config", str(CONFIGS / "mnist_gaaf.yaml"), *tiny(train_batches=2)]
    args += ["--trainer.accelerator", "cpu", "--trainer.devices", "2", "--trainer.strategy", "ddp"]
    env = fit_env(mnist_dir, GAAF_BACKEND="native", GAAF_CACHE_DIR=str(cache))
    return DDPRun(cwd, cache, run_fit(*args, cwd=cwd, env=env))
