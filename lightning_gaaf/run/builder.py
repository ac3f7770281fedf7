"""From ``gaaf-fit`` arguments to the Lightning objects of one run: a LightningCLI without subcommands.

On top of LightningCLI (every override works: ``--trainer.max_epochs 3``, ``--model.optimizer.lr 0.1``):

* **bundled configs and composition** -- ``--config NAME`` is a file, else a bundled config;
  ``defaults: [a.yaml, ...]`` in a config applies those files first (:mod:`.composition`).
* **any LightningModule / DataModule** -- ``--model my_pkg.MyModule --data my_pkg.MyData`` (subclass
  mode; :class:`~lightning_gaaf.models.ImageClassifier` by default); the current directory is
  importable, as for a script. Every model gets the paper configs' shared defaults
  (``configs/defaults/base.yaml``: monitors, ``gaaf`` section) under whatever the configs say.
* **num_classes** -- the DataModule class's ``num_classes`` reaches the model through a LightningCLI
  argument link at parse time (models without the argument are left alone), and the model's backbone
  where it takes one (a second link, into ``model.init_args.backbone.init_args.num_classes``).
* **GAAF section** -- ``gaaf: {enabled: true, K: 10000, ...}`` adds a :class:`~lightning_gaaf.GAAFCallback`
  ahead of every other callback, so that monitors see the final modules.
* **atomic checkpoints** -- the Trainer's checkpoint plugin is :class:`~.checkpoint_io.AtomicCheckpointIO`
  unless the config names one (a full disk keeps the previous checkpoint whole).
* **run values** -- the run directory, the W&B folder, name, mode and resumed id go into the copy the
  classes are built from, never into the saved ``config.yaml`` (:mod:`.config`).
"""

from __future__ import annotations

import contextlib
import importlib
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NoReturn

import yaml
from jsonargparse import Namespace
from lightning_fabric.plugins import CheckpointIO
from pytorch_lightning import Trainer
from pytorch_lightning.callbacks import Callback, ModelCheckpoint
from pytorch_lightning.cli import LightningArgumentParser, LightningCLI
from pytorch_lightning.utilities.exceptions import MisconfigurationException

from lightning_gaaf.callback import GAAFCallback
from lightning_gaaf.callbacks import MetricsMonitor, Monitor
from lightning_gaaf.run.adaptive_threads_callback import adaptive_threads_callbacks
from lightning_gaaf.run.bundled import configs_dir
from lightning_gaaf.run.checkpoint_io import use_atomic_checkpoints
from lightning_gaaf.run.checkpoints import BestCheckpoint, LastCheckpoint
from lightning_gaaf.run.composition import UsageError, condense, config_name, expand_config_args
from lightning_gaaf.run.config import DEFAULT_LOGGER, SaveRunConfig, described_config, with_run_values
from lightning_gaaf.run.directory import CHECKPOINTS, RUN_CONFIG, RUN_DIR_ENV, RUNS_DIR, RunDirectory
from lightning_gaaf.run.random_state import RandomState
from lightning_gaaf.run.resume import resolve_checkpoint
from lightning_gaaf.run.wandb_run import drop_anonymous_setting

__all__ = ["GaafCLI", "PROG"]

PROG = "gaaf-fit"
DEFAULT_MODEL = "lightning_gaaf.models.ImageClassifier"
#: The paper configs' shared settings, applied under every config (and alone with ``--model``).
SHARED_DEFAULTS = "defaults/base.yaml"
HELP_FLAGS = {"-h", "--help"}


class GaafArgumentParser(LightningArgumentParser):
    """LightningArgumentParser whose errors are raised as one-line :class:`UsageError` (exit status 2)."""

    def error(self, message: str, ex: Exception | None = None) -> NoReturn:  # type: ignore[override]
        if not self.exit_on_error:
            super().error(message, ex)
        raise UsageError(f"{condense(message)} (see {PROG} --help)")


def _data_classes(data: Any) -> int | None:
    """``num_classes`` of the configured DataModule class (a class attribute of the bundled ones), if any."""
    cls = _import_class(data.get("class_path", "")) if isinstance(data, Namespace) else None
    value = getattr(cls, "num_classes", None)
    return value if isinstance(value, int) else None


def _import_class(class_path: str) -> type | None:
    module, _, name = class_path.rpartition(".")
    try:
        return getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError, ValueError):
        return None


class GaafCLI(LightningCLI):
    """LightningCLI with config ``defaults``, a ``gaaf`` section and the run-directory conventions.

    Built with ``run=False``: :func:`lightning_gaaf.run.fit_and_test` fits and tests.
    ``extra_callbacks`` are added to the Trainer but not to the saved config (e.g. a tuning trial's
    pruning callback).
    """

    def __init__(
        self, args: Sequence[str] | None = None, extra_callbacks: Sequence[Callback] = (), **kwargs: Any
    ) -> None:
        if "" not in sys.path and os.getcwd() not in sys.path:
            sys.path.insert(0, os.getcwd())  # --model mymod.MyModel next to mymod.py, as in a script
        kwargs.setdefault("model_class", None)  # any LightningModule (subclass mode)
        kwargs.setdefault("subclass_mode_model", True)
        kwargs.setdefault("subclass_mode_data", True)
        kwargs.setdefault("save_config_callback", SaveRunConfig)
        kwargs.setdefault("seed_everything_default", 0)
        kwargs.setdefault("auto_configure_optimizers", False)
        kwargs.setdefault("parser_class", GaafArgumentParser)
        # No abbreviations: a typo such as --trainer.max_epoch must fail, not match --trainer.max_epochs.
        kwargs.setdefault(
            "parser_kwargs",
            {
                "prog": PROG,
                "description": "Train one configured experiment, then test its best checkpoint "
                "(--list-configs lists the bundled configs).",
                "allow_abbrev": False,
            },
        )
        kwargs.setdefault("trainer_defaults", {"logger": DEFAULT_LOGGER})
        self.extra_callbacks = list(extra_callbacks)
        self.run_directory: RunDirectory | None = None
        self.name = PROG
        self.described: Namespace | None = None
        super().__init__(args=args, run=False, **kwargs)

    @property
    def run_dir(self) -> Path | None:
        """This run's directory (``None`` before the classes are instantiated)."""
        return None if self.run_directory is None else self.run_directory.path

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.add_argument(
            "--run_dir",
            type=str | None,
            default=None,
            help=f"Run directory (default: {RUNS_DIR}/<config name>/version_N, the next free N).",
        )
        parser.add_argument(
            "--ckpt_path",
            type=str | None,
            default=None,
            help="Continue a run: last (its last.ckpt), best, or a checkpoint path (see docs/resume.md).",
        )
        parser.add_argument(
            "--gaaf.enabled", type=bool, default=False, help="Apply GAAF surgery with the options below."
        )
        parser.add_class_arguments(GAAFCallback, "gaaf", instantiate=False, fail_untyped=False)
        # At parse time, from the DataModule's class, into the model and its backbone (jsonargparse
        # >= 4.49 links into a nested subclass' arguments; checked with 4.53). Link targets are left
        # out of the saved config.yaml: the links set them again when it is run.
        parser.link_arguments("data", "model.init_args.num_classes", _data_classes, apply_on="parse")
        parser.link_arguments(
            "data", "model.init_args.backbone.init_args.num_classes", _data_classes, apply_on="parse"
        )
        if self.subclass_mode_model:
            parser.set_defaults({"model": {"class_path": DEFAULT_MODEL}})

    def parse_arguments(self, parser: LightningArgumentParser, args: Any) -> None:
        argv = list(sys.argv[1:] if args is None else args)
        self.name = config_name(argv, default=PROG)
        # The paper configs' shared settings first: every config and model gets them, any config overrides.
        expanded = expand_config_args(["--config", str(configs_dir() / SHARED_DEFAULTS), *argv])
        if HELP_FLAGS & set(argv):
            _configured_defaults(parser, [a for a in expanded if a not in HELP_FLAGS])
        self.config = parser.parse_args(expanded)

    def before_instantiate_classes(self) -> None:
        self.described = described_config(self.config)
        chosen = os.environ.get(RUN_DIR_ENV) or self.config.get("run_dir")
        chosen = chosen or self.config.get("trainer.default_root_dir")
        if self.config.get("ckpt_path"):
            # Continue in the checkpoint's run directory (DDP workers: the one rank 0 chose).
            ckpt, found = resolve_checkpoint(
                self.config["ckpt_path"], Path(chosen) if chosen else None, Path(RUNS_DIR) / self.name
            )
            self.config["ckpt_path"] = str(ckpt)
            if found is not None and not chosen:
                chosen = str(found)
            if chosen:
                _check_gaaf_unchanged(Path(chosen), self.config)
        self.run_directory = self._run_directory(chosen)
        self.save_config_kwargs["described"] = self.described
        self.config = with_run_values(
            self.config, self.run_directory.path, self.name, resuming=bool(self.config.get("ckpt_path"))
        )

    def instantiate_classes(self) -> None:
        try:
            super().instantiate_classes()
        except BaseException:
            if self.run_directory is not None:
                self.run_directory.discard()  # a run that never started leaves nothing behind
            raise

    def _run_directory(self, chosen: str | None) -> RunDirectory:
        if os.environ.get(RUN_DIR_ENV):  # a DDP worker process: use rank 0's directory
            return RunDirectory(Path(os.environ[RUN_DIR_ENV]), created=[])
        if chosen:
            return RunDirectory.at(Path(chosen))
        if int(os.environ.get("WORLD_SIZE", "1")) > 1:
            raise UsageError("run_dir: set --run_dir when an external launcher starts several processes")
        return RunDirectory.next_version(Path(RUNS_DIR) / self.name)

    def instantiate_trainer(self, **kwargs: Any) -> Trainer:
        trainer_cfg = self.config_init["trainer"]
        callbacks: list[Callback] = list(trainer_cfg.get("callbacks") or []) + self.extra_callbacks
        gaaf = self.config_init["gaaf"]
        if gaaf.get("enabled"):
            options = {k: v for k, v in gaaf.items() if k != "enabled"}
            # First, so that monitors registering hooks in their own setup see the GAAF modules.
            callbacks.insert(0, GAAFCallback(**options))
        if not any(isinstance(c, MetricsMonitor) for c in callbacks):
            # The epoch records: the run's result (RunResult.metrics) and <run_dir>/stats/metrics.json.
            callbacks.append(MetricsMonitor())
        if self.run_dir is not None:
            # The run's statistics belong in the run directory, whichever logger comes first.
            for callback in callbacks:
                if isinstance(callback, Monitor) and callback.dirpath is None:
                    callback.dirpath = self.run_dir
        checkpoints = Path(self.run_dir or ".") / CHECKPOINTS
        if trainer_cfg.get("enable_checkpointing") is not False:
            if not any(isinstance(c, ModelCheckpoint) for c in callbacks):
                callbacks.append(BestCheckpoint(checkpoints))
            # last.ckpt every epoch and at a graceful stop, with the random generators' state.
            callbacks += [LastCheckpoint(checkpoints), RandomState()]
        # GAAF_THREADS=auto: the thread count follows the load while the run trains.
        callbacks += adaptive_threads_callbacks(callbacks)
        try:
            trainer = super().instantiate_trainer(callbacks=callbacks, **kwargs)
        except (MisconfigurationException, ValueError, TypeError, ImportError) as exc:
            # Trainer(...) validates accelerator/devices/strategy/precision; name what was asked for.
            chosen = ", ".join(
                f"{key}={trainer_cfg.get(key)}" for key in ("accelerator", "devices", "strategy", "precision")
            )
            raise UsageError(f"trainer ({chosen}): {exc}") from exc
        use_atomic_checkpoints(trainer, user_chose_io=self._checkpoint_io_chosen())
        drop_anonymous_setting(trainer)
        return trainer

    def _checkpoint_io_chosen(self) -> bool:
        """Whether the config names a checkpoint plugin: in ``trainer.plugins`` or the strategy's arguments."""
        plugins = self.config_init["trainer"].get("plugins") or []
        plugins = plugins if isinstance(plugins, list) else [plugins]
        strategy = self.config.get("trainer.strategy")
        init_args = strategy.get("init_args") if isinstance(strategy, Namespace) else None
        return any(isinstance(p, CheckpointIO) for p in plugins) or bool(
            isinstance(init_args, Namespace) and init_args.get("checkpoint_io")
        )


def _configured_defaults(parser: LightningArgumentParser, argv: list[str]) -> None:
    """Make the values ``argv`` (configs and overrides) give the parser's defaults, so ``--help`` shows them."""
    try:
        configured = parser.parse_args(argv)
    except UsageError:
        return  # the help is still useful without them; the mistake shows when the command runs
    for key, value in configured.items():
        top = key.split(".")[0]
        if top in ("config", "run_dir", "ckpt_path"):
            continue
        if top in ("model", "data"):  # a class and its arguments: one value, a dict for a subclass type
            key, value = top, configured[top]
            value = value.as_dict() if isinstance(value, Namespace) else value
        with contextlib.suppress(KeyError, ValueError, TypeError):
            parser.set_defaults({key: value})


def _check_gaaf_unchanged(run_dir: Path, config: Namespace) -> None:
    """A resumed run keeps the GAAF options its ``config.yaml`` recorded: another K or shape is refused."""
    saved_file = run_dir / RUN_CONFIG
    if not saved_file.is_file():
        return
    try:
        saved = (yaml.safe_load(saved_file.read_text()) or {}).get("gaaf") or {}
    except yaml.YAMLError:
        return
    now = config.get("gaaf")
    now = now.as_dict() if isinstance(now, Namespace) else dict(now or {})
    changed = [key for key in sorted(set(saved) | set(now)) if saved.get(key) != now.get(key)]
    if changed:
        diff = ", ".join(f"gaaf.{k} {saved.get(k)!r} -> {now.get(k)!r}" for k in changed)
        raise UsageError(
            f"ckpt_path: {saved_file} records other GAAF options than this command ({diff}); "
            "a resumed run keeps its GAAF options (start a new run to change them)"
        )
