"""Training-step time of the paper MLP with every monitor at its default interval vs no monitor.

Model: 784-512-256-256-10 with tanh (paper MNIST MLP, built inline), batch 128, SGD, random
in-memory data, a real ``pl.Trainer`` (no progress bar, no checkpointing, no validation). The
logger is ``WandbLogger(offline=True)`` on both sides: it is the most expensive sink (histograms and
images are only built for W&B), so the overhead measured is the one users with W&B pay.

Monitors: ``GradInfoMonitor()``, ``GradScaleMonitor()``, ``SaturationMonitor()`` (every
``log_every_n_steps`` = 50 steps), ``NetVarMonitor()`` (20 probe forwards every 100 steps),
``WeightHistMonitor()`` (start and end of fit) and ``NodeCorrelationMonitor()`` (in the test loop
only: no cost in training). Step time is the wall time from the start of batch ``--warmup`` to the
start of batch ``--warmup + --steps``: 100 steps hold exactly two logging steps and one
NetVarMonitor probe, the defaults' steady-state rate. Fit setup and end are excluded (once per fit,
not per step). The test-set statistics add no pass over the data: they are collected in
``trainer.test``, which a run makes anyway. Short fits with and without monitors alternate
in one process, all logging into one offline W&B run; the median of the per-pair ratios is
printed, for wall time and for this process's CPU time (on a machine shared with other work the
CPU-time ratio is the steadier one; W&B's own service process is only in the wall time). One
intra-op thread by default (``--threads``) so a busy machine slows both sides alike. The pairs
scatter by ±15 % on a VM whose speed drifts, so ``--breakdown-repeats`` more fits time what each
monitor spends inside its hooks (:class:`HookTimer`) as a share of the same fits' step time.

Usage: ``python benchmarks/callbacks.py [--repeats 15] [--steps 100] [--warmup 10] [--each]
[--breakdown-repeats 3]`` (``--each`` also times every monitor alone).
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import tempfile
import time
import warnings
from collections import defaultdict
from collections.abc import Callable

import pytorch_lightning as pl
import torch
import torch.nn.functional as F
import wandb
from _checkout import check_checkout
from pytorch_lightning.loggers import WandbLogger
from pytorch_lightning.profilers import Profiler
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from lightning_gaaf.callbacks import (
    GradInfoMonitor,
    GradScaleMonitor,
    NetVarMonitor,
    NodeCorrelationMonitor,
    SaturationMonitor,
    WeightHistMonitor,
)

BATCH_SIZE = 128
MONITORS: dict[str, Callable[[], pl.Callback]] = {
    "GradInfoMonitor": GradInfoMonitor,
    "GradScaleMonitor": GradScaleMonitor,
    "SaturationMonitor": SaturationMonitor,
    "NetVarMonitor": NetVarMonitor,
    "WeightHistMonitor": WeightHistMonitor,
    "NodeCorrelationMonitor": NodeCorrelationMonitor,
}


class Classifier(pl.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(784, 512),
            nn.Tanh(),
            nn.Linear(512, 256),
            nn.Tanh(),
            nn.Linear(256, 256),
            nn.Tanh(),
            nn.Linear(256, 10),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = F.cross_entropy(self(x), y)
        self.log("train/loss", loss)
        return loss

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.01)


class Data(pl.LightningDataModule):
    def __init__(self, n_train: int, n_test: int = 2048) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.train = TensorDataset(
            torch.randn(n_train, 784, generator=g), torch.randint(0, 10, (n_train,), generator=g)
        )
        self.test = TensorDataset(
            torch.randn(n_test, 784, generator=g), torch.randint(0, 10, (n_test,), generator=g)
        )

    def train_dataloader(self):
        return DataLoader(self.train, batch_size=BATCH_SIZE, shuffle=True)

    def test_dataloader(self):
        return DataLoader(self.test, batch_size=BATCH_SIZE)


class HookTimer(Profiler):
    """Lightning profiler summing the wall time of every callback hook while ``running``.

    Lightning wraps each callback hook call in ``profile("[Callback]<state_key>.<hook>")``, so this
    measures what the monitors do inside their hooks directly, per monitor class. It is a share of
    the step measured in the same fits, so a machine whose speed drifts changes it little. Not in
    it: forward pre-hooks (SaturationMonitor's, on logging steps, run inside the model's forward)
    and Lightning's own cost of calling one more callback.
    """

    def __init__(self) -> None:
        super().__init__()
        self.running = False
        self.seconds: dict[str, float] = defaultdict(float)
        self._started: dict[str, float] = {}

    def start(self, action_name: str) -> None:
        if self.running and action_name.startswith("[Callback]"):
            self._started[action_name] = time.perf_counter()

    def stop(self, action_name: str) -> None:
        started = self._started.pop(action_name, None)
        if started is not None:
            self.seconds[action_name] += time.perf_counter() - started

    def by_owner(self) -> dict[str, float]:
        """Seconds per callback class (the state_key starts with the class name)."""
        owners: dict[str, float] = defaultdict(float)
        for action, seconds in self.seconds.items():
            owners[re.match(r"\[Callback\](\w+)", action).group(1)] += seconds
        return owners

    def summary(self) -> str:
        return ""


class StepClock(pl.Callback):
    """Time from the start of batch ``warmup`` to the start of the last batch (first callback)."""

    def __init__(self, warmup: int, last: int, hooks: HookTimer | None) -> None:
        self.warmup, self.last, self.hooks = warmup, last, hooks
        self.start = self.seconds = self.cpu_start = self.cpu_seconds = 0.0

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if trainer.global_step == self.warmup:
            self.start, self.cpu_start = time.perf_counter(), time.process_time()
            if self.hooks is not None:
                self.hooks.running = True
        elif trainer.global_step == self.last:
            self.seconds = time.perf_counter() - self.start
            self.cpu_seconds = time.process_time() - self.cpu_start
            if self.hooks is not None:
                self.hooks.running = False


def step_time(
    names: list[str], steps: int, warmup: int, logger: WandbLogger, hooks: HookTimer | None = None
) -> tuple[float, float]:
    """Wall and CPU (this process) seconds per training step with the named monitors; ``hooks``
    (if given) collects the time spent in callback hooks during the timed steps."""
    clock = StepClock(warmup, warmup + steps, hooks)
    with tempfile.TemporaryDirectory() as root:
        trainer = pl.Trainer(
            accelerator="cpu",
            devices=1,
            max_steps=warmup + steps + 1,
            logger=logger,
            callbacks=[clock] + [MONITORS[n]() for n in names],
            default_root_dir=root,
            enable_checkpointing=False,
            enable_progress_bar=False,
            enable_model_summary=False,
            limit_val_batches=0,
            num_sanity_val_steps=0,
            profiler=hooks,  # None: Lightning's PassThroughProfiler, nothing added to the step
        )
        pl.seed_everything(0, verbose=False)
        trainer.fit(Classifier(), datamodule=Data(n_train=BATCH_SIZE * (warmup + steps + 1)))
    return clock.seconds / steps, clock.cpu_seconds / steps


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=15, help="interleaved (with, without) pairs")
    parser.add_argument("--steps", type=int, default=100, help="timed steps per fit (a multiple of 100)")
    parser.add_argument("--warmup", type=int, default=10, help="untimed steps at the start of each fit")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads (0 = torch default)")
    parser.add_argument("--each", action="store_true", help="also time every monitor alone")
    parser.add_argument(
        "--breakdown-repeats", type=int, default=3, help="fits timing the time inside each monitor's hooks"
    )
    args = parser.parse_args(argv)
    check_checkout()
    if args.threads:
        torch.set_num_threads(args.threads)
    os.environ.setdefault("WANDB_MODE", "offline")
    os.environ.setdefault("WANDB_SILENT", "true")
    warnings.filterwarnings("ignore")
    import logging

    logging.getLogger("pytorch_lightning").setLevel(logging.ERROR)

    configs = {"all monitors": list(MONITORS)}
    if args.each:
        configs.update({name: [name] for name in MONITORS})
    ratios: dict[str, list[float]] = {name: [] for name in configs}
    cpu_ratios: dict[str, list[float]] = {name: [] for name in configs}
    base_times: list[float] = []
    all_hooks, all_steps = HookTimer(), [0.0]
    with tempfile.TemporaryDirectory() as root:
        logger = WandbLogger(offline=True, save_dir=root, project="gaaf-benchmark")
        for r in range(args.repeats):
            for name, monitors in configs.items():
                # Alternate which side runs first so a drifting load favours neither.
                if r % 2 == 0:
                    base = step_time([], args.steps, args.warmup, logger)
                    timed = step_time(monitors, args.steps, args.warmup, logger)
                else:
                    timed = step_time(monitors, args.steps, args.warmup, logger)
                    base = step_time([], args.steps, args.warmup, logger)
                base_times.append(base[0])
                ratios[name].append(timed[0] / base[0])
                cpu_ratios[name].append(timed[1] / base[1])
                print(
                    f"repeat {r + 1}: {name}: {1e3 * timed[0]:.2f} vs {1e3 * base[0]:.2f} ms/step wall, "
                    f"{1e3 * timed[1]:.2f} vs {1e3 * base[1]:.2f} ms/step CPU",
                    flush=True,
                )
        # The hook timer costs a little on every callback hook call, so its fits are separate from
        # the ratio's.
        for _ in range(args.breakdown_repeats):
            all_steps[0] += (
                step_time(list(MONITORS), args.steps, args.warmup, logger, all_hooks)[0] * args.steps
            )
        wandb.finish()
    print(
        f"\nmedian step time without monitors: {1e3 * statistics.median(base_times):.2f} ms (batch {BATCH_SIZE})"
    )
    mine = {owner: s for owner, s in all_hooks.by_owner().items() if owner in MONITORS}
    inside = sum(mine.values())
    print(
        f"time inside the monitors' hooks (all monitors): {100 * inside / all_steps[0]:.2f} % of the step time"
        + "".join(f"; {owner} {100 * s / all_steps[0]:.2f} %" for owner, s in sorted(mine.items()))
    )
    for name, values in ratios.items():
        median, cpu = statistics.median(values), statistics.median(cpu_ratios[name])
        print(
            f"{name}: median ratio {median:.3f} wall ({100 * (median - 1):+.1f} %), {cpu:.3f} CPU time of "
            f"this process ({100 * (cpu - 1):+.1f} %) over {len(values)} pairs"
        )


if __name__ == "__main__":
    main()
