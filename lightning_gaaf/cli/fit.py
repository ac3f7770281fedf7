"""``gaaf-fit``: train one configured experiment, then test its best checkpoint.

Built on LightningCLI without subcommands: ``gaaf-fit --config configs/mnist_gaaf.yaml`` fits and
tests; every LightningCLI override works (``--trainer.max_epochs 3``, ``--model.optimizer.lr 0.1``,
``--data.batch_size 64``, ``--print_config``). On top of LightningCLI:

* **config composition** -- a config file may start with ``defaults: [a.yaml, b.yaml]``; those files
  (paths relative to the including file, themselves allowed to have ``defaults``) are applied first,
  exactly as if given as earlier ``--config`` options, then the rest of the file.
* **GAAF section** -- ``gaaf: {enabled: true, K: 10000, shape: null, ...}`` adds a
  :class:`~lightning_gaaf.GAAFCallback` with those options, ahead of every other callback so that
  monitors see the final modules.
* **one run directory** -- ``runs/<config name>/version_N/`` (or ``--run_dir``, or an explicit
  ``--trainer.default_root_dir``) holds ``config.yaml``, ``checkpoints/`` and the W&B files.
* **defaults** -- a ``WandbLogger`` (project ``lightning-gaaf``, offline unless ``WANDB_MODE`` is set),
  a ``ModelCheckpoint`` on ``val/acc``, a ``MetricsHistory`` (``stats/metrics.json``), and the
  number of classes linked from the data into the model.
* **resume** -- ``--ckpt_path last|best|PATH`` continues a run in its run directory and W&B run;
  SIGTERM / Ctrl-C stop after the current batch with exit status 143 / 130 (docs/resume.md).
* **user errors** (bad key or value, missing dataset, unavailable accelerator) print one line
  ``gaaf-fit: error: ...`` and exit with status 2.
"""

from __future__ import annotations

import os
import re
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
from pytorch_lightning.utilities.rank_zero import rank_zero_only

from lightning_gaaf.callback import GAAFCallback
from lightning_gaaf.callbacks.history import MetricsHistory
from lightning_gaaf.cli import run_control
from lightning_gaaf.cli.checkpoints import LastCheckpoint, RandomState
from lightning_gaaf.datamodules import DatasetCorruptedError, DatasetNotFoundError
from lightning_gaaf.models import ImageClassifier

PROG = "gaaf-fit"
DEFAULTS_KEY = "defaults"
WANDB_PROJECT = "lightning-gaaf"
RUNS_DIR = "runs"
#: Set by gaaf-fit for the worker processes Lightning starts under DDP, so that every rank uses the
#: run directory rank 0 chose instead of picking the next free version itself.
RUN_DIR_ENV = "GAAF_FIT_RUN_DIR"
_CONFIG_FLAGS = ("-c", "--config")


class UsageError(Exception):
    """A mistake in the command line or config that gaaf-fit reports as one line."""


_UNION_NOISE = re.compile(
    r"^(Subtypes:|Errors:|Given value type:|Given value:|Expected a <class 'NoneType'>)"
)


def condense(message: str) -> str:
    """One line from a possibly multi-line message (jsonargparse explains union types over many lines).

    Keeps the parser key and the reasons, drops the lists of candidate types and the repeated value.
    """
    parts: list[str] = []
    for raw in str(message).strip().splitlines():
        line = raw.strip().removeprefix("- ")
        line = line.replace("Does not validate against any of the Union subtypes", "").strip()
        line = re.sub(r"\s*Got value:.*$", "", line)
        if line and not _UNION_NOISE.match(line):
            parts.append(line)
    text = "; ".join(parts).replace(":;", ":")
    return text if len(text) <= 2000 else text[:1997] + "..."


def fail(message: str) -> NoReturn:
    """Print ``gaaf-fit: error: <message>`` on one line and exit with status 2."""
    sys.stderr.write(f"{PROG}: error: {condense(message)}\n")
    sys.stderr.flush()
    raise SystemExit(2)


# --------------------------------------------------------------------------- config composition
def _load_yaml(path: Path) -> Any:
    try:
        return yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise UsageError(f"config {path}: not valid YAML ({str(exc).splitlines()[0]})") from None


def _expand_file(path: Path, chain: tuple[Path, ...]) -> list[str]:
    """``--config`` options equivalent to ``path`` with its ``defaults`` applied first."""
    resolved = path.resolve()
    if resolved in chain:
        cycle = " -> ".join(str(p) for p in (*chain, resolved))
        raise UsageError(f"config {path}: '{DEFAULTS_KEY}' includes form a cycle: {cycle}")
    content = _load_yaml(path)
    if not isinstance(content, dict) or DEFAULTS_KEY not in content:
        return ["--config", str(path)]
    includes = content.pop(DEFAULTS_KEY)
    if isinstance(includes, str):
        includes = [includes]
    if not isinstance(includes, list) or not all(isinstance(item, str) for item in includes):
        raise UsageError(f"config {path}: '{DEFAULTS_KEY}' must be a file path or a list of file paths")
    args: list[str] = []
    for include in includes:
        target = Path(os.path.normpath(path.parent / include))  # an absolute include stays as is
        if not target.is_file():
            raise UsageError(
                f"config {path}: '{DEFAULTS_KEY}' entry {include!r} not found (looked for {target})"
            )
        args += _expand_file(target, (*chain, resolved))
    if content:
        # The remaining keys go in as a YAML string, applied after (so on top of) the includes.
        args += ["--config", yaml.safe_dump(content, sort_keys=False)]
    return args


def expand_config_args(argv: Sequence[str]) -> list[str]:
    """Replace every ``--config FILE`` whose file has a ``defaults`` key by the files it composes."""
    out: list[str] = []
    i = 0
    while i < len(argv):
        arg = argv[i]
        value: str | None = None
        if arg in _CONFIG_FLAGS and i + 1 < len(argv):
            value, i = argv[i + 1], i + 2
        elif arg.startswith("--config="):
            value, i = arg.split("=", 1)[1], i + 1
        else:
            out.append(arg)
            i += 1
            continue
        path = Path(value)
        out += _expand_file(path, ()) if path.is_file() else ["--config", value]
    return out


def config_name(argv: Sequence[str]) -> str:
    """Stem of the last config file on the command line (the experiment's name), else ``gaaf-fit``.

    A run's saved ``<name>/version_N/config.yaml`` keeps the name ``<name>``.
    """
    name = PROG
    for i, arg in enumerate(argv):
        value = None
        if arg in _CONFIG_FLAGS and i + 1 < len(argv):
            value = argv[i + 1]
        elif arg.startswith("--config="):
            value = arg.split("=", 1)[1]
        if value is not None and Path(value).is_file():
            path = Path(value).absolute()
            name = path.stem
            if name == "config" and re.fullmatch(r"version_\d+", path.parent.name):
                name = path.parent.parent.name
    return name


# --------------------------------------------------------------------------- run directory
def next_run_dir(base: Path) -> Path:
    """Create and return ``base/version_N`` with the smallest N above every existing version."""
    base.mkdir(parents=True, exist_ok=True)
    versions = [int(m.group(1)) for p in base.iterdir() if (m := re.fullmatch(r"version_(\d+)", p.name))]
    n = max(versions, default=-1) + 1
    while True:
        candidate = base / f"version_{n}"
        try:
            candidate.mkdir()
            return candidate
        except FileExistsError:  # another run took it meanwhile
            n += 1


# --------------------------------------------------------------------------- LightningCLI pieces
class GaafArgumentParser(LightningArgumentParser):
    """LightningArgumentParser whose errors are one line (no usage dump) with exit status 2."""

    def error(self, message: str, ex: Exception | None = None) -> NoReturn:  # type: ignore[override]
        if not self.exit_on_error:
            super().error(message, ex)
        fail(f"{condense(message)} (see {PROG} --help)")


class SaveRunConfig(SaveConfigCallback):
    """Write the resolved config to ``<run_dir>/config.yaml`` and give it to the loggers.

    Lightning's version writes to ``trainer.log_dir``, which depends on the logger; the run directory
    is ``trainer.default_root_dir`` whatever the logger.
    """

    def setup(self, trainer: Trainer, pl_module: Any, stage: str) -> None:
        if self.already_saved:
            return
        if trainer.is_global_zero:
            run_dir = Path(trainer.default_root_dir)
            run_dir.mkdir(parents=True, exist_ok=True)
            config = self.config.clone()
            # The file describes the experiment, not where it ran: re-running it starts a new version.
            config["run_dir"] = None
            config["trainer.default_root_dir"] = None
            config["ckpt_path"] = None
            if isinstance(config.get("trainer.logger"), Namespace) and "save_dir" in (
                config["trainer.logger"].get("init_args") or {}
            ):
                config["trainer.logger.init_args.save_dir"] = None
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


def _default_wandb_offline() -> bool:
    """Offline unless the user chose a W&B mode through ``WANDB_MODE`` (online, offline, disabled)."""
    return not os.environ.get("WANDB_MODE")


class GaafCLI(LightningCLI):
    """LightningCLI with config ``defaults``, a ``gaaf`` section and the run-directory conventions."""

    def __init__(self, args: Sequence[str] | None = None, **kwargs: Any) -> None:
        kwargs.setdefault("model_class", ImageClassifier)
        kwargs.setdefault("subclass_mode_data", True)
        kwargs.setdefault("save_config_callback", SaveRunConfig)
        kwargs.setdefault("seed_everything_default", 0)
        kwargs.setdefault("auto_configure_optimizers", False)
        kwargs.setdefault("parser_class", GaafArgumentParser)
        # No abbreviations: a typo such as --trainer.max_epoch must fail, not match --trainer.max_epochs.
        kwargs.setdefault(
            "parser_kwargs", {"prog": PROG, "description": __doc__.split("\n\n")[0], "allow_abbrev": False}
        )
        kwargs.setdefault(
            "trainer_defaults",
            {
                "logger": {
                    "class_path": "pytorch_lightning.loggers.WandbLogger",
                    "init_args": {"project": WANDB_PROJECT, "offline": _default_wandb_offline()},
                }
            },
        )
        self.run_dir: Path | None = None
        self._created_parents: list[Path] = []  # runs/<name>, runs: made for this run, deepest first
        self.name = PROG
        super().__init__(args=args, run=False, **kwargs)

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
        # The class count lives in the data; the classifier's metrics and the backbone's output layer follow it.
        parser.link_arguments("data.num_classes", "model.num_classes", apply_on="instantiate")
        parser.link_arguments(
            "data.num_classes", "model.backbone.init_args.num_classes", apply_on="instantiate"
        )

    def parse_arguments(self, parser: LightningArgumentParser, args: Any) -> None:
        argv = list(sys.argv[1:] if args is None else args)
        self.name = config_name(argv)
        try:
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
        self.run_dir = self._resolve_run_dir(trainer_cfg.get("default_root_dir"))
        trainer_cfg["default_root_dir"] = str(self.run_dir)
        self.config["run_dir"] = str(self.run_dir)
        logger = trainer_cfg.get("logger")
        if isinstance(logger, Namespace) and logger.get("class_path", "").endswith("WandbLogger"):
            init = logger.get("init_args") or Namespace()
            if init.get("save_dir") in (None, "."):
                init["save_dir"] = str(self.run_dir)
            if init.get("name") is None:
                init["name"] = self.name
            if self.config.get("ckpt_path") and init.get("id") is None:
                init["id"] = run_control.wandb_run_id(self.run_dir)  # same W&B run (WandbLogger resumes)
            logger["init_args"] = init

    def instantiate_classes(self) -> None:
        try:
            super().instantiate_classes()
        except BaseException:
            # Do not leave an empty version directory (nor the runs/<name> folders made for it)
            # behind for a run that never started.
            folders = ([self.run_dir] if self.run_dir is not None else []) + self._created_parents
            for folder in folders:
                if folder.is_dir() and not any(folder.iterdir()):
                    folder.rmdir()
            raise

    def _resolve_run_dir(self, default_root_dir: str | None) -> Path:
        inherited = os.environ.get(RUN_DIR_ENV)
        if inherited:  # a DDP worker process: use rank 0's directory
            return Path(inherited)
        explicit = self.config.get("run_dir") or default_root_dir
        if explicit:
            run_dir = Path(explicit)
            run_dir.mkdir(parents=True, exist_ok=True)
        else:
            if int(os.environ.get("WORLD_SIZE", "1")) > 1:
                fail("run_dir: set --run_dir when an external launcher starts several processes")
            base = Path(RUNS_DIR) / self.name
            self._created_parents = [p for p in (base, base.parent) if not p.exists()]
            run_dir = next_run_dir(base)
        return run_dir

    def instantiate_trainer(self, **kwargs: Any) -> Trainer:
        trainer_cfg = self.config_init["trainer"]
        callbacks: list[Callback] = list(trainer_cfg.get("callbacks") or [])
        gaaf = self.config_init["gaaf"]
        if gaaf.get("enabled"):
            options = {k: v for k, v in gaaf.items() if k != "enabled"}
            # First, so that monitors registering hooks in their own setup see the GAAF modules.
            callbacks.insert(0, GAAFCallback(**options))
        if not any(isinstance(c, MetricsHistory) for c in callbacks):
            # Epoch metrics in <run_dir>/stats/metrics.json: gaaf-reproduce and gaaf-report read them.
            callbacks.append(MetricsHistory())
        if trainer_cfg.get("enable_checkpointing") is not False and not any(
            isinstance(c, ModelCheckpoint) for c in callbacks
        ):
            callbacks.append(
                ModelCheckpoint(
                    dirpath=str(Path(self.run_dir or ".") / "checkpoints"),
                    filename="epoch{epoch:03d}-val_acc{val/acc:.4f}",
                    auto_insert_metric_name=False,
                    monitor="val/acc",
                    mode="max",
                    save_top_k=1,
                )
            )
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
#: Exceptions that mean the command line, the config or the environment is wrong: reported as one line.
USER_ERRORS = (UsageError, ValueError, MisconfigurationException, DatasetNotFoundError, DatasetCorruptedError)


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


def main(args: Sequence[str] | None = None) -> None:
    """Parse ``args`` (default ``sys.argv[1:]``), fit, test the best checkpoint, print the run directory.

    Under ``--trainer.strategy ddp`` Lightning restarts this program once per extra device with the
    original ``sys.argv``, so multi-process runs must be started as a program, not via ``main(args)``.
    """
    owns_run_dir_env = RUN_DIR_ENV not in os.environ
    trainer: Trainer | None = None
    signals = run_control.StopSignals()
    try:
        cli = GaafCLI(args=args)
        trainer, model, data = cli.trainer, cli.model, cli.datamodule
        if cli.run_dir is not None:  # DDP worker processes inherit the environment at launch
            os.environ[RUN_DIR_ENV] = str(cli.run_dir)
        with signals:
            trainer.fit(model, datamodule=data, ckpt_path=cli.config.get("ckpt_path"))
            ckpt = trainer.checkpoint_callback
            best = "best" if isinstance(ckpt, ModelCheckpoint) and ckpt.best_model_path else None
            trainer.test(model, datamodule=data, ckpt_path=best)
    except USER_ERRORS as exc:
        _finish_wandb(trainer, exit_code=2)
        fail(str(exc))
    except (KeyboardInterrupt, SystemExit) as exc:
        code = run_control.exit_code(exc, signals.received)
        if code is None:
            raise
        run_control.report_interruption(PROG, code, trainer)
        run_control.mark_wandb_interrupted(trainer, signals.received)
        _finish_wandb(trainer, exit_code=code)
        raise SystemExit(code) from None
    finally:
        if owns_run_dir_env:
            os.environ.pop(RUN_DIR_ENV, None)
    _print_run_dir(cli.run_dir, trainer)
    _finish_wandb(trainer)


if __name__ == "__main__":
    main()
