"""DataModules on tiny synthetic files in torchvision's formats, loaded through the real code path."""

from __future__ import annotations

import inspect
import math
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import pytorch_lightning as pl
import torch
import torch.nn.functional as F
import torchvision
from _data_helpers import block_downloads, bypass_checksums
from pytorch_lightning.trainer.states import RunningStage
from pytorch_lightning.utilities.data import _update_dataloader
from torch import nn
from torch.utils.data import DistributedSampler

from lightning_gaaf.datamodules import (
    DATAMODULES,
    CIFAR10DataModule,
    CIFAR100DataModule,
    DatasetCorruptedError,
    DatasetNotFoundError,
    FashionMNISTDataModule,
    InMemoryImageDataModule,
    InMemoryImageDataset,
    MNISTDataModule,
    SVHNDataModule,
)
from lightning_gaaf.datamodules.sampler import EpochSampler
from lightning_gaaf.datamodules.synthetic import write_cifar10, write_mnist, write_svhn, write_synthetic
from lightning_gaaf.datamodules.transforms import normalize, random_crop_flip

N_TRAIN, N_TEST, VAL = 240, 60, 40
NAMES = list(DATAMODULES)
pytestmark = pytest.mark.filterwarnings("ignore::pytorch_lightning.utilities.warnings.PossibleUserWarning")

# First expected file of each dataset, relative to the root (torchvision layout).
FIRST_FILE = {
    "mnist": "MNIST/raw/train-images-idx3-ubyte",
    "fashion_mnist": "FashionMNIST/raw/train-images-idx3-ubyte",
    "cifar10": "cifar-10-batches-py/data_batch_1",
    "cifar100": "cifar-100-python/train",
    "svhn": "SVHN/train_32x32.mat",
}


@pytest.fixture(scope="module")
def synthetic_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("data")
    for name in NAMES:
        assert write_synthetic(name, root, N_TRAIN, N_TEST, seed=0) == root
    return root


@pytest.fixture(autouse=True)
def _checksums_and_no_network(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    bypass_checksums(monkeypatch)
    return block_downloads(monkeypatch)


def _dm(name: str, root: Path, **kwargs) -> InMemoryImageDataModule:
    kwargs.setdefault("val_size", VAL)
    kwargs.setdefault("batch_size", 32)
    return DATAMODULES[name](root=str(root), download=False, **kwargs)


def _torchvision_dataset(name: str, root: Path, train: bool):
    tv = torchvision.datasets
    if name == "svhn":
        return tv.SVHN(str(root / "SVHN"), split="train" if train else "test")
    cls = {
        "mnist": tv.MNIST,
        "fashion_mnist": tv.FashionMNIST,
        "cifar10": tv.CIFAR10,
        "cifar100": tv.CIFAR100,
    }
    return cls[name](str(root), train=train)


def test_public_classes_share_the_base_and_expose_shapes_before_setup():
    expected = {
        "mnist": (MNISTDataModule, 10, (1, 28, 28), 10000),
        "fashion_mnist": (FashionMNISTDataModule, 10, (1, 28, 28), 10000),
        "cifar10": (CIFAR10DataModule, 10, (3, 32, 32), 5000),
        "cifar100": (CIFAR100DataModule, 100, (3, 32, 32), 5000),
        "svhn": (SVHNDataModule, 10, (3, 32, 32), 5000),
    }
    assert set(DATAMODULES) == set(expected)
    for name, (cls, num_classes, shape, val_size) in expected.items():
        assert DATAMODULES[name] is cls and issubclass(cls, InMemoryImageDataModule)
        assert issubclass(cls, pl.LightningDataModule)
        assert (cls.num_classes, cls.input_shape) == (num_classes, shape)  # no instance, no files needed
        assert len(cls.mean) == len(cls.std) == shape[0]
        params = inspect.signature(cls.__init__).parameters
        assert params["val_size"].default == val_size
        assert [
            params[p].default for p in ("root", "batch_size", "seed", "num_workers", "download", "augment")
        ] == [
            None,
            128,
            0,
            0,
            True,
            True,
        ]
    assert inspect.signature(SVHNDataModule.__init__).parameters["use_extra"].default is False


@pytest.mark.parametrize("name", NAMES)
def test_splits_load_through_torchvision_as_uint8_tensors(name: str, synthetic_root: Path):
    dm = _dm(name, synthetic_root)
    dm.setup("fit")
    dm.setup("test")
    sizes = {"train": N_TRAIN - VAL, "val": VAL, "test": N_TEST}
    for split, size in sizes.items():
        ds = getattr(dm, f"{split}_dataset")
        assert isinstance(ds, InMemoryImageDataset)
        assert ds.images.dtype == torch.uint8 and ds.images.shape == (size, *dm.input_shape)
        assert ds.labels.dtype == torch.int64 and ds.labels.shape == (size,)
        assert 0 <= int(ds.labels.min()) and int(ds.labels.max()) < dm.num_classes
    # Same pixels and labels as torchvision's own per-sample (PIL) path, at the split's indices.
    tv_train, tv_test = (
        _torchvision_dataset(name, synthetic_root, True),
        _torchvision_dataset(name, synthetic_root, False),
    )
    for ds, tv, indices in (
        (dm.train_dataset, tv_train, dm.train_indices),
        (dm.val_dataset, tv_train, dm.val_indices),
        (dm.test_dataset, tv_test, torch.arange(N_TEST)),
    ):
        for pos in (0, 7, len(ds) - 1):
            img, label = tv[int(indices[pos])]
            pil = torch.from_numpy(np.array(img))
            pil = pil[None] if pil.dim() == 2 else pil.permute(2, 0, 1)
            assert torch.equal(ds.images[pos], pil)
            assert int(ds.labels[pos]) == label


@pytest.mark.parametrize("name", ["mnist", "svhn"])
def test_training_subset_is_seeded_nested_and_disjoint_from_validation(name: str, synthetic_root: Path):
    full = _dm(name, synthetic_root)
    small, small_again, large = (_dm(name, synthetic_root, train_size=n) for n in (50, 50, 120))
    for dm in (full, small, small_again, large):
        dm.setup("fit")
    assert (small.train_indices.numel(), large.train_indices.numel()) == (50, 120)
    assert torch.equal(small.train_indices, small_again.train_indices)  # drawn once, by data.seed
    assert torch.equal(
        small.train_dataset.images,
        full.train_dataset.images[torch.isin(full.train_indices, small.train_indices)],
    )
    for dm in (small, large):
        assert torch.equal(dm.val_indices, full.val_indices)  # the same validation images
        assert not torch.isin(dm.train_indices, dm.val_indices).any()
    assert torch.isin(small.train_indices, large.train_indices).all()  # nested
    assert len(small.train_dataset) == (50 + N_TRAIN if name == "svhn" and small.use_extra else 50)
    everything = _dm(name, synthetic_root, train_size=N_TRAIN - VAL)
    everything.setup("fit")
    assert torch.equal(everything.train_indices, full.train_indices)
    assert torch.equal(everything.train_dataset.images, full.train_dataset.images)
    other = _dm(name, synthetic_root, train_size=50, seed=1)
    other.setup("fit")
    assert not torch.equal(other.train_indices, small.train_indices)


def test_training_subset_errors_name_the_field(synthetic_root: Path):
    with pytest.raises(ValueError, match="data.train_size must be an integer >= 1, got 0"):
        MNISTDataModule(train_size=0)
    too_many = _dm("mnist", synthetic_root, train_size=N_TRAIN - VAL + 1)
    with pytest.raises(
        ValueError,
        match=rf"data.train_size=201 exceeds the 200 training images of the MNIST training split left after data.val_size={VAL}",
    ):
        too_many.setup("fit")


@pytest.mark.parametrize("name", NAMES)
def test_validation_split_is_seeded(name: str, synthetic_root: Path):
    a, b, c = (_dm(name, synthetic_root, seed=s) for s in (0, 0, 1))
    for dm in (a, b, c):
        dm.setup("fit")
    assert torch.equal(a.val_indices, b.val_indices) and torch.equal(
        a.train_dataset.images, b.train_dataset.images
    )
    assert not torch.equal(a.val_indices, c.val_indices)
    for dm in (a, c):
        both = torch.cat([dm.train_indices, dm.val_indices])
        assert torch.equal(
            both.sort().values, torch.arange(N_TRAIN)
        )  # disjoint, covers the official train split


def test_batches_are_gathered_with_one_getitems_call(synthetic_root: Path, monkeypatch: pytest.MonkeyPatch):
    dm = _dm("cifar10", synthetic_root, batch_size=64)
    dm.setup("fit")
    calls: list[int] = []
    original = InMemoryImageDataset.__getitems__

    def counting(self, indices):
        calls.append(len(indices))
        return original(self, indices)

    def per_sample(self, index):
        raise AssertionError("a batch must not be fetched one sample at a time")

    monkeypatch.setattr(InMemoryImageDataset, "__getitems__", counting)
    monkeypatch.setattr(InMemoryImageDataset, "__getitem__", per_sample)
    n = len(dm.train_dataset)
    batches = list(dm.train_dataloader())
    assert calls == [64, 64, 64, n - 192]  # one call per batch, last one partial
    assert [tuple(x.shape) for x, _ in batches] == [(k, 3, 32, 32) for k in calls]
    assert all(x.dtype == torch.uint8 and y.dtype == torch.int64 for x, y in batches)
    labels = torch.cat([y for _, y in batches])
    assert torch.equal(labels.sort().values, dm.train_dataset.labels.sort().values)  # each sample once
    assert not torch.equal(labels, dm.train_dataset.labels)  # training order is shuffled
    val_labels = torch.cat([y for _, y in dm.val_dataloader()])
    assert torch.equal(val_labels, dm.val_dataset.labels)  # validation order is fixed


def test_worker_processes_serve_the_same_batches(synthetic_root: Path):
    dm = _dm("svhn", synthetic_root, batch_size=50, num_workers=2)
    dm.setup("test")
    loader = dm.test_dataloader()
    assert loader.num_workers == 2 and loader.persistent_workers
    batches = list(loader)
    assert [len(y) for _, y in batches] == [50, 10]
    assert torch.equal(torch.cat([x for x, _ in batches]), dm.test_dataset.images)
    assert torch.equal(torch.cat([y for _, y in batches]), dm.test_dataset.labels)


def test_training_sampler_is_sharded_over_the_trainers_ranks_and_kept_by_lightning(synthetic_root: Path):
    dm = _dm("mnist", synthetic_root, batch_size=16)
    dm.setup("fit")
    trainer = pl.Trainer(accelerator="cpu", strategy="ddp", devices=2, logger=False)  # not launched
    dm.trainer = trainer
    original = dm.train_dataloader()
    loader = trainer._data_connector._prepare_dataloader(original, shuffle=True, mode=RunningStage.TRAINING)
    # The training sampler is already a DistributedSampler over the trainer's 2 ranks: Lightning keeps it.
    assert loader is original
    assert isinstance(loader.sampler, EpochSampler) and isinstance(loader.sampler, DistributedSampler)
    assert (loader.sampler.num_replicas, loader.sampler.rank) == (2, 0)
    assert loader.sampler.shuffle and loader.batch_size == 16
    x, y = next(iter(loader))
    assert x.shape == (16, 1, 28, 28) and x.dtype == torch.uint8
    # Both ranks together see every training image exactly once per epoch.
    seen = []
    for rank in (0, 1):
        sampler = EpochSampler(dm.train_dataset, num_replicas=2, rank=rank, seed=dm.train_order_seed)
        rank_loader = _update_dataloader(dm.train_dataloader(), sampler)
        seen += [img for x, _ in rank_loader for img in x]
    assert len(seen) == len(dm.train_dataset)
    ref = {img.numpy().tobytes() for img in dm.train_dataset.images}
    assert {img.numpy().tobytes() for img in seen} == ref


def _images_with_moments(mean: tuple[float, ...], std: tuple[float, ...], n: int = 200_000) -> torch.Tensor:
    """uint8 (n, C, 1, 1) two-valued data {0, v} whose per-channel mean/std equal the constants (up to rounding)."""
    channels = []
    for m, s in zip(mean, std, strict=True):
        p = m * m / (m * m + s * s)  # fraction of pixels at the high value v, with E = p v, Var = p(1-p) v^2
        v = round(255 * (m * m + s * s) / m)
        k = round(p * n)
        channels.append(torch.cat([torch.full((k,), v), torch.zeros(n - k)]).to(torch.uint8))
    return torch.stack(channels, 1)[:, :, None, None]


@pytest.mark.parametrize("name", NAMES)
def test_normalisation_runs_after_transfer_and_uses_the_dataset_constants(name: str):
    cls = DATAMODULES[name]
    dm = cls(root="unused", download=False)  # normalising needs no files
    x = _images_with_moments(cls.mean, cls.std)
    out, y = dm.on_after_batch_transfer((x, torch.zeros(len(x), dtype=torch.int64)), 0)
    assert out.dtype == torch.float32 and out.shape == x.shape
    assert torch.allclose(out.mean(dim=(0, 2, 3)), torch.zeros(len(cls.mean)), atol=0.01)
    assert torch.allclose(out.std(dim=(0, 2, 3)), torch.ones(len(cls.mean)), atol=0.01)
    raw = torch.randint(0, 256, (8, *cls.input_shape), dtype=torch.uint8)
    mean = torch.tensor(cls.mean).view(1, -1, 1, 1)
    std = torch.tensor(cls.std).view(1, -1, 1, 1)
    out, _ = dm.on_after_batch_transfer((raw, torch.zeros(8, dtype=torch.int64)), 0)
    assert torch.allclose(out, (raw / 255.0 - mean) / std, atol=1e-5)  # no trainer attached: no augmentation
    with pytest.raises(TypeError, match="uint8"):
        normalize(out, cls.mean, cls.std)


def _candidates(img: np.ndarray, padding: int, flip: bool) -> list[np.ndarray]:
    c, h, w = img.shape
    padded = np.pad(img, ((0, 0), (padding, padding), (padding, padding)))
    crops = [
        padded[:, dy : dy + h, dx : dx + w] for dy in range(2 * padding + 1) for dx in range(2 * padding + 1)
    ]
    return crops + ([crop[:, :, ::-1] for crop in crops] if flip else [])


@pytest.mark.parametrize("flip", [True, False])
def test_random_crop_flip_shifts_and_flips_each_sample_independently(flip: bool):
    x = torch.randint(1, 256, (64, 3, 8, 8), dtype=torch.uint8)  # no zeros, so every shift is distinct
    out = random_crop_flip(x, padding=2, flip=flip, generator=torch.Generator().manual_seed(0))
    assert out.shape == x.shape and out.dtype == torch.uint8
    chosen = []
    for img, res in zip(x.numpy(), out.numpy(), strict=True):
        matches = [i for i, cand in enumerate(_candidates(img, 2, flip)) if np.array_equal(cand, res)]
        assert len(matches) == 1
        chosen.append(matches[0])
    assert len(set(chosen)) > 10  # per-sample offsets, not one offset per batch
    if flip:
        assert any(i >= 25 for i in chosen) and any(i < 25 for i in chosen)
    # Same generator seed, same result; the global RNG is used when no generator is given.
    again = random_crop_flip(x, padding=2, flip=flip, generator=torch.Generator().manual_seed(0))
    assert torch.equal(out, again)
    torch.manual_seed(5)
    first = random_crop_flip(x, padding=2, flip=flip)
    torch.manual_seed(5)
    assert torch.equal(first, random_crop_flip(x, padding=2, flip=flip))
    assert not torch.equal(first, random_crop_flip(x, padding=2, flip=flip))


class _Recorder(pl.LightningModule):
    """Linear classifier that keeps every batch it is given, per stage."""

    def __init__(self, in_features: int, num_classes: int) -> None:
        super().__init__()
        self.net = nn.Linear(in_features, num_classes)
        self.seen: dict[str, list[torch.Tensor]] = {"train": [], "val": [], "test": []}

    def _step(self, batch, stage: str) -> torch.Tensor:
        x, y = batch
        self.seen[stage].append(x.detach().clone())
        return F.cross_entropy(self.net(x.flatten(1)), y)

    def training_step(self, batch, batch_idx):
        return self._step(batch, "train")

    def validation_step(self, batch, batch_idx):
        self._step(batch, "val")

    def test_step(self, batch, batch_idx):
        self._step(batch, "test")

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.01)


def _fraction_unchanged(batches: list[torch.Tensor], dm: InMemoryImageDataModule, dataset) -> float:
    """Share of received images that are (after undoing the normalisation) exact stored images."""
    x = torch.cat(batches)
    assert x.dtype == torch.float32
    mean = torch.tensor(dm.mean).view(1, -1, 1, 1)
    std = torch.tensor(dm.std).view(1, -1, 1, 1)
    pixels = (x * std + mean) * 255
    assert torch.allclose(pixels, pixels.round(), atol=1e-3)  # normalised exactly once
    stored = {img.numpy().tobytes() for img in dataset.images}
    raw = pixels.round().to(torch.uint8)
    return sum(img.numpy().tobytes() in stored for img in raw) / len(raw)


@pytest.mark.parametrize(
    ("name", "augment", "augmented"),
    [("cifar10", True, True), ("cifar10", False, False), ("svhn", True, True), ("mnist", True, False)],
)
def test_real_trainer_augments_training_batches_only(
    name: str, augment: bool, augmented: bool, synthetic_root: Path, tmp_path: Path
):
    dm = _dm(name, synthetic_root, augment=augment)
    model = _Recorder(math.prod(dm.input_shape), dm.num_classes)
    trainer = pl.Trainer(
        accelerator="cpu",
        max_epochs=1,
        limit_train_batches=3,
        limit_val_batches=2,
        limit_test_batches=2,
        num_sanity_val_steps=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=tmp_path,
    )
    pl.seed_everything(0)
    trainer.fit(model, datamodule=dm)
    trainer.test(model, datamodule=dm, verbose=False)
    assert [len(model.seen[s]) for s in ("train", "val", "test")] == [3, 3, 2]  # val: sanity check + 2
    assert dm.has_augmentation == augmented
    train_unchanged = _fraction_unchanged(model.seen["train"], dm, dm.train_dataset)
    if augmented:
        assert train_unchanged < 0.1  # an identity crop (and no flip) is drawn ~1/81 (~1/162) of the time
    else:
        assert train_unchanged == 1.0
    assert _fraction_unchanged(model.seen["val"], dm, dm.val_dataset) == 1.0
    assert _fraction_unchanged(model.seen["test"], dm, dm.test_dataset) == 1.0
    # Validation is neither shuffled nor augmented: its first batch is the normalised first images.
    first = dm.val_dataset.images[: dm.batch_size]
    assert torch.allclose(model.seen["val"][0], normalize(first, dm.mean, dm.std))


def test_val_size_zero_trains_on_the_whole_split(synthetic_root: Path, tmp_path: Path):
    dm = _dm("mnist", synthetic_root, val_size=0)
    model = _Recorder(28 * 28, 10)
    trainer = pl.Trainer(
        accelerator="cpu",
        max_epochs=1,
        limit_train_batches=2,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=tmp_path,
    )
    trainer.fit(model, datamodule=dm)
    assert len(dm.train_dataset) == N_TRAIN and dm.val_dataloader() == []
    assert len(model.seen["train"]) == 2 and model.seen["val"] == []


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("download", [False, True])
def test_missing_files_raise_one_clear_error(
    name: str, download: bool, tmp_path: Path, _checksums_and_no_network: list[str]
):
    attempts = _checksums_and_no_network
    dm = DATAMODULES[name](root=str(tmp_path), download=download)
    with pytest.raises(DatasetNotFoundError) as info:
        dm.setup("fit")
    err = info.value
    msg = str(err)
    assert isinstance(err, FileNotFoundError)
    assert msg.startswith(f"{dm.display_name} dataset not found in {tmp_path}")
    assert str(tmp_path / FIRST_FILE[name]) in msg
    assert "data.root" in msg and "GAAF_DATA_DIR" in msg
    assert err.__cause__ is None and (err.__context__ is None or err.__suppress_context__)
    if download:
        assert attempts, "download=True must try to download missing files"
        assert "downloading failed" in msg and "data.download=true" not in msg
        assert "Temporary failure in name resolution" in msg  # the reason, without torchvision's traceback
    else:
        assert attempts == []
        assert "download is disabled (data.download=false)" in msg and "data.download=true" in msg


@pytest.mark.parametrize("name", NAMES)
def test_existing_files_are_not_downloaded_again(
    name: str, synthetic_root: Path, _checksums_and_no_network: list[str]
):
    dm = DATAMODULES[name](root=str(synthetic_root), val_size=VAL, download=True)
    dm.prepare_data()
    dm.setup("fit")
    assert _checksums_and_no_network == [] and len(dm.train_dataset) == N_TRAIN - VAL


def test_package_keeps_torchvision_checksums(synthetic_root: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.undo()  # real torchvision checks: synthetic CIFAR files do not match the published md5s
    with pytest.raises(
        DatasetCorruptedError, match=r"CIFAR10 files in .*cifar-10-batches-py could not be loaded"
    ):
        _dm("cifar10", synthetic_root).setup("fit")


def test_root_defaults_to_gaaf_data_dir(
    synthetic_root: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
):
    monkeypatch.setenv("GAAF_DATA_DIR", str(synthetic_root))
    dm = MNISTDataModule(val_size=VAL)
    assert dm.root == synthetic_root
    dm.setup("test")
    assert len(dm.test_dataset) == N_TEST
    assert MNISTDataModule(root=str(tmp_path)).root == tmp_path  # explicit root wins
    monkeypatch.delenv("GAAF_DATA_DIR")
    assert MNISTDataModule().root == Path("data")


def test_argument_errors_name_the_field(synthetic_root: Path):
    with pytest.raises(ValueError, match=r"data.val_size=240 leaves no training images: .* has 240 images"):
        _dm("mnist", synthetic_root, val_size=N_TRAIN).setup("fit")
    with pytest.raises(ValueError, match="data.batch_size must be an integer >= 1"):
        MNISTDataModule(batch_size=0)
    with pytest.raises(ValueError, match="data.val_size must be an integer >= 0"):
        MNISTDataModule(val_size=-1)
    with pytest.raises(RuntimeError, match=r"setup\('fit'\) must run before train_dataloader"):
        MNISTDataModule().train_dataloader()


def test_svhn_extra_split_and_labels(tmp_path: Path):
    write_svhn(tmp_path, N_TRAIN, N_TEST, seed=1, n_extra=30)
    from scipy.io import loadmat

    stored = loadmat(tmp_path / "SVHN" / "train_32x32.mat")["y"].ravel()
    assert stored.min() == 1 and stored.max() == 10  # the file stores digit 0 as 10
    plain = SVHNDataModule(root=str(tmp_path), val_size=VAL, download=False)
    extra = SVHNDataModule(root=str(tmp_path), val_size=VAL, download=False, use_extra=True)
    plain.setup("fit")
    extra.setup("fit")
    assert int(plain.train_dataset.labels.min()) == 0 and int(plain.train_dataset.labels.max()) == 9
    assert len(extra.train_dataset) == N_TRAIN - VAL + 30
    assert torch.equal(plain.val_dataset.images, extra.val_dataset.images)  # val does not depend on use_extra
    assert torch.equal(extra.train_dataset.images[: N_TRAIN - VAL], plain.train_dataset.images)
    assert extra.hparams["use_extra"] is True
    # Files directly in root (where torchvision.datasets.SVHN(root) puts them) are found too.
    flat = tmp_path / "flat"
    shutil.copytree(tmp_path / "SVHN", flat)
    dm = SVHNDataModule(root=str(flat), val_size=VAL, download=False)
    dm.setup("test")
    assert torch.equal(dm.test_dataset.images, _svhn_test_images(tmp_path))


def _svhn_test_images(root: Path) -> torch.Tensor:
    dm = SVHNDataModule(root=str(root), download=False)
    dm.setup("test")
    return dm.test_dataset.images


def test_cli_builds_datamodules_from_class_path():
    from jsonargparse import ArgumentParser

    parser = ArgumentParser()
    parser.add_subclass_arguments(pl.LightningDataModule, "data")
    cfg = parser.parse_object(
        {
            "data": {
                "class_path": "lightning_gaaf.datamodules.CIFAR100DataModule",
                "init_args": {"batch_size": 64},
            }
        }
    )
    dm = parser.instantiate(cfg).data
    assert type(dm) is CIFAR100DataModule and dm.batch_size == 64 and dm.val_size == 5000
    assert dm.num_classes == 100 and dm.input_shape == (3, 32, 32)


def test_synthetic_files_are_deterministic_and_learnable(tmp_path: Path):
    a, b, c = (write_mnist(tmp_path / d, 300, 200, seed=s) for d, s in (("a", 0), ("b", 0), ("c", 1)))
    rel = Path("MNIST/raw/train-images-idx3-ubyte")
    assert (a / rel).read_bytes() == (b / rel).read_bytes() != (c / rel).read_bytes()
    assert (a / rel).stat().st_size == 16 + 300 * 28 * 28  # uncompressed IDX: header + pixels
    for root, name in ((a, "mnist"), (write_cifar10(tmp_path / "cifar", 300, 200), "cifar10")):
        dm = _dm(name, root, val_size=0)
        dm.setup("fit")
        dm.setup("test")
        train_x, train_y = dm.train_dataset.images.float(), dm.train_dataset.labels
        centroids = torch.stack([train_x[train_y == k].mean(0) for k in range(10)])
        test_x = dm.test_dataset.images.float()
        pred = torch.cdist(test_x.flatten(1), centroids.flatten(1)).argmin(1)
        assert (pred == dm.test_dataset.labels).float().mean() > 0.9  # class-dependent images
        assert torch.bincount(train_y, minlength=10).tolist() == [30] * 10
    with pytest.raises(ValueError, match="unknown dataset 'imagenet'"):
        write_synthetic("imagenet", tmp_path, 10, 10)
    with pytest.raises(ValueError, match="variant must be 'MNIST' or 'FashionMNIST'"):
        write_mnist(tmp_path, 10, 10, variant="KMNIST")


def _real_datamodule(cls: type[InMemoryImageDataModule]) -> InMemoryImageDataModule:
    if not os.environ.get("GAAF_DATA_DIR"):
        pytest.skip("GAAF_DATA_DIR is not set")
    dm = cls(download=False)
    dm.setup("fit")
    dm.setup("test")
    return dm


def _check_real(dm: InMemoryImageDataModule, train_counts: list[int], test_counts: list[int]) -> None:
    assert len(dm.train_dataset) + len(dm.val_dataset) == 60000 and len(dm.val_dataset) == 10000
    labels = torch.cat([dm.train_dataset.labels, dm.val_dataset.labels])
    assert torch.bincount(labels).tolist() == train_counts
    assert len(dm.test_dataset) == 10000 and torch.bincount(dm.test_dataset.labels).tolist() == test_counts
    images = torch.cat([dm.train_dataset.images, dm.val_dataset.images])
    z, _ = dm.on_after_batch_transfer((images, labels), 0)
    assert abs(z.mean().item()) < 1e-3 and abs(z.std().item() - 1) < 1e-3  # constants fit the real data


@pytest.mark.realdata
def test_real_mnist():
    _check_real(
        _real_datamodule(MNISTDataModule),
        [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949],
        [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009],
    )


@pytest.mark.realdata
def test_real_fashion_mnist():
    _check_real(_real_datamodule(FashionMNISTDataModule), [6000] * 10, [1000] * 10)
