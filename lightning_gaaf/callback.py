"""GAAFCallback: one line in a Trainer (or a LightningCLI YAML) turns any model into its GAAF variant."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pytorch_lightning as pl
from pytorch_lightning.utilities import rank_zero_info
from typing_extensions import override

from lightning_gaaf.activations import DEFAULT_K, GAAF
from lightning_gaaf.surgery import GAAFReport, Policy, PolicyMapping, apply_gaaf, as_policy, resolve_targets

__all__ = ["GAAFCallback"]


class GAAFCallback(pl.Callback):
    """Apply :func:`~lightning_gaaf.apply_gaaf` to the LightningModule in ``setup``.

    ``setup`` runs before optimizers are created and before the strategy wraps the model (DDP,
    FSDP), so the optimizer sees the final modules and every rank gets the same surgery. GAAF adds no
    parameters and keeps ``state_dict`` keys, so checkpoints resume into the same model.

    The options are those of :func:`~lightning_gaaf.apply_gaaf`. In a LightningCLI config::

        trainer:
          callbacks:
            - class_path: lightning_gaaf.GAAFCallback
              init_args: {K: 10000, shape: gauss, shape_kwargs: {c: 3.0}}

    ``policy`` is there either the import path of a callable (``policy: my_pkg.layer_policy``) or a
    mapping ``{name glob: options or null}`` where the first matching glob wins and unmatched names
    get the options above (:mod:`~lightning_gaaf.surgery.policy`)::

              init_args:
                policy: {"backbone.features.*": {K: 100000}, "backbone.head.*": null}

    A mapping is checked here, so a bad glob or option fails before any data is loaded.

    The report (count and names of replaced modules, K, shape) goes to every logger's
    hyper-parameters under ``gaaf/...``.

    Args:
        targets: activation names (``tanh``, ``relu``...), classes or class paths to replace; default
            every activation of the catalogue.
        include: glob pattern(s) on qualified module names that must match (default: all).
        exclude: glob pattern(s) on qualified module names to leave alone.
        K: sawtooth frequency of g(x); the forward value moves by less than 0.5/K.
        shape: shape function s(x) (``gauss``, ``shifted_sigmoid``, ``one``); default the activation's own.
        shape_kwargs: parameters of the shape function, e.g. ``{c: 3.0}`` for ``gauss``.
        functional: also rewrite functional activation calls inside ``forward`` (torch.fx).
        policy: per-layer options: ``{name glob: options or null}`` (first match wins) or the import path
            of a callable ``(name, module) -> options | None``.
    """

    def __init__(
        self,
        targets: Sequence[str] | None = None,
        include: Sequence[str] | str | None = None,
        exclude: Sequence[str] | str | None = None,
        K: float | None = DEFAULT_K,
        shape: str | None = None,
        shape_kwargs: dict[str, float] | None = None,
        functional: bool = False,
        policy: PolicyMapping | Policy | None = None,
    ) -> None:
        super().__init__()
        self.options: dict[str, Any] = dict(
            targets=list(targets) if targets is not None else None,
            include=include,
            exclude=exclude,
            K=K,
            shape=shape,
            shape_kwargs=dict(shape_kwargs) if shape_kwargs else None,
            functional=functional,
        )
        self.policy: Policy | None = as_policy(policy)
        # Validate now, so that a bad YAML fails before any data is loaded.
        GAAF("tanh", shape=shape, K=K, **(shape_kwargs or {}))
        resolve_targets(self.options["targets"])
        self.report: GAAFReport | None = None

    @override
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if self.report is not None or any(isinstance(m, GAAF) for m in pl_module.modules()):
            return  # already applied (setup runs once per stage: fit, then test)
        self.report = apply_gaaf(pl_module, **self.options, policy=self.policy)
        rank_zero_info(f"GAAF: {self.report.summary()}")
        hparams = {
            "gaaf/replaced": self.report.count,
            "gaaf/modules": sorted(self.report),
            "gaaf/skipped": sorted(self.report.skipped),
            "gaaf/K": self.options["K"],
            # not gaaf/shape: the config's own gaaf.shape (often null) is logged under that key
            "gaaf/shapes": sorted({repr(r.new.shape) for r in self.report.values()}),
        }
        for logger in trainer.loggers:
            logger.log_hyperparams(hparams)

    @override
    def state_dict(self) -> dict[str, Any]:
        return {"options": self.options, "modules": sorted(self.report) if self.report else []}
