"""MNIST and Fashion-MNIST: 1x28x28 grey images, 10 classes, no augmentation."""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar

import torchvision
from torch import Tensor

from lightning_gaaf.datamodules.base import InMemoryImageDataModule


class MNISTDataModule(InMemoryImageDataModule):
    """MNIST from ``<root>/MNIST/raw/{train,t10k}-{images-idx3,labels-idx1}-ubyte``.

    60000 official training images (``val_size`` of them held out, default 10000) and 10000 test
    images. torchvision only checks that the four raw files exist (no checksum).
    """

    name = "mnist"
    display_name = "MNIST"
    num_classes = 10
    input_shape = (1, 28, 28)
    # Computed from the 60000 official training images.
    mean = (0.1307,)
    std = (0.3081,)
    torchvision_class: ClassVar[type[torchvision.datasets.MNIST]] = torchvision.datasets.MNIST

    def _dataset_dir(self) -> Path:
        return self.root / self.torchvision_class.__name__ / "raw"

    def _required_files(self) -> list[Path]:
        return [
            self._dataset_dir() / f"{prefix}-{kind}-ubyte"
            for prefix in ("train", "t10k")
            for kind in ("images-idx3", "labels-idx1")
        ]

    def _download(self) -> None:
        self.torchvision_class(str(self.root), train=True, download=True)

    def _load_split(self, split: str) -> tuple[Tensor, Tensor]:
        dataset = self.torchvision_class(str(self.root), train=split == "train", download=False)
        return dataset.data.unsqueeze(1).contiguous(), dataset.targets.long()


class FashionMNISTDataModule(MNISTDataModule):
    """Fashion-MNIST from ``<root>/FashionMNIST/raw/`` (same file names and sizes as MNIST)."""

    name = "fashion_mnist"
    display_name = "FashionMNIST"
    # Computed from the 60000 official training images.
    mean = (0.2860,)
    std = (0.3530,)
    torchvision_class = torchvision.datasets.FashionMNIST
