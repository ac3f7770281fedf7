"""One tiny fit with every monitor and all four Lightning loggers, shared by the logger tests.

One fit pays the W&B service start and the MLflow database set-up once for test_callbacks_wandb.py
and test_callbacks_loggers.py; each reads back what its loggers wrote to their files.
TensorBoard and MLflow (the ``loggers`` extra) are left out when they are not installed.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import wandb
from _monitor_helpers import TinyData, TinyModule, mlp, trainer
from pytorch_lightning.loggers import CSVLogger, Logger, MLFlowLogger, TensorBoardLogger, WandbLogger
from wandb.util import get_core_path

from lightning_gaaf.callbacks import (
    GradInfoMonitor,
    NetVarMonitor,
    NodeCorrelationMonitor,
    SaturationMonitor,
    WeightHistMonitor,
)


@dataclass
class LoggedFit:
    """The run directory, the monitors (with what they recorded) and the loggers of the shared fit."""

    root: Path
    grad: GradInfoMonitor
    sat: SaturationMonitor
    var: NetVarMonitor
    corr: NodeCorrelationMonitor
    weights: WeightHistMonitor
    wandb_run: Path
    mlflow: MLFlowLogger | None

    @property
    def mlflow_uri(self) -> str:
        return f"sqlite:///{self.root / 'mlflow.db'}"


def has(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


def run_logged_fit(root: Path) -> LoggedFit:
    """Fit the tiny dropout MLP for 4 steps (monitors log at steps 1 and 3), then test it."""
    callbacks = (
        GradInfoMonitor(log_every_n_steps=2),
        SaturationMonitor(log_every_n_steps=2, bins=10, value_range=(-2, 2)),
        NetVarMonitor(log_every_n_steps=2, repeats=3),
        NodeCorrelationMonitor(thresholds=(0.5,)),
        WeightHistMonitor(bins=8),
    )
    loggers: list[Logger] = [WandbLogger(offline=True, save_dir=str(root), project="gaaf-tests")]
    loggers.append(CSVLogger(root, name="csv", version=0))
    if has("tensorboard"):
        loggers.append(TensorBoardLogger(root, name="tb", version=0))
    mlflow = None
    if has("mlflow"):
        mlflow = MLFlowLogger(experiment_name="monitors", tracking_uri=f"sqlite:///{root / 'mlflow.db'}")
        loggers.append(mlflow)
    try:
        fit = trainer(root, list(callbacks), max_steps=4, logger=loggers)
        model = TinyModule(mlp(dropout=0.2))
        fit.fit(model, datamodule=TinyData())
        fit.test(model, datamodule=TinyData())
        wandb_run = Path(loggers[0].experiment.dir).parent
        for logger in loggers[1:]:
            logger.finalize("success")
    finally:
        wandb.finish()
    return LoggedFit(root, *callbacks, wandb_run=wandb_run, mlflow=mlflow)


def leet_inspect(run_dir: Path, *flags: str) -> str:
    """The output of ``wandb leet inspect --json FLAGS RUN_DIR``, without the ``wandb`` command's start-up.

    ``wandb leet inspect`` is a Python command that only starts W&B's own ``wandb-core`` program with
    these arguments (``wandb/cli/leet.py``); starting that program directly saves a Python process
    and the ``wandb`` import per read. test_callbacks_wandb.py checks that both give the same output,
    so a change of those arguments in W&B fails there.
    """
    (run_file,) = run_dir.glob("*.wandb")
    command = [get_core_path(), "leet", "inspect", "--no-observability", *flags, "--json"]
    command += ["--run-file", str(run_file), str(run_dir.parent)]
    return subprocess.run(
        command,
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
        env={**os.environ, "WANDB_MODE": "offline"},
    ).stdout


def wandb_history(run_dir: Path) -> list[dict[str, Any]]:
    """The history rows of an offline W&B run, in logging order."""
    records = [json.loads(line) for line in leet_inspect(run_dir).splitlines() if line.strip()]
    return [r["history"]["item"] for r in records if r.get("type") == "history"]


def wandb_summary(run_dir: Path) -> dict[str, Any]:
    """The run summary of an offline W&B run (``wandb leet inspect --summary --json``)."""
    return json.loads(leet_inspect(run_dir, "--summary"))["summary"]
