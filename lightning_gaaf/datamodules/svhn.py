"""SVHN (cropped digits): 3x32x32 colour images, 10 classes; training batches get crop (pad 4), no flip."""

from __future__ import annotations

from pathlib import Path

import torch
import torchvision
from torch import Tensor

from lightning_gaaf.datamodules.base import InMemoryImageDataModule


class SVHNDataModule(InMemoryImageDataModule):
    """SVHN from ``<root>/SVHN/{train,test,extra}_32x32.mat`` (read with ``scipy.io.loadmat``).

    73257 official training images (``val_size`` held out, default 5000) and 26032 test images.
    ``use_extra=True`` appends the 531131 ``extra`` images to the training split; the validation
    split is always drawn from ``train`` alone, so it does not change with ``use_extra``.
    Files placed directly in ``<root>`` (where ``torchvision.datasets.SVHN(root)`` puts them) are
    used too. Labels follow torchvision: digit 0 is class 0 (the files store it as 10). Digits are
    not mirror-symmetric, so augmentation is the random crop only.
    """

    name = "svhn"
    display_name = "SVHN"
    num_classes = 10
    input_shape = (3, 32, 32)
    # Per-channel statistics of the 73257 official training images (widely published values).
    mean = (0.4377, 0.4438, 0.4728)
    std = (0.1980, 0.2010, 0.1970)
    crop_padding = 4
    random_flip = False

    def __init__(
        self,
        root: str | None = None,
        batch_size: int = 128,
        val_size: int = 5000,
        seed: int = 0,
        num_workers: int = 0,
        download: bool = True,
        augment: bool = True,
        use_extra: bool = False,
        train_size: int | None = None,
    ) -> None:
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
        self.use_extra = use_extra

    def _splits(self) -> list[str]:
        return ["train", "test", "extra"] if self.use_extra else ["train", "test"]

    def _filenames(self) -> list[str]:
        return [torchvision.datasets.SVHN.split_list[split][1] for split in self._splits()]

    def _dataset_dir(self) -> Path:
        nested = self.root / "SVHN"
        flat_complete = all((self.root / name).is_file() for name in self._filenames())
        nested_complete = all((nested / name).is_file() for name in self._filenames())
        return self.root if flat_complete and not nested_complete else nested

    def _required_files(self) -> list[Path]:
        directory = self._dataset_dir()
        return [directory / name for name in self._filenames()]

    def _download(self) -> None:
        _require_scipy()
        directory = self.root / "SVHN"
        for split, name in zip(self._splits(), self._filenames(), strict=True):
            if not (directory / name).is_file():
                torchvision.datasets.SVHN(str(directory), split=split, download=True)

    def _extra_train_splits(self) -> list[str]:
        return ["extra"] if self.use_extra else []

    def _load_split(self, split: str) -> tuple[Tensor, Tensor]:
        _require_scipy()
        dataset = torchvision.datasets.SVHN(str(self._dataset_dir()), split=split, download=False)
        images = torch.from_numpy(dataset.data).contiguous()  # torchvision already made it (N, C, H, W)
        return images, torch.from_numpy(dataset.labels).to(torch.int64)


def _require_scipy() -> None:
    try:
        import scipy.io  # noqa: F401
    except ImportError:
        raise ImportError("SVHNDataModule reads .mat files with scipy: pip install scipy") from None
