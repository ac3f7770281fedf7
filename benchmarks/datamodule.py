"""MNIST training batches per second: in-memory uint8 DataModule vs the usual per-sample torchvision pipeline.

Both sides serve shuffled batches of 128 normalised images from the 60000 official training images
with ``num_workers=0``:

* ``gaaf``: ``MNISTDataModule.train_dataloader()`` (one ``__getitems__`` gather per batch) followed
  by ``on_after_batch_transfer`` (uint8 -> float normalisation of the whole batch);
* ``torchvision``: ``torchvision.datasets.MNIST(transform=Compose([ToTensor(), Normalize(...)]))``
  in a standard ``DataLoader`` (one PIL image and one transform call per sample, then collate).

Repetitions are interleaved in one process and the median of the per-repetition ratios is printed.
Both pipelines run in the main process on small tensors, so the default is one intra-op thread
(``--threads``): the per-sample pipeline is single-threaded either way, and a busy machine then
slows both sides alike instead of stalling torch's thread pool.
Usage: ``python benchmarks/datamodule.py [--data-dir DIR] [--repeats 7] [--threads 1]``; the root
defaults to ``$GAAF_DATA_DIR``, else synthetic full-size MNIST files are written to a temporary
directory.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import torch
import torchvision
from _checkout import check_checkout
from torch.utils.data import DataLoader
from torchvision import transforms

from lightning_gaaf.datamodules import MNISTDataModule
from lightning_gaaf.datamodules.synthetic import write_mnist

BATCH_SIZE = 128


def _rate(next_batch: Callable[[], object], num_batches: int) -> float:
    start = time.perf_counter()
    for _ in range(num_batches):
        next_batch()
    return num_batches / (time.perf_counter() - start)


def _cycle(make_loader: Callable[[], DataLoader]) -> Iterator:
    while True:
        yield from make_loader()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", default=os.environ.get("GAAF_DATA_DIR"), help="root holding MNIST/raw/")
    parser.add_argument("--repeats", type=int, default=7, help="interleaved repetitions")
    parser.add_argument("--gaaf-batches", type=int, default=469, help="batches per repetition (one epoch)")
    parser.add_argument("--torchvision-batches", type=int, default=60, help="batches per repetition")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads (0 = torch default)")
    args = parser.parse_args(argv)
    check_checkout()
    if args.threads > 0:
        torch.set_num_threads(args.threads)

    tmp = None
    if args.data_dir:
        root, source = Path(args.data_dir), "files in --data-dir / GAAF_DATA_DIR"
    else:
        tmp = tempfile.TemporaryDirectory()
        root, source = write_mnist(tmp.name, n_train=60000, n_test=10000), "synthetic full-size MNIST"

    dm = MNISTDataModule(root=str(root), batch_size=BATCH_SIZE, val_size=0, download=False)
    dm.setup("fit")
    gaaf_iter = _cycle(dm.train_dataloader)

    def gaaf_batch() -> object:
        return dm.on_after_batch_transfer(next(gaaf_iter), 0)

    tv_dataset = torchvision.datasets.MNIST(
        str(root),
        train=True,
        download=False,
        transform=transforms.Compose([transforms.ToTensor(), transforms.Normalize(dm.mean, dm.std)]),
    )
    tv_iter = _cycle(lambda: DataLoader(tv_dataset, batch_size=BATCH_SIZE, shuffle=True, num_workers=0))

    def tv_batch() -> object:
        return next(tv_iter)

    # Same output on both sides (up to float rounding): normalised float32 (128, 1, 28, 28).
    x_gaaf, x_tv = gaaf_batch()[0], tv_batch()[0]
    assert x_gaaf.shape == x_tv.shape == (BATCH_SIZE, 1, 28, 28) and x_gaaf.dtype == x_tv.dtype

    gaaf_rates, tv_rates = [], []
    for _ in range(args.repeats):
        gaaf_rates.append(_rate(gaaf_batch, args.gaaf_batches))
        tv_rates.append(_rate(tv_batch, args.torchvision_batches))
    ratios = [g / t for g, t in zip(gaaf_rates, tv_rates, strict=True)]

    print(f"command: python {' '.join(sys.argv)}")
    print(f"data: {source} ({len(dm.train_dataset)} training images), batch size {BATCH_SIZE}, num_workers=0")
    print(
        f"torch {torch.__version__}, torchvision {torchvision.__version__}, "
        f"{torch.get_num_threads()} intra-op threads, {args.repeats} interleaved repetitions"
    )
    print(
        f"gaaf in-memory uint8 + on_after_batch_transfer: {statistics.median(gaaf_rates):10.1f} batches/s (median)"
    )
    print(
        f"torchvision ToTensor + Normalize per sample:     {statistics.median(tv_rates):10.1f} batches/s (median)"
    )
    print(f"speed-up (median of per-repetition ratios): {statistics.median(ratios):.1f}x")
    if tmp is not None:
        tmp.cleanup()


if __name__ == "__main__":
    main()
