"""Image DataModules that keep each split in memory as one uint8 tensor.

Normalisation and augmentation run per batch on the training device
(:meth:`InMemoryImageDataModule.on_after_batch_transfer`). Dataset roots use torchvision's layout and
default to ``$GAAF_DATA_DIR`` (else ``./data``).
"""

from lightning_gaaf.datamodules.base import (
    DATA_DIR_ENV,
    DatasetCorruptedError,
    DatasetNotFoundError,
    InMemoryImageDataModule,
    InMemoryImageDataset,
    collate_batch,
    resolve_root,
)
from lightning_gaaf.datamodules.cifar import CIFAR10DataModule, CIFAR100DataModule
from lightning_gaaf.datamodules.mnist import FashionMNISTDataModule, MNISTDataModule
from lightning_gaaf.datamodules.sampler import EpochSampler, ResumableDataLoader
from lightning_gaaf.datamodules.svhn import SVHNDataModule

#: DataModule class by short name (the names ``write_synthetic`` accepts).
DATAMODULES: dict[str, type[InMemoryImageDataModule]] = {
    cls.name: cls
    for cls in (
        MNISTDataModule,
        FashionMNISTDataModule,
        CIFAR10DataModule,
        CIFAR100DataModule,
        SVHNDataModule,
    )
}

__all__ = [
    "CIFAR100DataModule",
    "CIFAR10DataModule",
    "DATAMODULES",
    "DATA_DIR_ENV",
    "DatasetCorruptedError",
    "DatasetNotFoundError",
    "EpochSampler",
    "FashionMNISTDataModule",
    "InMemoryImageDataModule",
    "InMemoryImageDataset",
    "MNISTDataModule",
    "ResumableDataLoader",
    "SVHNDataModule",
    "collate_batch",
    "resolve_root",
]
