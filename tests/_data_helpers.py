"""Test-only helpers for the DataModules: checksum bypass for synthetic files, download blockers.

Import from test modules as ``from _data_helpers import bypass_checksums, block_downloads``.
"""

from __future__ import annotations

import os
from urllib.error import URLError

import pytest
import torchvision.datasets.cifar as tv_cifar
import torchvision.datasets.mnist as tv_mnist
import torchvision.datasets.svhn as tv_svhn


def bypass_checksums(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make torchvision's CIFAR/SVHN md5 checks test only file existence (synthetic files have other md5s).

    MNIST/Fashion-MNIST need nothing: torchvision only checks that their raw files exist.
    """

    def cifar_files_exist(self: tv_cifar.CIFAR10) -> bool:
        names = [name for name, _ in self.train_list + self.test_list]
        return all(os.path.isfile(os.path.join(self.root, self.base_folder, name)) for name in names)

    monkeypatch.setattr(tv_cifar.CIFAR10, "_check_integrity", cifar_files_exist)  # CIFAR100 inherits it
    # CIFAR10._load_meta calls the module-level check_integrity(path, md5) for batches.meta / meta.
    monkeypatch.setattr(tv_cifar, "check_integrity", lambda fpath, md5=None: os.path.isfile(fpath))
    monkeypatch.setattr(
        tv_svhn.SVHN, "_check_integrity", lambda self: os.path.isfile(os.path.join(self.root, self.filename))
    )


def block_downloads(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Replace torchvision's download functions by ones that fail as if offline; returns the URLs tried."""
    attempts: list[str] = []

    def offline(url: str, *args: object, **kwargs: object) -> None:
        attempts.append(url)
        raise URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(tv_mnist, "download_and_extract_archive", offline)
    monkeypatch.setattr(tv_cifar, "download_and_extract_archive", offline)
    monkeypatch.setattr(tv_svhn, "download_url", offline)
    return attempts


@pytest.fixture
def skip_checksums(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fixture form of :func:`bypass_checksums` (import it into a test module to use it)."""
    bypass_checksums(monkeypatch)
