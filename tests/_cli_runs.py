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

from _cli_helpers import CONFIGS, fit_env, run_fit, tiny, wandb_records

#: The session's one DDP run: the resume tests' experiment (3 epochs of 6 steps) on 2 gloo processes.
DDP = ["--trainer.accelerator", "cpu", "--trainer.devices", "2", "--trainer.strategy", "ddp"]
DDP_ARGS = ["--config", str(CONFIGS / "mnist_gaaf.yaml"), *tiny(3, 6), *DDP]


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


def start_ddp_run(cwd: Path, data: Path) -> DDPRun:
    """``gaaf-fit --config mnist_gaaf`` on 2 CPU processes (gloo), GAAF on the native kernels, whose
    cache starts empty so that both ranks build it at once; 3 epochs of 6 steps of the synthetic MNIST,
    the experiment of the resume tests, whose DDP test takes this run as its uninterrupted reference."""
    cache = cwd / "kernel-cache"
    env = fit_env(data, GAAF_BACKEND="native", GAAF_CACHE_DIR=str(cache))
    return DDPRun(cwd, cache, run_fit(*DDP_ARGS, cwd=cwd, env=env))
