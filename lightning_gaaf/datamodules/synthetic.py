"""Tiny synthetic datasets written in torchvision's own on-disk formats.

Tests use them to exercise the real loading path (torchvision parsing included) without downloads.
Each class gets a fixed smooth random pattern; every image is its class pattern plus noise, so a
model can learn the labels in a few steps. The same ``seed`` gives byte-identical files.

Note: torchvision verifies md5 checksums of CIFAR and SVHN files, which synthetic files cannot
match; tests that load them must bypass that check themselves (the package never does). MNIST and
Fashion-MNIST only need the files to exist.
"""

from __future__ import annotations

import os
import pickle
import struct
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

CIFAR10_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


def _class_images(
    rng: np.random.Generator, num_classes: int, shape: tuple[int, int, int], counts: list[int]
) -> list[tuple[np.ndarray, np.ndarray]]:
    """For each count: (uint8 images (n, C, H, W), int64 labels (n,)) sharing one set of class patterns."""
    c, h, w = shape
    coarse = torch.from_numpy(rng.random((num_classes, c, 4, 4), dtype=np.float32))
    patterns = F.interpolate(coarse, size=(h, w), mode="bilinear", align_corners=False).numpy()
    out = []
    for n in counts:
        labels = rng.permutation(np.arange(n) % num_classes).astype(np.int64)
        noise = rng.random((n, c, h, w), dtype=np.float32)
        images = 255.0 * (0.75 * patterns[labels] + 0.25 * noise)
        out.append((np.clip(np.rint(images), 0, 255).astype(np.uint8), labels))
    return out


def _write_idx(path: Path, array: np.ndarray) -> None:
    """IDX format: big-endian magic (0x08 = uint8, number of dims), big-endian dims, raw bytes."""
    header = struct.pack(">I", 0x0800 | array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    path.write_bytes(header + np.ascontiguousarray(array, dtype=np.uint8).tobytes())


def write_mnist(
    root: str | os.PathLike[str], n_train: int = 200, n_test: int = 100, seed: int = 0, variant: str = "MNIST"
) -> Path:
    """Write ``<root>/<variant>/raw/{train,t10k}-{images-idx3,labels-idx1}-ubyte`` (uncompressed IDX)."""
    if variant not in ("MNIST", "FashionMNIST"):
        raise ValueError(f"variant must be 'MNIST' or 'FashionMNIST', got {variant!r}")
    raw = Path(root) / variant / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    splits = _class_images(rng, 10, (1, 28, 28), [n_train, n_test])
    for prefix, (images, labels) in zip(("train", "t10k"), splits, strict=True):
        _write_idx(raw / f"{prefix}-images-idx3-ubyte", images[:, 0])
        _write_idx(raw / f"{prefix}-labels-idx1-ubyte", labels.astype(np.uint8))
    return Path(root)


def _pickle(path: Path, obj: dict) -> None:
    with open(path, "wb") as f:
        pickle.dump(obj, f, protocol=2)


def write_cifar10(root: str | os.PathLike[str], n_train: int = 200, n_test: int = 100, seed: int = 0) -> Path:
    """Write ``<root>/cifar-10-batches-py/{data_batch_1..5,test_batch,batches.meta}`` (python pickles)."""
    folder = Path(root) / "cifar-10-batches-py"
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    (train_x, train_y), (test_x, test_y) = _class_images(rng, 10, (3, 32, 32), [n_train, n_test])
    chunks = np.array_split(np.arange(n_train), 5)
    for i, idx in enumerate(chunks, start=1):
        _pickle(
            folder / f"data_batch_{i}",
            {
                "batch_label": f"training batch {i} of 5",
                "labels": train_y[idx].tolist(),
                "data": train_x[idx].reshape(len(idx), -1),
                "filenames": [f"train_{j}.png" for j in idx],
            },
        )
    _pickle(
        folder / "test_batch",
        {
            "batch_label": "testing batch 1 of 1",
            "labels": test_y.tolist(),
            "data": test_x.reshape(n_test, -1),
            "filenames": [f"test_{j}.png" for j in range(n_test)],
        },
    )
    _pickle(
        folder / "batches.meta",
        {"label_names": CIFAR10_CLASSES, "num_cases_per_batch": 10000, "num_vis": 3072},
    )
    return Path(root)


def write_cifar100(
    root: str | os.PathLike[str], n_train: int = 200, n_test: int = 100, seed: int = 0
) -> Path:
    """Write ``<root>/cifar-100-python/{train,test,meta}`` (python pickles, 100 fine / 20 coarse labels)."""
    folder = Path(root) / "cifar-100-python"
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    splits = _class_images(rng, 100, (3, 32, 32), [n_train, n_test])
    for name, (images, labels) in zip(("train", "test"), splits, strict=True):
        _pickle(
            folder / name,
            {
                "batch_label": f"{name}ing batch 1 of 1",
                "fine_labels": labels.tolist(),
                "coarse_labels": (labels // 5).tolist(),
                "data": images.reshape(len(labels), -1),
                "filenames": [f"{name}_{j}.png" for j in range(len(labels))],
            },
        )
    _pickle(
        folder / "meta",
        {
            "fine_label_names": [f"class_{i}" for i in range(100)],
            "coarse_label_names": [f"superclass_{i}" for i in range(20)],
        },
    )
    return Path(root)


def write_svhn(
    root: str | os.PathLike[str], n_train: int = 200, n_test: int = 100, seed: int = 0, n_extra: int = 0
) -> Path:
    """Write ``<root>/SVHN/{train,test[,extra]}_32x32.mat``: ``X`` (32, 32, 3, N) uint8, ``y`` (N, 1), 10 = digit 0."""
    try:
        from scipy.io import savemat
    except ImportError:
        raise ImportError("write_svhn needs scipy to write .mat files: pip install scipy") from None
    folder = Path(root) / "SVHN"
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    names = ["train", "test"] + (["extra"] if n_extra > 0 else [])
    counts = [n_train, n_test] + ([n_extra] if n_extra > 0 else [])
    for name, (images, labels) in zip(names, _class_images(rng, 10, (3, 32, 32), counts), strict=True):
        stored = np.where(labels == 0, 10, labels).astype(np.uint8)[:, None]
        savemat(folder / f"{name}_32x32.mat", {"X": images.transpose(2, 3, 1, 0), "y": stored})
    return Path(root)


def write_synthetic(
    name: str, root: str | os.PathLike[str], n_train: int = 200, n_test: int = 100, seed: int = 0
) -> Path:
    """Write the synthetic files for the DataModule called ``name`` (``DATAMODULES`` keys)."""
    if name == "mnist":
        return write_mnist(root, n_train, n_test, seed, variant="MNIST")
    if name == "fashion_mnist":
        return write_mnist(root, n_train, n_test, seed, variant="FashionMNIST")
    if name == "cifar10":
        return write_cifar10(root, n_train, n_test, seed)
    if name == "cifar100":
        return write_cifar100(root, n_train, n_test, seed)
    if name == "svhn":
        return write_svhn(root, n_train, n_test, seed)
    raise ValueError(
        f"unknown dataset {name!r}; expected one of mnist, fashion_mnist, cifar10, cifar100, svhn"
    )
