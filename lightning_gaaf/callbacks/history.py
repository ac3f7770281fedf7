"""MetricsMonitor: the epoch metrics of a run, saved in its run directory (no W&B needed to read them)."""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from pytorch_lightning.utilities.rank_zero import rank_zero_warn
from torch import Tensor
from typing_extensions import override

from lightning_gaaf.callbacks._base import Monitor
from lightning_gaaf.stats import plots

__all__ = ["MetricsMonitor"]


def _plain(value: Any) -> float | None:
    """A scalar metric as a float (NaN and infinity kept: a diverged run must look like one)."""
    if isinstance(value, torch.Tensor):
        value = value.detach().float().cpu().item() if value.numel() == 1 else None
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    return None


def _label(value: float) -> str:
    return "nan" if math.isnan(value) else "inf" if value > 0 else "-inf"


class FirstNonFinite:
    """The first step whose loss is not finite. On an accelerator it is tracked on the device (no
    host synchronisation per step; only :meth:`result` reads it back); on the CPU reading the value
    is the cheapest check (about 2 us, against 10-40 us per extra tensor op)."""

    def __init__(self) -> None:
        self._found: tuple[int, float] | None = None
        self._step: Tensor | None = None
        self._value: Tensor | None = None

    def update(self, step: int, loss: Tensor) -> None:
        value = loss.detach()
        if value.numel() != 1:
            value = value.float().sum()
        if value.device.type == "cpu":
            if self._found is None and not math.isfinite(number := value.item()):
                self._found = (step, number)
        else:
            self.update_on_device(step, value)

    def update_on_device(self, step: int, value: Tensor) -> None:
        """The accelerator path: a few tensor ops, no synchronisation (any device, CPU included)."""
        value = value.float().reshape(())
        if self._step is None:
            self._step = torch.full((), -1, dtype=torch.long, device=value.device)
            self._value = torch.zeros((), device=value.device)
        hit = torch.isfinite(value).logical_not_().logical_and_(self._step < 0)
        self._step = torch.where(hit, step, self._step)
        self._value = torch.where(hit, value, self._value)

    def result(self) -> tuple[int, float] | None:
        """``(step, value)`` of the first non-finite loss, or None."""
        if self._found is None and self._step is not None and (step := int(self._step.item())) >= 0:
            self._found = (step, float(self._value.item()))
        return self._found


class MetricsMonitor(Monitor):
    """Write ``<run_dir>/stats/metrics.json`` (one record per epoch, the test metrics, divergence)
    and ``<run_dir>/report/metrics.png``.

    Each record holds the epoch (1-based), the global step and every scalar in
    ``trainer.callback_metrics`` once the epoch is complete: after the LightningModule's own
    ``on_train_epoch_end`` (where e.g. ``train/acc`` is often logged) has run, so every epoch has
    its own values. Non-finite values are kept as such. ``test`` holds the metrics of the last test
    run. The file is rewritten after every epoch; an interrupted run keeps what it had
    (``"partial": true``). ``gaaf-fit`` adds this monitor to every run; ``gaaf-reproduce`` and
    ``gaaf-report`` read the file.

    Divergence: the loss every training step returns is checked on its device (no per-step host
    synchronisation), and every epoch record; the first non-finite value is :attr:`diverged`,
    saved as ``"diverged"`` in the file and warned about once.
    """

    statistic = "metrics"

    def __init__(self) -> None:
        super().__init__()
        self.epochs: list[dict[str, float]] = []
        self.test: dict[str, float] = {}
        self._diverged: dict[str, Any] | None = None
        self._loss = FirstNonFinite()
        self._batch_step = 0
        self._pending: dict[str, int] | None = None
        self._trainer: pl.Trainer | None = None

    @property
    def diverged(self) -> dict[str, Any] | None:
        """``{"step": N, "key": name, "value": "nan" | "inf" | "-inf"}`` for the first non-finite value
        seen (``key`` is ``"loss"`` for the loss a training step returned, else the metric's name;
        for a metric, ``step`` is the step of the epoch record holding it); None while all are finite."""
        self._check_loss()
        return self._diverged

    def _found(self, step: int, key: str, value: float) -> None:
        if self._diverged is not None and self._diverged["step"] <= step:
            return
        self._diverged = {"step": step, "key": key, "value": _label(value)}
        rank_zero_warn(f"MetricsMonitor: the run diverged at step {step}: {key} is {_label(value)}")

    def _check_loss(self) -> None:
        found = self._loss.result()
        if found is not None:
            self._found(found[0], "loss", found[1])
            self._loss = FirstNonFinite()

    @staticmethod
    def _scalars(trainer: pl.Trainer, prefix: str | None = None) -> dict[str, float]:
        out = {}
        for key, value in trainer.callback_metrics.items():
            if prefix is not None and not key.startswith(prefix):
                continue
            plain = _plain(value)
            if plain is not None:
                out[key] = plain
        return out

    @override
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        super().setup(trainer, pl_module, stage)
        self._trainer = trainer

    @override
    def on_train_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        self._batch_step = trainer.global_step

    @override
    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        if self._diverged is None:
            loss = outputs.get("loss") if isinstance(outputs, Mapping) else outputs
            if isinstance(loss, Tensor):
                self._loss.update(self._batch_step, loss)

    @override
    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # Callbacks run before the LightningModule's on_train_epoch_end: the record is completed at
        # the next moment (next epoch start, end of training, checkpoint, exception).
        if not trainer.sanity_checking:
            self._pending = {"epoch": trainer.current_epoch + 1, "step": trainer.global_step}

    def _complete(self) -> None:
        self._check_loss()
        if self._pending is None or self._trainer is None:
            return
        record: dict[str, float] = dict(self._pending)
        record.update(self._scalars(self._trainer))
        self._pending = None
        self.epochs = [r for r in self.epochs if r["epoch"] < record["epoch"]] + [record]
        self.mark_recorded()
        for key, value in record.items():
            if not math.isfinite(value):
                self._found(int(record["step"]), key, value)
                break
        self.write(self._trainer)

    @override
    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._complete()

    @override
    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._complete()
        self.save(trainer)

    @override
    def on_test_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.test = self._scalars(trainer, prefix="test/")
        self.mark_recorded()
        self.save(trainer)

    @override
    def on_exception(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException
    ) -> None:
        self._complete()
        super().on_exception(trainer, pl_module, exception)

    @override
    def stats(self) -> dict[str, Any]:
        return {"epochs": list(self.epochs), "test": dict(self.test), "diverged": self._diverged}

    @override
    def draw(self, stats: Mapping[str, Any], out: Path) -> dict[str, Path]:
        if not stats["epochs"]:
            return {}
        return {"gaaf/report/metrics": plots.plot_metrics([("", stats)], out / "metrics.png")}

    @override
    def save(self, trainer: pl.Trainer, partial: bool = False) -> None:
        # Only the file and the figure: the loggers already have these metrics.
        self.flush_logs(trainer)
        stats = self.write(trainer, partial)
        if stats is not None:
            self.report_dir.mkdir(parents=True, exist_ok=True)
            self.draw(stats, self.report_dir)

    @override
    def state_dict(self) -> dict[str, Any]:
        self._complete()  # a checkpoint at the end of an epoch holds that epoch
        return {"epochs": list(self.epochs), "diverged": self._diverged}

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        # Only a fresh process resuming a fit takes the checkpoint's history. ``trainer.test(ckpt_path=
        # "best")`` restores callback state too, and must not cut the history back to the best epoch.
        if not self.epochs:
            self.epochs = list(state_dict.get("epochs", []))
            self._diverged = state_dict.get("diverged")
