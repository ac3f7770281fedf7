"""``gaaf-fit``: train one configured experiment, then test its best checkpoint.

Built on LightningCLI without subcommands: ``gaaf-fit --config mnist_gaaf`` fits and tests; every
LightningCLI override works (``--trainer.max_epochs 3``, ``--model.optimizer.lr 0.1``,
``--data.batch_size 64``, ``--print_config``). On top of LightningCLI:

* **bundled configs** -- ``--config NAME`` is a file if one exists at that path, else the config of
  that name shipped with the package (``.yaml`` optional); ``--list-configs`` lists them.
* **any LightningModule / DataModule** -- ``--model my_pkg.MyModule --data my_pkg.MyData`` (subclass
  mode); :class:`~lightning_gaaf.models.ImageClassifier` is the default model. ``data.num_classes``
  (a class attribute of the DataModule) is passed to the model and its backbone where they take it.

* **config composition** -- a config file may start with ``defaults: [a.yaml, b.yaml]``; those files
  (paths relative to the including file, themselves allowed to have ``defaults``) are applied first,
  exactly as if given as earlier ``--config`` options, then the rest of the file.
* **GAAF section** -- ``gaaf: {enabled: true, K: 10000, shape: null, ...}`` adds a
  :class:`~lightning_gaaf.GAAFCallback` with those options, ahead of every other callback so that
  monitors see the final modules. ``gaaf.policy`` gives per-layer options: a glob mapping
  ``{"backbone.fc*": {K: 1000}, "backbone.head.*": null}`` (first matching glob wins) or the import
  path of a callable ``(name, module) -> options | None``.
* **one run directory** -- ``runs/<config name>/version_N/`` (or ``--run_dir``, or an explicit
  ``--trainer.default_root_dir``) holds ``config.yaml``, ``checkpoints/`` and the W&B files.
* **defaults** -- a ``WandbLogger`` (project ``lightning-gaaf``, offline unless ``WANDB_MODE`` is set),
  a ``ModelCheckpoint`` on ``val/acc``, a ``MetricsMonitor`` (``stats/metrics.json``), and the
  number of classes linked from the data into the model.
* **resume** -- ``--ckpt_path last|best|PATH`` continues a run in its run directory and W&B run;
  SIGTERM / Ctrl-C stop after the current batch with exit status 143 / 130 (docs/resume.md).
* **user errors** (bad key or value, missing dataset, unavailable accelerator) print one line
  ``gaaf-fit: error: ...`` and exit with status 2; any other error inside training keeps its traceback.
* **a failed start leaves nothing** -- a run that fails before its first training step removes its
  version directory (with the loggers' files in it); ``runs/`` carries a ``.gitignore``.
"""

from __future__ import annotations

import importlib
import inspect
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NoReturn

import yaml
from jsonargparse import Namespace
from pytorch_lightning import Trainer
from pytorch_lightning.callbacks import Callback, ModelCheckpoint
from pytorch_lightning.cli import LightningArgumentParser, LightningCLI, SaveConfigCallback
from pytorch_lightning.loggers import WandbLogger
from pytorch_lightning.utilities.exceptions import MisconfigurationException
from pytorch_lightning.utilities.model_helpers import is_overridden
from pytorch_lightning.utilities.rank_zero import rank_zero_info, rank_zero_only

from lightning_gaaf.callback import GAAFCallback
from lightning_gaaf.callbacks import MetricsMonitor
from lightning_gaaf.cli import run_control
from lightning_gaaf.cli.bundled import format_config_list
from lightning_gaaf.cli.checkpoints import LastCheckpoint, RandomState
from lightning_gaaf.cli.composition import UsageError, condense, config_name, expand_config_args
from lightning_gaaf.cli.run_dir import RUNS_DIR, RunDirectory, next_run_dir
from lightning_gaaf.datamodules import DatasetCorruptedError, DatasetNotFoundError
from lightning_gaaf.models import ImageClassifier

__all__ = ["GaafCLI", "UsageError", "config_name", "expand_config_args", "main", "next_run_dir"]

PROG = "gaaf-fit"
WANDB_PROJECT = "lightning-gaaf"
DEFAULT_MODEL = "lightning_gaaf.models.ImageClassifier"
LIST_CONFIGS_FLAG = "--list-configs"
#: Set by gaaf-fit for the worker processes Lightning starts under DDP, so that every rank uses the
#: run directory rank 0 chose instead of picking the next free version itself.
RUN_DIR_ENV = "GAAF_FIT_RUN_DIR"


def fail(message: str) -> NoReturn:
    """Print ``gaaf-fit: error: <message>`` on one line and exit with status 2."""
    sys.stderr.write(f"{PROG}: error: {condense(message)}\n")
    sys.stderr.flush()
    raise SystemExit(2)


# --------------------------------------------------------------------------- LightningCLI pieces
class GaafArgumentParser(LightningArgumentParser):
    """LightningArgumentParser whose errors are one line (no usage dump) with exit status 2."""

    def error(self, message: str, ex: Exception | None = None) -> NoReturn:  # type: ignore[override]
        if not self.exit_on_error:
            super().error(message, ex)
        fail(f"{condense(message)} (see {PROG} --help)")


def _logger_entries(config: Namespace) -> list[Namespace]:
    """The ``trainer.logger`` entries of a config that name a logger class (one, or a list of them)."""
    logger = config.get("trainer.logger")
    entries = logger if isinstance(logger, list) else [logger]
    return [entry for entry in entries if isinstance(entry, Namespace) and entry.get("class_path")]


def _is_wandb(entry: Namespace) -> bool:
    return entry.get("class_path", "").endswith("WandbLogger")


class SaveRunConfig(SaveConfigCallback):
    """Write the resolved config to ``<run_dir>/config.yaml`` and give it to the loggers.

    Lightning's version writes to ``trainer.log_dir``, which depends on the logger; the run directory
    is ``trainer.default_root_dir`` whatever the logger. The file describes the experiment, not where
    it ran: the run directory and the W&B folder that gaaf-fit filled in are left out, so re-running
    it starts a new version. Every other logger setting (a CSV or TensorBoard ``save_dir``) is kept.
    """

    def setup(self, trainer: Trainer, pl_module: Any, stage: str) -> None:
        if self.already_saved:
            return
        if trainer.is_global_zero:
            run_dir = Path(trainer.default_root_dir)
            run_dir.mkdir(parents=True, exist_ok=True)
            config = self.config.clone()
            config["run_dir"] = None
            config["trainer.default_root_dir"] = None
            config["ckpt_path"] = None
            for entry in _logger_entries(config):
                init = entry.get("init_args")
                if _is_wandb(entry) and init is not None and init.get("save_dir") == str(run_dir):
                    init["save_dir"] = None
            self.parser.save(
                config,
                str(run_dir / self.config_filename),
                skip_none=False,
                overwrite=True,
                multifile=False,
            )
            dumped = yaml.safe_load(self.parser.dump(self.config, skip_none=False))
            dumped.pop("config", None)
            for logger in trainer.loggers:
                logger.log_hyperparams(dumped)
        self.already_saved = True


def default_checkpoint(run_dir: Path, model: Any) -> ModelCheckpoint:
    """Checkpoints in ``run_dir/checkpoints``: the best on ``val/acc`` for :class:`ImageClassifier`.

    Any other LightningModule may log no ``val/acc``; its checkpoint is the latest epoch.
    ``last.ckpt`` is written by :class:`~lightning_gaaf.cli.checkpoints.LastCheckpoint` (every epoch).
    """
    if isinstance(model, ImageClassifier):
        return ModelCheckpoint(
            dirpath=str(run_dir / "checkpoints"),
            filename="epoch{epoch:03d}-val_acc{val/acc:.4f}",
            auto_insert_metric_name=False,
            monitor="val/acc",
            mode="max",
            save_top_k=1,
        )
    return ModelCheckpoint(dirpath=str(run_dir / "checkpoints"), save_top_k=1)


def _default_wandb_offline() -> bool:
    """Offline unless the user chose a W&B mode through ``WANDB_MODE`` (online, offline, disabled)."""
    return not os.environ.get("WANDB_MODE")


def _import_class(class_path: str) -> type | None:
    """The class a ``class_path`` names, or ``None`` where it cannot be imported (the parser reports that)."""
    module, _, name = class_path.rpartition(".")
    try:
        return getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError, ValueError):
        return None


def _takes(cls: type | None, parameter: str) -> bool:
    return cls is not None and parameter in inspect.signature(cls.__init__).parameters


class GaafCLI(LightningCLI):
    """LightningCLI with config ``defaults``, a ``gaaf`` section and the run-directory conventions.

    The model is any LightningModule (``--model my_pkg.MyModule``; default
    :class:`~lightning_gaaf.models.ImageClassifier`), the data any LightningDataModule.
    """

    def __init__(self, args: Sequence[str] | None = None, **kwargs: Any) -> None:
        kwargs.setdefault("model_class", None)  # any LightningModule (subclass mode)
        kwargs.setdefault("subclass_mode_model", True)
        kwargs.setdefault("subclass_mode_data", True)
        kwargs.setdefault("save_config_callback", SaveRunConfig)
        kwargs.setdefault("seed_everything_default", 0)
        kwargs.setdefault("auto_configure_optimizers", False)
        kwargs.setdefault("parser_class", GaafArgumentParser)
        # No abbreviations: a typo such as --trainer.max_epoch must fail, not match --trainer.max_epochs.
        description = f"{__doc__.split(chr(10) * 2)[0]} {LIST_CONFIGS_FLAG} lists the bundled configs."
        kwargs.setdefault("parser_kwargs", {"prog": PROG, "description": description, "allow_abbrev": False})
        kwargs.setdefault(
            "trainer_defaults",
            {
                "logger": {
                    "class_path": "pytorch_lightning.loggers.WandbLogger",
                    "init_args": {"project": WANDB_PROJECT, "offline": _default_wandb_offline()},
                }
            },
        )
        self.run_directory: RunDirectory | None = None
        self.name = PROG
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
        if self.subclass_mode_model:
            parser.set_defaults({"model": {"class_path": DEFAULT_MODEL}})

    def parse_arguments(self, parser: LightningArgumentParser, args: Any) -> None:
        argv = list(sys.argv[1:] if args is None else args)
        if LIST_CONFIGS_FLAG in argv:
            print(format_config_list())
            raise SystemExit(0)
        try:
            self.name = config_name(argv, default=PROG)
            expanded = expand_config_args(argv)
        except UsageError as exc:
            fail(str(exc))
        self.config = parser.parse_args(expanded)

    def before_instantiate_classes(self) -> None:
        trainer_cfg = self.config["trainer"]
        if self.config.get("ckpt_path"):
            # Continue in the checkpoint's run directory (DDP workers: the one rank 0 chose).
            chosen = (
                os.environ.get(RUN_DIR_ENV)
                or self.config.get("run_dir")
                or trainer_cfg.get("default_root_dir")
            )
            ckpt, run_dir = run_control.resolve_checkpoint(
                self.config["ckpt_path"], Path(chosen) if chosen else None, Path(RUNS_DIR) / self.name
            )
            self.config["ckpt_path"] = str(ckpt)
            if run_dir is not None and not chosen:
                self.config["run_dir"] = str(run_dir)
        self.run_directory = self._resolve_run_dir(trainer_cfg.get("default_root_dir"))
        trainer_cfg["default_root_dir"] = str(self.run_dir)
        self.config["run_dir"] = str(self.run_dir)
        for entry in _logger_entries(self.config):
            if _is_wandb(entry):
                init = entry.get("init_args") or Namespace()
                if init.get("save_dir") in (None, "."):
                    init["save_dir"] = str(self.run_dir)
                if init.get("name") is None:
                    init["name"] = self.name
                if self.config.get("ckpt_path") and init.get("id") is None:
                    init["id"] = run_control.wandb_run_id(self.run_dir)  # same W&B run (WandbLogger resumes)
                entry["init_args"] = init
        self._link_num_classes()

    def _link_num_classes(self) -> None:
        """Give ``data.num_classes`` to the model and to its backbone where their classes take it.

        A class attribute of the DataModule (so known before any data is read) wins over the model's
        own value, as a Lightning argument link would; models without the argument are left alone.
        """
        data, model = self.config.get("data"), self.config.get("model")
        if not isinstance(data, Namespace) or not isinstance(model, Namespace) or not model.get("class_path"):
            return
        num_classes = getattr(_import_class(data.get("class_path", "")), "num_classes", None)
        if not isinstance(num_classes, int):
            return
        targets = [model]
        backbone = (model.get("init_args") or Namespace()).get("backbone")
        if isinstance(backbone, Namespace) and backbone.get("class_path"):
            targets.append(backbone)
        for target in targets:
            if _takes(_import_class(target["class_path"]), "num_classes"):
                init = target.get("init_args") or Namespace()
                init["num_classes"] = num_classes
                target["init_args"] = init

    def instantiate_classes(self) -> None:
        try:
            super().instantiate_classes()
        except BaseException:
            if self.run_directory is not None:
                self.run_directory.discard()  # a run that never started leaves nothing behind
            raise

    def _resolve_run_dir(self, default_root_dir: str | None) -> RunDirectory:
        inherited = os.environ.get(RUN_DIR_ENV)
        if inherited:  # a DDP worker process: use rank 0's directory
            return RunDirectory(Path(inherited), created=[])
        explicit = self.config.get("run_dir") or default_root_dir
        if explicit:
            return RunDirectory.at(Path(explicit))
        if int(os.environ.get("WORLD_SIZE", "1")) > 1:
            fail("run_dir: set --run_dir when an external launcher starts several processes")
        return RunDirectory.next_version(Path(RUNS_DIR) / self.name)

    def instantiate_trainer(self, **kwargs: Any) -> Trainer:
        trainer_cfg = self.config_init["trainer"]
        callbacks: list[Callback] = list(trainer_cfg.get("callbacks") or [])
        gaaf = self.config_init["gaaf"]
        if gaaf.get("enabled"):
            options = {k: v for k, v in gaaf.items() if k != "enabled"}
            # First, so that monitors registering hooks in their own setup see the GAAF modules.
            callbacks.insert(0, GAAFCallback(**options))
        if not any(isinstance(c, MetricsMonitor) for c in callbacks):
            # Epoch metrics in <run_dir>/stats/metrics.json: gaaf-reproduce and gaaf-report read them.
            callbacks.append(MetricsMonitor())
        if trainer_cfg.get("enable_checkpointing") is not False and not any(
            isinstance(c, ModelCheckpoint) for c in callbacks
        ):
            callbacks.append(default_checkpoint(Path(self.run_dir or "."), self.model))
        if trainer_cfg.get("enable_checkpointing") is not False:
            # last.ckpt every epoch and at a graceful stop, with the random generators' state.
            callbacks += [LastCheckpoint(Path(self.run_dir or ".") / "checkpoints"), RandomState()]
        try:
            return super().instantiate_trainer(callbacks=callbacks, **kwargs)
        except (MisconfigurationException, ValueError, TypeError, ImportError) as exc:
            # Trainer(...) validates accelerator/devices/strategy/precision; name what was asked for.
            chosen = ", ".join(
                f"{key}={trainer_cfg.get(key)}" for key in ("accelerator", "devices", "strategy", "precision")
            )
            raise UsageError(f"trainer ({chosen}): {exc}") from exc


# --------------------------------------------------------------------------- entry point
#: Mistakes in the command line, the config or the environment, found while the run is built: one line.
SETUP_ERRORS = (
    UsageError,
    ValueError,
    MisconfigurationException,
    DatasetNotFoundError,
    DatasetCorruptedError,
)
#: The same kind of mistake found once training runs (data read in ``prepare_data``/``setup``, a model
#: without ``training_step``). Anything else raised inside training is a bug and keeps its traceback.
RUN_ERRORS = (MisconfigurationException, DatasetNotFoundError, DatasetCorruptedError)


@rank_zero_only
def _print_run_dir(run_dir: Path | None, trainer: Trainer) -> None:
    if run_dir is None:
        return
    ckpt = trainer.checkpoint_callback
    best = getattr(ckpt, "best_model_path", "") if ckpt is not None else ""
    print(f"{PROG}: run directory: {run_dir.absolute()}")
    if best:
        print(f"{PROG}: best checkpoint: {best}")


def _finish_wandb(trainer: Trainer | None, exit_code: int = 0) -> None:
    """Close the W&B run (marked failed for exit_code != 0) so a later gaaf-fit in this process starts afresh."""
    if trainer is None or not trainer.is_global_zero:
        return
    if any(isinstance(logger, WandbLogger) for logger in trainer.loggers):
        import wandb

        if wandb.run is not None:
            wandb.finish(exit_code=exit_code)


def _test(trainer: Trainer, model: Any, data: Any) -> None:
    """Test the best checkpoint once, where the model has a ``test_step`` and the data a test split."""
    if not is_overridden("test_step", model) or data is None or not is_overridden("test_dataloader", data):
        rank_zero_info(f"{PROG}: no test: the model has no test_step or the data no test_dataloader")
        return
    ckpt = trainer.checkpoint_callback
    best = "best" if isinstance(ckpt, ModelCheckpoint) and ckpt.best_model_path else None
    trainer.test(model, datamodule=data, ckpt_path=best)


def main(args: Sequence[str] | None = None) -> None:
    """Parse ``args`` (default ``sys.argv[1:]``), fit, test the best checkpoint, print the run directory.

    Under ``--trainer.strategy ddp`` Lightning restarts this program once per extra device with the
    original ``sys.argv``, so multi-process runs must be started as a program, not via ``main(args)``.
    """
    owns_run_dir_env = RUN_DIR_ENV not in os.environ
    signals = run_control.StopSignals()
    try:
        try:
            cli = GaafCLI(args=args)
        except SETUP_ERRORS as exc:
            fail(str(exc))
        trainer, model, data = cli.trainer, cli.model, cli.datamodule
        if cli.run_dir is not None:  # DDP worker processes inherit the environment at launch
            os.environ[RUN_DIR_ENV] = str(cli.run_dir)
        try:
            with signals:
                trainer.fit(model, datamodule=data, ckpt_path=cli.config.get("ckpt_path"))
                _test(trainer, model, data)
        except (KeyboardInterrupt, SystemExit) as exc:
            code = run_control.exit_code(exc, signals.received)
            if code is None:
                raise
            run_control.report_interruption(PROG, code, trainer)
            run_control.mark_wandb_interrupted(trainer, signals.received)
            _finish_wandb(trainer, exit_code=code)
            if not owns_run_dir_env:
                # A worker process that this program's rank 0 started for DDP: rank 0 reports the
                # status. A non-zero exit here makes Lightning's launcher SIGKILL rank 0 (and the rest)
                # before rank 0 has finished its own graceful stop.
                raise SystemExit(0) from None
            raise SystemExit(code) from None
        except BaseException as exc:
            user_error = isinstance(exc, RUN_ERRORS)
            _finish_wandb(trainer, exit_code=2 if user_error else 1)
            if trainer.global_step == 0 and cli.run_directory is not None and cli.run_directory.is_new:
                cli.run_directory.discard()  # failed before its first step: nothing worth keeping
            if user_error:
                fail(str(exc))
            raise
    finally:
        if owns_run_dir_env:
            os.environ.pop(RUN_DIR_ENV, None)
    _print_run_dir(cli.run_dir, trainer)
    _finish_wandb(trainer)


if __name__ == "__main__":
    main()
