"""Training-speed parity: gaaf-fit's stack vs a hand-written PyTorch loop, one process, median ratio.

One epoch of the paper's MNIST MLP (784-512-256-256-10, tanh, SGD lr 0.05 momentum 0.9, batch 128)
on in-memory MNIST, timed alternately through

* ``raw``: a plain loop over the same uint8 tensors (shuffle, gather, normalise, forward,
  cross-entropy, backward, step), same model, optimizer and batch size;
* ``lightning``: ``ImageClassifier`` + ``MNISTDataModule`` + ``pl.Trainer(max_epochs=1)`` with no
  logger, no checkpointing, no progress bar, no validation (the stack of ``gaaf-fit``);
* ``lightning barebones``: ``pl.Trainer(barebones=True)``, the floor of Lightning's own loop;
* ``lightning+monitors``: the same as ``lightning`` with the monitors every config enables
  (``GradInfoMonitor``, ``SaturationMonitor`` at their default interval) and a CSV logger for
  them to write to.

Each Trainer is new for each epoch, the DataModule is set up once. Two ratios are printed: the
whole one-epoch fit (Trainer start-up and the monitors' end-of-fit work, such as the test-set pass
and the PNGs, included; both are paid once per fit, not per epoch) and the training epoch measured
inside the fit by a callback. Lightning's own parity test allows +0.3 s per epoch on its MNIST model; our goal is a
median ratio <= 1.15.

    python benchmarks/parity.py [--data-dir DIR] [--epochs 5] [--gaaf]

Data: ``--data-dir`` or ``$GAAF_DATA_DIR`` (torchvision layout); without either, a synthetic
MNIST of full size is written to a temporary folder.
"""

from __future__ import annotations

import argparse
import copy
import os
import platform
import statistics
import sys
import tempfile
import time
import warnings
from collections.abc import Callable

import _thread_policy  # first: torch's OpenMP runtime reads the thread policy at load
import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from _checkout import check_checkout
from pytorch_lightning.loggers import CSVLogger

from lightning_gaaf import apply_gaaf
from lightning_gaaf.datamodules import MNISTDataModule
from lightning_gaaf.datamodules.transforms import normalize
from lightning_gaaf.models import MLP, ImageClassifier

LR, MOMENTUM, BATCH = 0.05, 0.9, 128


def make_backbone(use_gaaf: bool) -> torch.nn.Module:
    torch.manual_seed(0)
    backbone = MLP(activation="tanh")
    if use_gaaf:
        apply_gaaf(backbone)
    return backbone


def raw_epoch(
    backbone: torch.nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    on_step: Callable[[], bool | None] | None = None,
) -> None:
    """One epoch of a fresh copy of ``backbone``; ``on_step`` after each step (True: stop the epoch there)."""
    model = copy.deepcopy(backbone)
    optimizer = torch.optim.SGD(model.parameters(), lr=LR, momentum=MOMENTUM)
    model.train()
    perm = torch.randperm(labels.shape[0])
    for start in range(0, labels.shape[0], BATCH):
        idx = perm[start : start + BATCH]
        x = normalize(images[idx], MNISTDataModule.mean, MNISTDataModule.std)
        loss = F.cross_entropy(model(x), labels[idx])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if on_step is not None and on_step():
            return


def make_classifier(backbone: torch.nn.Module) -> ImageClassifier:
    """A fresh copy of ``backbone`` in the gaaf-fit LightningModule, same optimizer as the raw loop."""
    return ImageClassifier(
        copy.deepcopy(backbone), optimizer=lambda p: torch.optim.SGD(p, lr=LR, momentum=MOMENTUM)
    )


class EpochTimer(pl.Callback):
    """Wall time of the training epoch itself, inside a fit (no Trainer start-up, no fit-end work)."""

    def __init__(self) -> None:
        self.seconds: list[float] = []

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._start = time.perf_counter()

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.seconds.append(time.perf_counter() - self._start)


EPOCH_TIMES: dict[bool, list[float]] = {False: [], True: []}


def lightning_epoch(backbone: torch.nn.Module, dm: MNISTDataModule, monitors: bool, log_dir: str) -> None:
    model = make_classifier(backbone)
    timer = EpochTimer()
    callbacks: list[pl.Callback] = [timer]
    logger: CSVLogger | bool = False
    if monitors:
        from lightning_gaaf.callbacks import GradInfoMonitor, SaturationMonitor

        callbacks += [GradInfoMonitor(), SaturationMonitor()]
        logger = CSVLogger(log_dir, name="parity")
    trainer = pl.Trainer(
        accelerator="cpu",
        devices=1,
        max_epochs=1,
        logger=logger,
        callbacks=callbacks,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=0,
        num_sanity_val_steps=0,
        default_root_dir=log_dir,
    )
    trainer.fit(model, datamodule=dm)
    EPOCH_TIMES[monitors] += timer.seconds


def barebones_epoch(backbone: torch.nn.Module, dm: MNISTDataModule) -> None:
    """The floor of any Trainer: ``barebones=True`` turns off every logging and callback feature."""
    model = make_classifier(backbone)
    trainer = pl.Trainer(
        accelerator="cpu",
        devices=1,
        max_epochs=1,
        barebones=True,
        limit_val_batches=0,
        num_sanity_val_steps=0,
    )
    trainer.fit(model, datamodule=dm)


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", default=os.environ.get("GAAF_DATA_DIR"))
    parser.add_argument("--epochs", type=int, default=5, help="timed epochs per variant")
    parser.add_argument("--gaaf", action="store_true", help="time the GAAF model instead of the plain one")
    args = parser.parse_args(argv)
    check_checkout()
    warnings.filterwarnings("ignore")

    tmp = tempfile.mkdtemp(prefix="gaaf-parity-")
    root = args.data_dir
    if root is None:
        from lightning_gaaf.datamodules.synthetic import write_mnist

        root = write_mnist(tmp, n_train=60_000, n_test=100)
    dm = MNISTDataModule(root=str(root), batch_size=BATCH, download=False)
    dm.setup("fit")
    images, labels = dm.train_dataset.images, dm.train_dataset.labels
    backbone = make_backbone(args.gaaf)

    variants = {
        "raw": lambda: raw_epoch(backbone, images, labels),
        "lightning": lambda: lightning_epoch(backbone, dm, False, tmp),
        "lightning+monitors": lambda: lightning_epoch(backbone, dm, True, tmp),
        "lightning barebones": lambda: barebones_epoch(backbone, dm),
    }
    for fn in variants.values():  # warm-up (allocator, compiled GAAF kernels, imports)
        fn()
    times: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(args.epochs):
        for name, fn in variants.items():
            times[name].append(timed(fn))

    print(f"command: python {' '.join(sys.argv)}")
    print(
        f"torch {torch.__version__}, pytorch-lightning {pl.__version__}, {_thread_policy.POLICY.describe()}, "
        f"{platform.processor() or platform.machine()}"
    )
    print(
        f"model: MLP 784-512-256-256-10 tanh{' + GAAF' if args.gaaf else ''}, {labels.shape[0]} training "
        f"images, batch {BATCH}, {args.epochs} epochs per variant, interleaved"
    )
    base = statistics.median(times["raw"])
    print("whole fit of one epoch (Trainer start-up and fit-end work included):")
    for name, values in times.items():
        med = statistics.median(values)
        print(f"  {name:20s} median {med:7.3f} s/epoch  ratio {med / base:5.3f}  (+{med - base:6.3f} s)")
    print("training epoch inside the fit (on_train_epoch_start -> on_train_epoch_end):")
    for monitors, name in ((False, "lightning"), (True, "lightning+monitors")):
        med = statistics.median(EPOCH_TIMES[monitors][1:])  # the first one belongs to the warm-up
        print(f"  {name:20s} median {med:7.3f} s/epoch  ratio {med / base:5.3f}  (+{med - base:6.3f} s)")


if __name__ == "__main__":
    main()
