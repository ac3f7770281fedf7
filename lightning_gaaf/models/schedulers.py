"""Learning-rate schedules that follow the trainer's epoch budget."""

from __future__ import annotations

import math

from torch.optim import Optimizer
from torch.optim.lr_scheduler import LRScheduler


class CosineAnnealing(LRScheduler):
    """Cosine decay per epoch from each group's initial LR to ``eta_min`` over ``max_epochs``.

    Unlike ``torch.optim.lr_scheduler.CosineAnnealingLR`` the period may be left unset:
    :class:`~lightning_gaaf.models.ImageClassifier` then sets it to ``trainer.max_epochs``, so a
    ``--trainer.max_epochs N`` override stretches the schedule instead of cutting it off.
    """

    def __init__(
        self, optimizer: Optimizer, max_epochs: int | None = None, eta_min: float = 0.0, last_epoch: int = -1
    ) -> None:
        if max_epochs is not None and max_epochs < 1:
            raise ValueError(f"max_epochs: must be >= 1 or None, got {max_epochs}")
        self.max_epochs = max_epochs
        self.eta_min = eta_min
        super().__init__(optimizer, last_epoch)

    def get_lr(self) -> list[float]:  # type: ignore[override]
        if not self.max_epochs:
            return list(self.base_lrs)
        progress = min(self.last_epoch, self.max_epochs) / self.max_epochs
        factor = 0.5 * (1.0 + math.cos(math.pi * progress))
        return [self.eta_min + (base - self.eta_min) * factor for base in self.base_lrs]
