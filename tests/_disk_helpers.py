"""A disk that really fills up: a small tmpfs, and a callback that fills it at a chosen epoch's end.

Mounting needs the right to (e.g. root); tests skip where it is missing. The gaaf-fit under test gets
the callback with ``--trainer.callbacks+=_disk_helpers.FillDiskAtEpochEnd`` (this folder importable).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import pytorch_lightning as pl
from typing_extensions import override


@contextlib.contextmanager
def small_tmpfs(mount: Path, size: str) -> Iterator[Path]:
    """A tmpfs of ``size`` (``64k``, ``1m``) at ``mount``, unmounted afterwards; skips the test if it cannot."""
    mount.mkdir(parents=True, exist_ok=True)
    if shutil.which("mount") is None:
        pytest.skip("no mount command")
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(mount)], capture_output=True, text=True
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here: {done.stderr.strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", str(mount)], check=True)


def fill(disk: Path, keep_free: int = 0) -> None:
    """Write ``disk/filler`` until at most ``keep_free`` bytes (rounded to 4 KiB pages) are left."""
    st = os.statvfs(disk)
    size = max(0, st.f_bavail * st.f_frsize - keep_free)
    with open(disk / "filler", "wb", buffering=0) as f:
        try:
            while size > 0:
                size -= f.write(b"\0" * min(size, 1 << 16))
        except OSError:
            pass


class FillDiskAtEpochEnd(pl.Callback):
    """At the end of training epoch ``epoch`` (0-based), before the checkpoint callbacks (Lightning runs
    them last): copy ``disk/run/checkpoints`` to ``snapshot``, fill ``disk`` up to ``keep_free`` bytes,
    and from then on put ``grow`` more bytes into every checkpoint (its callback state): a checkpoint
    that fits neither beside the previous one nor in its place."""

    def __init__(self, disk: str, snapshot: str, epoch: int = 1, keep_free: int = 0, grow: int = 0) -> None:
        self.disk, self.snapshot, self.epoch = Path(disk), Path(snapshot), epoch
        self.keep_free, self.grow = keep_free, grow
        self.extra = b""

    @override
    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, *args: Any) -> None:
        if trainer.current_epoch != self.epoch:
            return
        shutil.copytree(self.disk / "run" / "checkpoints", self.snapshot)
        fill(self.disk, self.keep_free)
        self.extra = os.urandom(self.grow)

    @override
    def state_dict(self) -> dict[str, Any]:
        return {"extra": self.extra}
