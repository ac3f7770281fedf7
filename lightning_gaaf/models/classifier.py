"""ImageClassifier: cross-entropy training of any backbone, configured from YAML by LightningCLI."""

from __future__ import annotations

from typing import Any

import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from pytorch_lightning.cli import LRSchedulerCallable, OptimizerCallable
from torch import nn
from torchmetrics.classification import MulticlassAccuracy

from lightning_gaaf.models.schedulers import CosineAnnealing


def _output_units(backbone: nn.Module) -> int | None:
    """Width of the backbone's last ``nn.Linear`` (its logits for the models in this package)."""
    last = None
    for module in backbone.modules():
        if isinstance(module, nn.Linear):
            last = module
    return None if last is None else last.out_features


class ImageClassifier(pl.LightningModule):
    """Train ``backbone`` with cross-entropy and log loss and accuracy for train/val/test.

    The optimizer and LR scheduler are injected as callables (LightningCLI's dependency-injection
    style), so a YAML file chooses them under ``model.optimizer`` / ``model.lr_scheduler``::

        model:
          backbone: {class_path: lightning_gaaf.models.MLP, init_args: {activation: tanh}}
          optimizer: {class_path: torch.optim.SGD, init_args: {lr: 0.05, momentum: 0.9}}
          lr_scheduler: {class_path: lightning_gaaf.models.CosineAnnealing}

    Logged keys: ``train/loss`` (on the trainer's logging steps), ``train/acc``, ``val/loss``, ``val/acc``, ``test/loss``,
    ``test/acc`` (per epoch, reduced over all ranks).

    Args:
        backbone: any module mapping a batch of images to logits; GAAF is added later by surgery.
        num_classes: number of classes; defaults to the width of the backbone's last linear layer.
        optimizer: ``params -> Optimizer``; ``None`` means SGD(lr=0.01, momentum=0.9).
        lr_scheduler: ``optimizer -> scheduler``, stepped once per epoch; ``None`` keeps the LR constant.
            A :class:`~lightning_gaaf.models.CosineAnnealing` without ``max_epochs`` spans ``trainer.max_epochs``.
        layer_lr_scale: per-module learning-rate factors, e.g. ``{"backbone.fc1": 4.4}``: the parameters
            under each named module get their own optimizer param group whose learning rate is the
            optimizer's times the factor (the rest keep the optimizer's). Lets a plain model take the
            per-layer step sizes that GAAF's larger gradients give it.
    """

    def __init__(
        self,
        backbone: nn.Module,
        num_classes: int | None = None,
        optimizer: OptimizerCallable | None = None,
        lr_scheduler: LRSchedulerCallable | None = None,
        layer_lr_scale: dict[str, float] | None = None,
    ) -> None:
        super().__init__()
        # The backbone is in the state dict; the resolved YAML (run_dir/config.yaml) records its arguments.
        self.save_hyperparameters(ignore=["backbone", "optimizer", "lr_scheduler"])
        units = _output_units(backbone)
        if num_classes is None:
            if units is None:
                raise ValueError(
                    "model.num_classes: cannot infer it from a backbone without nn.Linear; set it"
                )
            num_classes = units
        elif units is not None and units != num_classes:
            raise ValueError(
                f"model.num_classes: the data has {num_classes} classes but the backbone's last linear layer "
                f"has {units} outputs; set the backbone's num_classes to {num_classes}"
            )
        self.backbone = backbone
        self.num_classes = num_classes
        self.optimizer_factory = optimizer
        self.lr_scheduler_factory = lr_scheduler
        self.layer_lr_scale = dict(layer_lr_scale or {})
        self._param_groups()  # a wrong module name or factor fails here, before any training
        # Training accuracy is two counters, not a torchmetrics metric: its update costs ~0.2 ms a
        # step on a 2-core CPU, a few percent of an MLP step (benchmarks/parity.py).
        self.register_buffer("_train_correct", torch.zeros((), dtype=torch.long), persistent=False)
        self.register_buffer("_train_seen", torch.zeros((), dtype=torch.long), persistent=False)
        self.val_acc = MulticlassAccuracy(num_classes, average="micro", validate_args=False)
        self.test_acc = MulticlassAccuracy(num_classes, average="micro", validate_args=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.backbone(x)

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        x, y = batch
        logits = self(x)
        loss = F.cross_entropy(logits, y)
        with torch.no_grad():
            # add_, not +=: augmented assignment would go through nn.Module.__setattr__ every step.
            self._train_correct.add_((logits.argmax(-1) == y).sum())
            self._train_seen.add_(y.numel())
        # Each ``self.log`` costs Lightning bookkeeping, so the per-step loss is logged only on the
        # steps the logger writes (and stays local to each rank: an all-reduce per step would cost
        # more than it tells); train/acc is accumulated here and logged once per epoch.
        if self._is_logging_step():
            self.log("train/loss", loss, on_step=True, on_epoch=False, prog_bar=True)
        return loss

    def _is_logging_step(self) -> bool:
        trainer = self._trainer
        if trainer is None:
            return True
        return (trainer.global_step + 1) % max(trainer.log_every_n_steps, 1) == 0 or trainer.fast_dev_run

    def on_train_epoch_start(self) -> None:
        self._train_correct.zero_()
        self._train_seen.zero_()

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        # Every rank's counters, so that a fit resumed in the middle of an epoch (Lightning does not run
        # on_train_epoch_start again) reports that epoch's accuracy over all its batches. Checkpoints
        # are written on all ranks together, so the gather is matched.
        counts = torch.stack([self._train_correct, self._train_seen])
        if self._trainer is not None and self.trainer.world_size > 1:
            counts = self.all_gather(counts)
        checkpoint["train_acc_counts"] = counts.reshape(-1, 2).tolist()

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        saved = checkpoint.get("train_acc_counts")
        rank = self.global_rank if self._trainer is not None else 0
        if saved and rank < len(saved):
            self._train_correct.fill_(int(saved[rank][0]))
            self._train_seen.fill_(int(saved[rank][1]))

    def on_train_epoch_end(self) -> None:
        # Summed over ranks first: the accuracy of every sample this epoch, whatever each rank saw.
        counts = torch.stack([self._train_correct, self._train_seen]).double()
        if self._trainer is not None:
            counts = self.trainer.strategy.reduce(counts, reduce_op="sum")
        self.log("train/acc", (counts[0] / counts[1].clamp(min=1)).float(), on_step=False, on_epoch=True)

    def _evaluate(
        self, batch: tuple[torch.Tensor, torch.Tensor], stage: str, metric: MulticlassAccuracy
    ) -> torch.Tensor:
        x, y = batch
        logits = self(x)
        loss = F.cross_entropy(logits, y)
        metric(logits, y)
        self.log(f"{stage}/loss", loss, on_step=False, on_epoch=True, sync_dist=True)
        self.log(f"{stage}/acc", metric, on_step=False, on_epoch=True, prog_bar=True)
        return logits.argmax(-1)

    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        self._evaluate(batch, "val", self.val_acc)

    def test_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        """Log test loss and accuracy; return the predicted labels (for per-image analyses)."""
        return self._evaluate(batch, "test", self.test_acc)

    def _param_groups(self) -> list[dict[str, Any]]:
        """One param group per ``layer_lr_scale`` entry (key ``lr_scale``), one for the other parameters."""
        named = dict(self.named_parameters())
        groups, taken = [], set()
        for prefix, scale in self.layer_lr_scale.items():
            if not (isinstance(scale, (int, float)) and scale > 0):
                raise ValueError(f"model.layer_lr_scale: the factor of {prefix!r} must be > 0, got {scale!r}")
            names = [n for n in named if n.startswith(prefix + ".") and n not in taken]
            if not names:
                modules = sorted({n.rsplit(".", 1)[0] for n in named})
                raise ValueError(
                    f"model.layer_lr_scale: no parameters under {prefix!r}; modules with parameters: "
                    f"{', '.join(modules)}"
                )
            taken.update(names)
            groups.append({"params": [named[n] for n in names], "lr_scale": float(scale)})
        rest = [p for n, p in named.items() if n not in taken]
        return ([{"params": rest, "lr_scale": 1.0}] if rest else []) + groups

    def configure_optimizers(self) -> Any:
        params: Any = self._param_groups() if self.layer_lr_scale else self.parameters()
        if self.optimizer_factory is None:
            optimizer = torch.optim.SGD(params, lr=0.01, momentum=0.9)
        else:
            optimizer = self.optimizer_factory(params)
        for group in optimizer.param_groups:  # before any scheduler records its initial_lr
            group["lr"] *= group.get("lr_scale", 1.0)
        if self.lr_scheduler_factory is None:
            return optimizer
        scheduler = self.lr_scheduler_factory(optimizer)
        if isinstance(scheduler, CosineAnnealing) and scheduler.max_epochs is None:
            max_epochs = self.trainer.max_epochs
            if max_epochs is None or max_epochs < 1:
                raise ValueError(
                    "model.lr_scheduler: CosineAnnealing needs max_epochs when trainer.max_epochs is unset"
                )
            scheduler.max_epochs = max_epochs
        config: dict[str, Any] = {"scheduler": scheduler, "interval": "epoch"}
        if isinstance(scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
            config["monitor"] = getattr(scheduler, "monitor", "val/loss")
        return {"optimizer": optimizer, "lr_scheduler": config}
