"""Helpers for the gaaf-fit tests: run the program in a subprocess and read its offline W&B run."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from lightning_gaaf.run.directory import RUN_DIR_ENV

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "configs"
EXPERIMENTS = sorted(p for p in CONFIGS.glob("*.yaml"))


def tiny(max_epochs: int = 1, train_batches: int = 4) -> list[str]:
    """Overrides that shrink a fit to seconds on the synthetic datasets (n_train=256, n_test=64)."""
    return [
        *("--trainer.max_epochs", str(max_epochs), "--trainer.limit_train_batches", str(train_batches)),
        *("--trainer.limit_val_batches", "2", "--trainer.limit_test_batches", "2"),
        *("--trainer.log_every_n_steps", "2", "--data.val_size", "64", "--data.batch_size", "16"),
        *("--trainer.enable_progress_bar", "false"),
    ]


TINY = tiny()


def fit_env(data_dir: Path | str, **extra: str) -> dict[str, str]:
    """Environment for a gaaf-fit subprocess: offline W&B, eager GAAF, data from ``data_dir``."""
    env = dict(os.environ)
    env.pop(RUN_DIR_ENV, None)
    # An in-process W&B run of an earlier test leaves its service address here; a child process must
    # start its own service, or its offline files are written by the parent's, after the child exits.
    env.pop("WANDB_SERVICE", None)
    env.update(
        GAAF_DATA_DIR=str(data_dir),
        WANDB_MODE="offline",
        WANDB_SILENT="true",
        GAAF_BACKEND="eager",
    )
    env.update(extra)
    return env


def fit_command(*args: str) -> list[str]:
    """``gaaf-fit ARGS`` through the interpreter running the tests (same code as the console script)."""
    return [sys.executable, "-m", "lightning_gaaf.cli.fit", *args]


def run_fit(*args: str, cwd: Path, env: dict[str, str], timeout: float = 240) -> subprocess.CompletedProcess:
    return subprocess.run(
        fit_command(*args), cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout
    )


def wandb_records(run_dir: Path) -> list[dict[str, Any]]:
    """Every record of the single offline W&B run under ``run_dir/wandb`` (``wandb leet inspect --json``)."""
    offline = sorted((run_dir / "wandb").glob("offline-run-*"))
    assert len(offline) == 1, f"expected one offline W&B run, found {offline}"
    out = subprocess.run(
        [sys.executable, "-m", "wandb", "leet", "inspect", "--json", str(offline[0])],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return [json.loads(line) for line in out.stdout.splitlines() if line.strip()]


def history(records: list[dict[str, Any]]) -> dict[str, list[Any]]:
    """Logged values per key, in logging order."""
    values: dict[str, list[Any]] = {}
    for record in records:
        if record.get("type") == "history":
            for key, value in record["history"]["item"].items():
                values.setdefault(key, []).append(value)
    return values


def config_updates(records: list[dict[str, Any]]) -> dict[str, Any]:
    """The W&B run config: all ``config`` record updates merged."""
    config: dict[str, Any] = {}
    for record in records:
        if record.get("type") == "config":
            config.update(record["config"].get("update", {}))
    return config


def run_meta(records: list[dict[str, Any]]) -> dict[str, Any]:
    """The ``run`` record (project, display name, ...)."""
    return next(record["run"] for record in records if record.get("type") == "run")
