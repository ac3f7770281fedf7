"""Plumbing shared by the monitors: finding layers, rank reduction, logging, run dir, evaluation passes."""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from fnmatch import fnmatchcase
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from pytorch_lightning.loggers import WandbLogger
from pytorch_lightning.overrides.distributed import UnrepeatedDistributedSampler
from pytorch_lightning.trainer.states import RunningStage
from pytorch_lightning.utilities.data import _update_dataloader
from pytorch_lightning.utilities.model_helpers import is_overridden
from pytorch_lightning.utilities.rank_zero import rank_zero_warn
from pytorch_lightning.utilities.seed import isolate_rng
from torch import Tensor, nn
from torch.utils.data import DataLoader, DistributedSampler, IterableDataset

from lightning_gaaf.activations import GAAF, SUPPORTED_ACTIVATIONS

#: Module types whose ``weight`` counts as a weight layer (paper Eq. 5, Table 2).
WEIGHT_LAYER_TYPES: tuple[type[nn.Module], ...] = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)

SPLITS = ("test", "val")


# ----------------------------------------------------------------------------------------------
# Finding layers
# ----------------------------------------------------------------------------------------------


def weight_layers(model: nn.Module) -> dict[str, nn.Module]:
    """Linear and conv layers with a trainable weight, by qualified module name."""
    return {
        name: m
        for name, m in model.named_modules()
        if isinstance(m, WEIGHT_LAYER_TYPES) and isinstance(getattr(m, "weight", None), nn.Parameter)
    }


def activation_modules(model: nn.Module, include: Sequence[str] | None = None) -> dict[str, nn.Module]:
    """Activation modules by qualified name.

    Without ``include``: every :class:`~lightning_gaaf.activations.GAAF` module and every module of
    a type in ``SUPPORTED_ACTIVATIONS``. With ``include``: every module whose qualified name matches
    one of the globs, whatever its type (for custom activations). The ``base`` inside a GAAF module
    is never listed separately: the GAAF module stands for it.
    """
    found: dict[str, nn.Module] = {}
    gaaf_prefixes: list[str] = []
    for name, module in model.named_modules():
        if not name or any(name.startswith(p) for p in gaaf_prefixes):
            continue
        if isinstance(module, GAAF):
            gaaf_prefixes.append(name + ".")
        if include is None:
            if isinstance(module, (GAAF, *SUPPORTED_ACTIVATIONS)):
                found[name] = module
        elif any(fnmatchcase(name, pattern) for pattern in include):
            found[name] = module
    return found


def plain_activation(module: nn.Module) -> nn.Module:
    """The plain activation behind a module: ``.base`` of a GAAF module, the module itself otherwise."""
    return module.base if isinstance(module, GAAF) else module


def check_include(owner: str, include: Sequence[str] | None) -> list[str] | None:
    if include is None:
        return None
    if isinstance(include, str) or not all(isinstance(p, str) for p in include):
        raise ValueError(
            f"{owner}: include must be a list of name globs such as ['backbone.*'], got {include!r}"
        )
    return list(include)


def require_layers(owner: str, layers: Mapping[str, nn.Module], what: str) -> None:
    if not layers:
        rank_zero_warn(f"{owner}: the model has no {what}; nothing will be recorded")


# ----------------------------------------------------------------------------------------------
# Steps and arguments
# ----------------------------------------------------------------------------------------------


def check_interval(owner: str, field: str, value: int | None, allow_none: bool = True) -> int | None:
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        none = " or None" if allow_none else ""
        raise ValueError(f"{owner}: {field} must be a positive integer{none}, got {value!r}")
    return value


def is_log_step(step: int, every: int) -> bool:
    """Lightning's convention (``log_every_n_steps``): log after steps N-1, 2N-1, ... (0-based)."""
    return every > 0 and (step + 1) % every == 0


# ----------------------------------------------------------------------------------------------
# Ranks and logging
# ----------------------------------------------------------------------------------------------


def all_reduce_sum(trainer: pl.Trainer, tensor: Tensor) -> Tensor:
    """Sum ``tensor`` over all ranks (one collective); identity on one process."""
    if trainer.world_size > 1:
        return trainer.strategy.reduce(tensor, reduce_op="sum")
    return tensor


def wandb_runs(trainer: pl.Trainer) -> list[Any]:
    """The W&B runs of the trainer's WandbLoggers (rank 0 only; empty elsewhere)."""
    if not trainer.is_global_zero:
        return []
    return [lg.experiment for lg in trainer.loggers if isinstance(lg, WandbLogger)]


def log_step(
    trainer: pl.Trainer, scalars: Mapping[str, float], step: int, media: Mapping[str, Any] | None = None
) -> None:
    """Log one step's statistics on rank 0: finite scalars to every logger at ``step``; W&B objects
    (histograms, images, tables) to W&B loggers only, in the same record as the scalars."""
    clean = {k: float(v) for k, v in scalars.items() if v is not None and math.isfinite(v)}
    if not trainer.is_global_zero:
        return
    for logger in trainer.loggers:
        if isinstance(logger, WandbLogger):
            if clean or media:
                logger.experiment.log({**clean, **(media or {}), "trainer/global_step": step})
        elif clean:
            logger.log_metrics(clean, step=step)


def log_summary(trainer: pl.Trainer, metrics: Mapping[str, float]) -> None:
    """Whole-run numbers: W&B run summary for WandbLogger, ``log_metrics`` for other loggers."""
    clean = {k: float(v) for k, v in metrics.items() if v is not None and math.isfinite(v)}
    if not clean or not trainer.is_global_zero:
        return
    for logger in trainer.loggers:
        if isinstance(logger, WandbLogger):
            for key, value in clean.items():
                logger.experiment.summary[key] = value
        else:
            logger.log_metrics(clean, step=trainer.global_step)


def log_images(trainer: pl.Trainer, images: Mapping[str, Path]) -> None:
    """Log PNG files as ``wandb.Image`` on rank 0 (W&B loggers only)."""
    if not images or not wandb_runs(trainer):
        return
    import wandb

    log_step(trainer, {}, trainer.global_step, {key: wandb.Image(str(path)) for key, path in images.items()})


# ----------------------------------------------------------------------------------------------
# Files
# ----------------------------------------------------------------------------------------------


def run_dir(trainer: pl.Trainer) -> Path:
    """The run directory: ``trainer.default_root_dir`` (gaaf-fit points it at ``runs/<config>/<version>``)."""
    return Path(trainer.default_root_dir)


def stats_dir(trainer: pl.Trainer) -> Path:
    path = run_dir(trainer) / "stats"
    path.mkdir(parents=True, exist_ok=True)
    return path


def report_dir(trainer: pl.Trainer) -> Path:
    path = run_dir(trainer) / "report"
    path.mkdir(parents=True, exist_ok=True)
    return path


def _json_safe(obj: Any) -> Any:
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, Mapping):
        return {str(k): _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_json_safe(v) for v in obj]
    if hasattr(obj, "tolist"):  # numpy arrays and scalars
        return _json_safe(obj.tolist())
    return obj


def write_json(path: Path, obj: Any) -> Path:
    """Strict JSON (NaN and inf become null) so any tool can read the statistics."""
    path.write_text(json.dumps(_json_safe(obj), allow_nan=False) + "\n")
    return path


def nan_if_none(values: Sequence[float | None]) -> list[float]:
    return [float("nan") if v is None else float(v) for v in values]


# ----------------------------------------------------------------------------------------------
# Hooks
# ----------------------------------------------------------------------------------------------


class HookSet:
    """Handles of hooks registered together, removed together."""

    def __init__(self) -> None:
        self.handles: list[torch.utils.hooks.RemovableHandle] = []

    def add(self, handle: torch.utils.hooks.RemovableHandle) -> None:
        self.handles.append(handle)

    def remove(self) -> None:
        for handle in self.handles:
            handle.remove()
        self.handles.clear()

    def __bool__(self) -> bool:
        return bool(self.handles)


_EXTRA_FORWARDS = [0]


@contextmanager
def extra_forwards() -> Iterator[None]:
    """Mark forwards a monitor adds itself (NetVariance probes): training-step statistics skip them."""
    _EXTRA_FORWARDS[0] += 1
    try:
        yield
    finally:
        _EXTRA_FORWARDS[0] -= 1


def in_extra_forward() -> bool:
    return _EXTRA_FORWARDS[0] > 0


# ----------------------------------------------------------------------------------------------
# Running the model outside the loops
# ----------------------------------------------------------------------------------------------


def model_input(batch: Any) -> Any:
    """What the model's ``forward`` takes from a batch: the batch itself if it is a tensor, its first
    element for tuples/lists (``(x, y)``), or the ``x``/``input``/``inputs``/``image``/``images`` entry
    of a dict."""
    if isinstance(batch, Tensor):
        return batch
    if isinstance(batch, (tuple, list)) and batch:
        return batch[0]
    if isinstance(batch, Mapping):
        for key in ("x", "input", "inputs", "image", "images"):
            if key in batch:
                return batch[key]
    raise TypeError(
        f"cannot find the model input in a batch of type {type(batch).__name__}: use a tensor, an (x, y) "
        "tuple or a dict with an 'x' entry"
    )


def _dataloaders(trainer: pl.Trainer, pl_module: pl.LightningModule, split: str) -> list[Any] | None:
    hook = f"{split}_dataloader"
    source: Any = trainer.datamodule
    if source is None or not is_overridden(hook, source):
        source = pl_module if is_overridden(hook, pl_module) else None
    if source is None:
        return None
    if split == "test" and isinstance(source, pl.LightningDataModule):
        # Lightning calls setup("test") before serving test data; the fit only set up "fit".
        source.setup("test")
    loaders = getattr(source, hook)()
    if isinstance(loaders, Mapping):
        return list(loaders.values())
    if isinstance(loaders, (list, tuple)):
        return list(loaders)
    return [loaders]


def _shard(trainer: pl.Trainer, loader: Any) -> Any:
    """Give each rank a disjoint part of a plain DataLoader (no padding, so sums are exact).

    Like Lightning, only when ``use_distributed_sampler`` is on and the loader has no distributed
    sampler yet; otherwise the loader is taken to be sharded already.
    """
    if (
        trainer.world_size <= 1
        or not getattr(trainer._accelerator_connector, "use_distributed_sampler", True)
        or not isinstance(loader, DataLoader)
        or isinstance(loader.dataset, IterableDataset)
        or isinstance(loader.sampler, DistributedSampler)
    ):
        return loader
    sampler = UnrepeatedDistributedSampler(
        loader.dataset, num_replicas=trainer.world_size, rank=trainer.global_rank, shuffle=False
    )
    return _update_dataloader(loader, sampler, mode=RunningStage.TESTING)


@contextmanager
def _frozen_eval(trainer: pl.Trainer, pl_module: pl.LightningModule, split: str) -> Iterator[None]:
    """Eval mode, no grad, trainer stage = the split (datamodule hooks then skip train augmentation)."""
    modes = [(m, m.training) for m in pl_module.modules()]
    stage = trainer.state.stage
    trainer.state.stage = RunningStage.TESTING if split == "test" else RunningStage.VALIDATING
    pl_module.eval()
    try:
        with torch.no_grad():
            yield
    finally:
        for module, training in modes:
            module.training = training
        trainer.state.stage = stage


def evaluation_pass(trainer: pl.Trainer, pl_module: pl.LightningModule, split: str, owner: str) -> bool:
    """Run the model in eval mode over the ``split`` dataloader, as Lightning's loops feed it.

    Each rank sees its own shard; hooks registered by the caller collect statistics. Batches go
    through ``on_before_batch_transfer``, the strategy's ``batch_to_device`` (which calls
    ``transfer_batch_to_device`` and ``on_after_batch_transfer`` of the module or datamodule) and the
    precision plugin's forward context, like in ``trainer.test``. The whole split is used (the
    ``limit_*_batches`` of the trainer's own loops do not apply) except under ``fast_dev_run``.
    Returns False (with a warning) when there is no such dataloader.
    """
    try:
        loaders = _dataloaders(trainer, pl_module, split)
    except Exception as err:  # e.g. test files missing: the fit itself succeeded, keep it
        rank_zero_warn(f"{owner}: no {split} data for the end-of-fit pass ({type(err).__name__}: {err})")
        return False
    if not loaders:
        rank_zero_warn(
            f"{owner}: no {split}_dataloader on the datamodule or the LightningModule; skipping the "
            f"{split}-set statistics (set on_fit_end_split/split to 'val' or 'test')"
        )
        return False
    precision = trainer.precision_plugin
    # isolate_rng: creating a DataLoader iterator draws a seed from the global RNG.
    limit = int(trainer.fast_dev_run) if trainer.fast_dev_run else None  # a quick check stays quick
    try:
        with isolate_rng(), _frozen_eval(trainer, pl_module, split):
            for idx, loader in enumerate(loaders):
                for i, batch in enumerate(_shard(trainer, loader)):
                    if limit is not None and i >= limit:
                        break
                    batch = precision.convert_input(batch)
                    batch = pl_module._on_before_batch_transfer(batch, dataloader_idx=idx)
                    batch = trainer.strategy.batch_to_device(batch, dataloader_idx=idx)
                    with precision.forward_context():
                        pl_module(model_input(batch))
    except Exception as err:  # the fit itself succeeded: keep it and the other statistics
        rank_zero_warn(
            f"{owner}: the end-of-fit pass over the {split} data failed ({type(err).__name__}: {err}); "
            "its statistics are left out"
        )
        return False
    return True


class StepHistory:
    """Mixin for monitors that record ``steps`` and per-layer ``history``: both go into checkpoints.

    A resumed fit continues the history. Only a fresh callback takes the checkpoint's history:
    ``trainer.test(ckpt_path="best")`` restores callback state too and must not cut a finished
    history back to the best epoch.
    """

    steps: list[int]
    history: dict[str, Any]

    def state_dict(self) -> dict[str, Any]:
        return {"steps": list(self.steps), "history": self.history}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if not self.steps:
            self.steps = list(state_dict.get("steps", []))
            self.history = state_dict.get("history", {})

    def stats(self) -> dict[str, Any]:
        raise NotImplementedError

    def publish(self, trainer: pl.Trainer, statistic: str, plot: Callable[..., Path]) -> None:
        """Rank 0 at the end of training: ``stats/<statistic>.json``, the per-layer means of
        ``stats()["summary"]`` in the run summary (``gaaf/<statistic>_mean/<layer>``), and
        ``report/<statistic>.png`` logged as ``gaaf/report/<statistic>``."""
        if not trainer.is_global_zero:
            return
        stats = self.stats()
        write_json(stats_dir(trainer) / f"{statistic}.json", stats)
        log_summary(trainer, {f"gaaf/{statistic}_mean/{name}": v for name, v in stats["summary"].items()})
        if self.steps:
            path = plot([("", stats)], report_dir(trainer) / f"{statistic}.png")
            log_images(trainer, {f"gaaf/report/{statistic}": path})


def finite_means(history: Mapping[str, Sequence[float]]) -> dict[str, float]:
    """Mean of the finite values of each layer's history (NaN where there is none)."""
    out = {}
    for name, values in history.items():
        finite = [v for v in values if math.isfinite(v)]
        out[name] = sum(finite) / len(finite) if finite else math.nan
    return out
