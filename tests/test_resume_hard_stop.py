"""A run killed outright (SIGKILL: no handler runs) and continued with ``--ckpt_path last``.

A real process is killed after a chosen training step; the continued run starts from the end of the
previous epoch. What the loggers were handed, the parts merged by step (the later part wins), must be
every number the uninterrupted run logged at every step, with the same value: read from MLflow
(its SQLite store has every value the moment it is logged) and, for the steps after the checkpoint,
from W&B (whose service loses the unwritten end of its file when its program is killed: docs/resume.md).
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
from pathlib import Path
from typing import Any

import torch
from _cli_helpers import CONFIGS, fit_command, fit_env, tiny
from _fit_helpers import fit_in_process
from _logged_fit import leet_inspect
from _resume_helpers import pause_at, wait_until_paused

HERE = Path(__file__).resolve().parent
STEPS_PER_EPOCH = 6
#: The shared reference run's experiment, loggers and length (see _fit_helpers.reference_run).
LOGGERS = """
trainer:
  logger:
    - class_path: pytorch_lightning.loggers.WandbLogger
      init_args: {project: lightning-gaaf, offline: true}
    - class_path: pytorch_lightning.loggers.MLFlowLogger
      init_args: {experiment_name: gaaf, tracking_uri: "sqlite:///CWD/mlflow.db"}
"""
#: W&B's own columns, not logged values.
WANDB_COLUMNS = ("_step", "_runtime", "_timestamp", "trainer/global_step")


def _env(data: Path) -> dict[str, str]:
    env = fit_env(data)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(HERE), env.get("PYTHONPATH", "")) if p)
    return env


def _args(cwd: Path) -> list[str]:
    config = cwd / "mnist_gaaf.yaml"
    # An absolute store: MLflow keeps one store per URI in a process, and the reference run's is relative.
    loggers = LOGGERS.replace("CWD", str(cwd))
    config.write_text(f"defaults: {CONFIGS / 'mnist_gaaf.yaml'}\n{loggers}")
    return ["--config", str(config), *tiny(3, STEPS_PER_EPOCH), "--run_dir", str(cwd / "run")]


def _kill_after(cwd: Path, data: Path, step: int) -> int:
    """Start gaaf-fit, wait until it has finished training step ``step``, SIGKILL it; its exit status."""
    pause, marker = pause_at(cwd, step)
    proc = subprocess.Popen(
        fit_command(*_args(cwd), *pause),
        cwd=cwd,
        env=_env(data),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    wait_until_paused(proc, marker, step)
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=60)
    return proc.returncode


def _mlflow(cwd: Path) -> dict[tuple[str, int], float]:
    """Every number MLflow stored by (key, step), over the runs in start order (a later run wins)."""
    with sqlite3.connect(cwd / "mlflow.db") as db:
        rows = db.execute(
            "SELECT m.key, m.step, m.value FROM metrics m JOIN runs r ON m.run_uuid = r.run_uuid "
            "ORDER BY r.start_time, m.timestamp"
        ).fetchall()
    return {(key, int(step)): value for key, step, value in rows}


def _wandb(run_dir: Path) -> dict[tuple[str, int], float]:
    """Every logged number by (key, global step), over the run's offline W&B parts in order."""
    values: dict[tuple[str, int], float] = {}
    for offline in sorted((run_dir / "wandb").glob("offline-run-*")):
        for line in leet_inspect(offline).splitlines():
            record: dict[str, Any] = json.loads(line) if line.strip() else {}
            if record.get("type") != "history":
                continue
            item = record["history"]["item"]
            for key, value in item.items():
                if key not in WANDB_COLUMNS and isinstance(value, (int, float)) and "/report/" not in key:
                    values[key, int(item["trainer/global_step"])] = value
    return values


def test_a_killed_run_continued_has_logged_every_number_of_an_uninterrupted_run(
    tmp_path: Path, mnist_dir: Path, reference_run: Any
) -> None:
    """Killed after step 7, the first step of epoch 2: the record of step 5 (the monitors' last of
    epoch 1) was complete when epoch 1's checkpoint was saved; the continued run starts after it."""
    assert reference_run.args[2:] == _args(tmp_path)[2:-2]
    assert _kill_after(tmp_path, mnist_dir, STEPS_PER_EPOCH + 1) == -signal.SIGKILL
    run_dir = tmp_path / "run"
    last = torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    assert last["global_step"] == STEPS_PER_EPOCH  # the end of epoch 1: a hard stop saves nothing

    resumed = fit_in_process(
        *_args(tmp_path), "--ckpt_path", "last", cwd=tmp_path, env=_env(mnist_dir), wandb=True
    )
    assert resumed.returncode == 0, resumed.stderr[-3000:]

    expected, got = _mlflow(reference_run.cwd), _mlflow(tmp_path)
    assert sorted(k for k in expected if k not in got) == []
    assert {k: got[k] for k in expected} == expected
    # W&B: one run in two offline parts; every step the continued part logged has the uninterrupted values.
    assert len(list((run_dir / "wandb").glob("offline-run-*"))) == 2
    expected, got = _wandb(reference_run.run_dir), _wandb(run_dir)
    after = {k: v for k, v in expected.items() if k[1] >= STEPS_PER_EPOCH}
    assert {k: got.get(k) for k in after} == after
