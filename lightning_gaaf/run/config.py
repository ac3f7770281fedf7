"""The saved config of a run: ``<run_dir>/config.yaml`` describes the experiment, not where it ran.

The parsed config is kept as the user gave it (the *described* config); the values that belong to one
run -- its directory, the W&B folder, name, mode and the id of a resumed W&B run -- go only into the
copy the classes are built from (:func:`with_run_values`). So ``gaaf-fit --config <run>/config.yaml``
starts a new run (a new version, a new W&B run), offline unless ``WANDB_MODE`` says otherwise.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import yaml
from jsonargparse import Namespace
from pytorch_lightning.cli import SaveConfigCallback

from lightning_gaaf.run.directory import RUN_CONFIG
from lightning_gaaf.run.wandb_run import wandb_run_id

__all__ = ["SaveRunConfig", "described_config", "logger_entries", "with_run_values"]

#: The W&B project of the default logger.
WANDB_PROJECT = "lightning-gaaf"
#: The default logger (its mode is chosen per run: offline unless ``WANDB_MODE`` is set).
DEFAULT_LOGGER = {
    "class_path": "pytorch_lightning.loggers.WandbLogger",
    "init_args": {"project": WANDB_PROJECT},
}


def logger_entries(config: Namespace) -> list[Namespace]:
    """The ``trainer.logger`` entries of a config that name a logger class (one, or a list of them)."""
    logger = config.get("trainer.logger")
    entries = logger if isinstance(logger, list) else [logger]
    return [entry for entry in entries if isinstance(entry, Namespace) and entry.get("class_path")]


def _is_wandb(entry: Namespace) -> bool:
    return entry.get("class_path", "").endswith("WandbLogger")


def described_config(config: Namespace) -> Namespace:
    """The experiment: ``config`` without where and how this process runs it (run directory, resume)."""
    described = config.clone()
    described["run_dir"] = None
    described["ckpt_path"] = None
    return described


def with_run_values(config: Namespace, run_dir: Path, name: str, resuming: bool) -> Namespace:
    """A copy of ``config`` with this run's directory, its W&B folder, name and mode, and on resume its W&B id."""
    run = config.clone()
    run["trainer.default_root_dir"] = str(run_dir)
    run["run_dir"] = str(run_dir)
    for entry in logger_entries(run):
        if not _is_wandb(entry):
            continue
        init = entry.get("init_args") or Namespace()
        if init.get("save_dir") in (None, "."):
            init["save_dir"] = str(run_dir)
        if init.get("name") is None:
            init["name"] = name
        if not os.environ.get("WANDB_MODE"):
            init["offline"] = True  # W&B needs no account unless the user chose a mode
        if resuming and init.get("id") is None:
            init["id"] = wandb_run_id(run_dir)  # the same W&B run (WandbLogger resumes it)
        entry["init_args"] = init
    return run


class SaveRunConfig(SaveConfigCallback):
    """Write the described config to ``<run_dir>/config.yaml`` and give it to the loggers.

    Lightning's version writes to ``trainer.log_dir``, which depends on the logger; the run directory
    is ``trainer.default_root_dir`` whatever the logger.

    Args:
        described: the config to save (:func:`described_config`); ``config`` (what the classes were built
            from) when not given.
    """

    def __init__(self, *args: Any, described: Namespace | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.described = described

    def setup(self, trainer: Any, pl_module: Any, stage: str) -> None:
        if self.already_saved:
            return
        if trainer.is_global_zero:
            run_dir = Path(trainer.default_root_dir)
            run_dir.mkdir(parents=True, exist_ok=True)
            config = self.described if self.described is not None else self.config
            self.parser.save(
                config, str(run_dir / RUN_CONFIG), skip_unset=False, overwrite=True, multifile=False
            )
            dumped = yaml.safe_load(self.parser.dump(config, skip_unset=False))
            dumped.pop("config", None)
            for logger in trainer.loggers:
                logger.log_hyperparams(dumped)
        self.already_saved = True
