"""CIFAR-10 and CIFAR-100: 3x32x32 colour images; training batches get crop (pad 4) + flip."""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar

import torch
import torchvision
from torch import Tensor

from lightning_gaaf.datamodules.base import InMemoryImageDataModule


class CIFAR10DataModule(InMemoryImageDataModule):
    """CIFAR-10 from ``<root>/cifar-10-batches-py/`` (``data_batch_1..5``, ``test_batch``, ``batches.meta``).

    50000 official training images (``val_size`` held out, default 5000) and 10000 test images.
    torchvision verifies the md5 checksum of every batch file on load; ``verify_checksums=False``
    reads files that only have the official layout (a re-packed or subsampled copy, or test data).
    """

    name = "cifar10"
    display_name = "CIFAR10"
    num_classes = 10
    input_shape = (3, 32, 32)
    # Per-channel statistics of the 50000 official training images (widely published values).
    mean = (0.4914, 0.4822, 0.4465)
    std = (0.2470, 0.2435, 0.2616)
    crop_padding = 4
    random_flip = True
    torchvision_class: ClassVar[type[torchvision.datasets.CIFAR10]] = torchvision.datasets.CIFAR10

    def __init__(
        self,
        root: str | None = None,
        batch_size: int = 128,
        val_size: int = 5000,
        seed: int = 0,
        num_workers: int = 0,
        download: bool = True,
        augment: bool = True,
        verify_checksums: bool = True,
        train_size: int | None = None,
    ) -> None:
        self.verify_checksums = verify_checksums
        super().__init__(
            root=root,
            batch_size=batch_size,
            val_size=val_size,
            seed=seed,
            num_workers=num_workers,
            download=download,
            augment=augment,
            train_size=train_size,
        )

    def _dataset_dir(self) -> Path:
        return self.root / self.torchvision_class.base_folder

    def _required_files(self) -> list[Path]:
        cls = self.torchvision_class
        names = [name for name, _ in cls.train_list + cls.test_list] + [cls.meta["filename"]]
        return [self._dataset_dir() / name for name in names]

    def _download(self) -> None:
        self.torchvision_class(str(self.root), train=True, download=True)

    def _load_split(self, split: str) -> tuple[Tensor, Tensor]:
        cls = self.torchvision_class if self.verify_checksums else _without_checksums(self.torchvision_class)
        dataset = cls(str(self.root), train=split == "train", download=False)
        images = torch.from_numpy(dataset.data).permute(0, 3, 1, 2).contiguous()  # HWC -> CHW
        return images, torch.as_tensor(dataset.targets, dtype=torch.int64)


def _without_checksums(cls: type[torchvision.datasets.CIFAR10]) -> type[torchvision.datasets.CIFAR10]:
    """``cls`` reading its pickles after checking only that the files exist (no md5, no class names)."""

    class Unverified(cls):  # type: ignore[misc, valid-type]
        def _check_integrity(self) -> bool:
            names = [name for name, _ in self.train_list + self.test_list]
            return all((Path(self.root) / self.base_folder / name).is_file() for name in names)

        def _load_meta(self) -> None:  # the class names are not used here
            pass

    return Unverified


class CIFAR100DataModule(CIFAR10DataModule):
    """CIFAR-100 (fine labels) from ``<root>/cifar-100-python/`` (``train``, ``test``, ``meta``)."""

    name = "cifar100"
    display_name = "CIFAR100"
    num_classes = 100
    # Per-channel statistics of the 50000 official training images (widely published values).
    mean = (0.5071, 0.4865, 0.4409)
    std = (0.2673, 0.2564, 0.2762)
    torchvision_class = torchvision.datasets.CIFAR100
