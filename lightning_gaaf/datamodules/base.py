"""Shared in-memory base for the image DataModules.

torchvision downloads and parses the files once; after that every split is ONE ``uint8`` tensor
``(N, C, H, W)`` plus ``int64`` labels in host memory. A batch is gathered by index in one op
(``__getitems__``), moved to the device as ``uint8``, and only there converted to float, normalised
and (for training batches) augmented in :meth:`InMemoryImageDataModule.on_after_batch_transfer`.
The validation and test loaders are plain ``DataLoader`` objects, so Lightning can swap in a
``DistributedSampler`` under DDP. The training loader draws its order from an
:class:`~lightning_gaaf.datamodules.sampler.EpochSampler` (a function of the training-order seed and the
epoch, sharded over the ranks) and can resume in the middle of an epoch; the seed is part of the
DataModule's ``state_dict``, so a checkpoint restores the order exactly.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pytorch_lightning as pl
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, default_collate

from lightning_gaaf.datamodules.sampler import EpochSampler, ResumableDataLoader
from lightning_gaaf.datamodules.transforms import normalize, random_crop_flip

DATA_DIR_ENV = "GAAF_DATA_DIR"
DEFAULT_ROOT = "./data"


class DatasetNotFoundError(FileNotFoundError):
    """Dataset files are missing and were not (or could not be) downloaded."""


class DatasetCorruptedError(RuntimeError):
    """Dataset files exist but torchvision could not read or verify them."""


def resolve_root(root: str | os.PathLike[str] | None) -> Path:
    """``root`` if given, else ``$GAAF_DATA_DIR``, else ``./data``."""
    if root is not None and str(root) != "":
        return Path(root).expanduser()
    env = os.environ.get(DATA_DIR_ENV)
    return Path(env).expanduser() if env else Path(DEFAULT_ROOT)


class InMemoryImageDataset(Dataset[tuple[Tensor, Tensor]]):
    """Images ``uint8 (N, C, H, W)`` and labels ``int64 (N,)`` held as two tensors.

    ``DataLoader`` calls :meth:`__getitems__` with the whole list of batch indices when batching
    automatically, so a batch costs one ``index_select`` instead of N ``__getitem__`` calls.
    """

    def __init__(self, images: Tensor, labels: Tensor) -> None:
        if images.dtype != torch.uint8 or images.dim() != 4:
            raise ValueError(f"images must be uint8 (N, C, H, W), got {images.dtype} {tuple(images.shape)}")
        if labels.dtype != torch.int64 or labels.shape != images.shape[:1]:
            raise ValueError(
                f"labels must be int64 ({images.shape[0]},), got {labels.dtype} {tuple(labels.shape)}"
            )
        self.images = images.contiguous()
        self.labels = labels.contiguous()

    def __len__(self) -> int:
        return self.labels.shape[0]

    def __getitem__(self, index: int) -> tuple[Tensor, Tensor]:
        return self.images[index], self.labels[index]

    def __getitems__(self, indices: Sequence[int]) -> tuple[Tensor, Tensor]:
        # numpy's take is single-threaded: a ~100 KB gather gains nothing from torch's intra-op thread
        # pool, and that pool can stall for milliseconds when the CPU cores are oversubscribed.
        idx = np.asarray(indices, dtype=np.int64)
        images = torch.from_numpy(self.images.numpy().take(idx, axis=0))
        return images, torch.from_numpy(self.labels.numpy().take(idx))


def collate_batch(batch: Any) -> tuple[Tensor, Tensor]:
    """Pass through a batch that ``__getitems__`` already gathered; stack a list of samples otherwise."""
    if isinstance(batch, tuple) and len(batch) == 2 and isinstance(batch[0], Tensor) and batch[0].dim() == 4:
        return batch
    images, labels = default_collate(batch)
    return images, labels


class InMemoryImageDataModule(pl.LightningDataModule):
    """Base class: seeded train/val split of the official training set, official test set.

    Subclasses set the class attributes below and implement the four ``_``-hooks that map the
    torchvision dataset onto files and tensors. ``num_classes`` and ``input_shape`` are class
    attributes so a CLI can link them into the model before any data is read.

    Args:
        root: dataset root in torchvision layout; ``None`` reads ``$GAAF_DATA_DIR``, else ``./data``.
        batch_size: images per batch for every split.
        val_size: images held out of the official training split for validation (0 disables it).
        train_size: train on only this many of the remaining images of the official training split
            (``None``: all of them). The subset is the next ``train_size`` images of the same seeded
            permutation that draws the validation images: disjoint from validation, the same for
            every global seed and model, and nested (a smaller size is part of a larger one). Extra
            training splits (SVHN ``use_extra``) are still added whole.
        seed: seed of the train/val split (and training subset) only. The training order follows the global seed
            (``seed_everything``; see :attr:`train_order_seed`), augmentation the global RNG.
        num_workers: DataLoader worker processes; 0 is usually fastest since a batch is one gather.
        download: download missing files with torchvision (never re-downloads existing files).
        augment: apply the dataset's training augmentation to training batches.
    """

    name: ClassVar[str] = ""
    #: number of classes of the labels
    num_classes: ClassVar[int]
    #: (C, H, W) of one image
    input_shape: ClassVar[tuple[int, int, int]]
    #: per-channel mean / std of the official training split, pixel values scaled to [0, 1]
    mean: ClassVar[tuple[float, ...]]
    std: ClassVar[tuple[float, ...]]
    #: training augmentation: zero padding of the random crop (0 = no crop) and horizontal flip
    crop_padding: ClassVar[int] = 0
    random_flip: ClassVar[bool] = False
    #: name used in messages and the folder below ``root`` (torchvision layout)
    display_name: ClassVar[str] = ""

    def __init__(
        self,
        root: str | None = None,
        batch_size: int = 128,
        val_size: int = 10000,
        seed: int = 0,
        num_workers: int = 0,
        download: bool = True,
        augment: bool = True,
        train_size: int | None = None,
    ) -> None:
        super().__init__()
        for field, value, low in (
            ("batch_size", batch_size, 1),
            ("val_size", val_size, 0),
            ("num_workers", num_workers, 0),
            ("train_size", 1 if train_size is None else train_size, 1),
        ):
            if not isinstance(value, int) or isinstance(value, bool) or value < low:
                raise ValueError(f"data.{field} must be an integer >= {low}, got {value!r}")
        self.save_hyperparameters()
        self.root = resolve_root(root)
        self.batch_size = batch_size
        self.val_size = val_size
        self.train_size = train_size
        self.seed = seed
        self.num_workers = num_workers
        self.download = download
        self.augment = augment
        self.train_dataset: InMemoryImageDataset | None = None
        self.val_dataset: InMemoryImageDataset | None = None
        self.test_dataset: InMemoryImageDataset | None = None
        #: indices into the official training split, sorted (set by ``setup``)
        self.train_indices: Tensor | None = None
        self.val_indices: Tensor | None = None
        self._train_order_seed: int | None = None

    # ----------------------------------------------------------------- subclass hooks
    def _dataset_dir(self) -> Path:
        """Directory that holds the files (e.g. ``<root>/MNIST/raw``)."""
        raise NotImplementedError

    def _required_files(self) -> list[Path]:
        """Every file the train and test splits need, in torchvision's layout."""
        raise NotImplementedError

    def _download(self) -> None:
        """Let torchvision download and extract the files into :meth:`_dataset_dir`."""
        raise NotImplementedError

    def _load_split(self, split: str) -> tuple[Tensor, Tensor]:
        """Read one official split (``"train"``, ``"test"``, or an extra training split) with torchvision."""
        raise NotImplementedError

    def _extra_train_splits(self) -> list[str]:
        """Official splits appended to the training data (never to validation); none by default."""
        return []

    # ----------------------------------------------------------------- files
    @property
    def has_augmentation(self) -> bool:
        """Whether training batches are augmented (dataset has augmentation and ``augment=True``)."""
        return self.augment and (self.crop_padding > 0 or self.random_flip)

    def missing_files(self) -> list[Path]:
        """Required files that do not exist (existence only; torchvision verifies checksums on load)."""
        return [path for path in self._required_files() if not path.is_file()]

    def _not_found(self, missing: list[Path], reason: str) -> DatasetNotFoundError:
        directory = self._dataset_dir().absolute()
        files = ", ".join(str(p.absolute()) for p in missing)
        hint = "" if self.download else ", or set data.download=true"
        return DatasetNotFoundError(
            f"{self.display_name} dataset not found in {directory}: missing {files}; {reason}. "
            f"Set data.root (or the {DATA_DIR_ENV} environment variable) to the directory that holds "
            f"{self._dataset_dir().relative_to(self.root).as_posix()}/{hint}."
        )

    def prepare_data(self) -> None:
        """Download missing files (Lightning calls this once per node before ``setup``)."""
        missing = self.missing_files()
        if not missing:
            return
        if not self.download:
            raise self._not_found(missing, "download is disabled (data.download=false)")
        root = Path(self.root).absolute()
        made = [
            p
            for p in (self._dataset_dir().absolute(), *self._dataset_dir().absolute().parents)
            if not p.exists()
        ]
        made = [p for p in made if p == root or root in p.parents]  # only folders at or below the root
        try:
            self._download()
        except Exception as exc:  # offline, HTTP error, bad archive: one clear message instead
            for folder in made:  # a failed download leaves no empty folders behind
                with contextlib.suppress(OSError):
                    if folder.is_dir() and not any(p.is_file() for p in folder.rglob("*")):
                        shutil.rmtree(folder)
            detail = " ".join(str(exc).split()) or "no detail"
            detail = detail if len(detail) <= 300 else detail[:297] + "..."
            reason = f"downloading failed ({type(exc).__name__}: {detail})"
            raise self._not_found(missing, reason) from None
        missing = self.missing_files()
        if missing:
            raise self._not_found(missing, "the download did not produce these files")

    def _load_checked(self, split: str) -> tuple[Tensor, Tensor]:
        try:
            images, labels = self._load_split(split)
        except ImportError:
            raise
        except Exception as exc:
            raise DatasetCorruptedError(
                f"{self.display_name} files in {self._dataset_dir().absolute()} could not be loaded "
                f"({type(exc).__name__}: {str(exc).strip()}); delete them to download again, or point "
                f"data.root / {DATA_DIR_ENV} at intact copies"
            ) from None
        expected = tuple(self.input_shape)
        if tuple(images.shape[1:]) != expected:
            raise DatasetCorruptedError(
                f"{self.display_name} images in {self._dataset_dir().absolute()} have shape "
                f"{tuple(images.shape[1:])}, expected {expected}"
            )
        return images, labels

    # ----------------------------------------------------------------- Lightning hooks
    def setup(self, stage: str | None = None) -> None:
        """Load the splits that ``stage`` needs into memory (once; later calls reuse them)."""
        need_fit = stage in (None, "fit", "validate") and self.train_dataset is None
        need_test = stage in (None, "test") and self.test_dataset is None
        if not (need_fit or need_test):
            return
        self.prepare_data()  # no-op when the files exist (Lightning already ran it)
        if need_fit:
            images, labels = self._load_checked("train")
            n = labels.shape[0]
            if self.val_size >= n:
                raise ValueError(
                    f"data.val_size={self.val_size} leaves no training images: the {self.display_name} "
                    f"training split has {n} images"
                )
            perm = torch.randperm(n, generator=torch.Generator().manual_seed(self.seed))
            left = n - self.val_size
            if self.train_size is not None and self.train_size > left:
                raise ValueError(
                    f"data.train_size={self.train_size} exceeds the {left} training images of the "
                    f"{self.display_name} training split left after data.val_size={self.val_size}"
                )
            end = n if self.train_size is None else self.val_size + self.train_size
            self.val_indices = perm[: self.val_size].sort().values
            self.train_indices = perm[self.val_size : end].sort().values
            train_parts = [(images[self.train_indices], labels[self.train_indices])]
            train_parts += [self._load_checked(split) for split in self._extra_train_splits()]
            self.train_dataset = InMemoryImageDataset(
                torch.cat([part[0] for part in train_parts]), torch.cat([part[1] for part in train_parts])
            )
            self.val_dataset = InMemoryImageDataset(images[self.val_indices], labels[self.val_indices])
        if need_test:
            self.test_dataset = InMemoryImageDataset(*self._load_checked("test"))

    def _loader(self, dataset: InMemoryImageDataset | None, split: str, shuffle: bool) -> DataLoader:
        if dataset is None:
            stage = "test" if split == "test" else "fit"
            raise RuntimeError(f"{type(self).__name__}.setup({stage!r}) must run before {split}_dataloader()")
        return DataLoader(
            dataset,
            batch_size=self.batch_size,
            shuffle=shuffle,
            num_workers=self.num_workers,
            collate_fn=collate_batch,
            persistent_workers=self.num_workers > 0,
        )

    @property
    def train_order_seed(self) -> int:
        """Seed of the training order: epoch ``e`` is the permutation seeded with ``train_order_seed + e``.

        Fixed at first use: the global seed of ``seed_everything`` (``PL_GLOBAL_SEED``); without one, a
        number drawn from torch's global RNG in a single process, 0 under several processes (as
        Lightning's own ``DistributedSampler``). Checkpoints carry it (:meth:`state_dict`).
        """
        if self._train_order_seed is None:
            seed = os.environ.get("PL_GLOBAL_SEED")
            if seed is not None:
                self._train_order_seed = int(seed)
            elif self._world()[0] > 1:
                self._train_order_seed = 0
            else:
                self._train_order_seed = int(torch.randint(0, 2**31 - 1, ()).item())
        return self._train_order_seed

    def _world(self) -> tuple[int, int]:
        trainer = self.trainer
        return (trainer.world_size, trainer.global_rank) if trainer is not None else (1, 0)

    def train_dataloader(self) -> DataLoader:
        """Shuffled batches in an order set by :attr:`train_order_seed` and the epoch, this rank's share.

        The sampler is a ``DistributedSampler`` (over the trainer's ranks), which Lightning keeps and
        advances with ``set_epoch``; the loader's position in the epoch is saved in checkpoints.
        """
        dataset = self.train_dataset
        if dataset is None:
            raise RuntimeError(f"{type(self).__name__}.setup('fit') must run before train_dataloader()")
        num_replicas, rank = self._world()
        return ResumableDataLoader(
            dataset,
            sampler=EpochSampler(dataset, num_replicas=num_replicas, rank=rank, seed=self.train_order_seed),
            batch_size=self.batch_size,
            num_workers=self.num_workers,
            collate_fn=collate_batch,
            persistent_workers=self.num_workers > 0,
        )

    def state_dict(self) -> dict[str, Any]:
        """``{"train_order_seed": ...}``: what a checkpoint needs to continue the training order."""
        return {"train_order_seed": self.train_order_seed}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Take the checkpoint's training-order seed (called by Lightning before the loaders exist)."""
        if "train_order_seed" in state_dict:
            self._train_order_seed = int(state_dict["train_order_seed"])

    def val_dataloader(self) -> DataLoader | list[DataLoader]:
        if self.val_size == 0:
            return []
        return self._loader(self.val_dataset, "val", shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader(self.test_dataset, "test", shuffle=False)

    def on_after_batch_transfer(self, batch: Any, dataloader_idx: int) -> tuple[Tensor, Tensor]:
        """On the device: augment training batches (``uint8``), then normalise every batch to float."""
        images, labels = batch
        trainer = self.trainer
        if self.has_augmentation and trainer is not None and trainer.training:
            images = random_crop_flip(images, self.crop_padding, self.random_flip)
        return normalize(images, self.mean, self.std), labels
