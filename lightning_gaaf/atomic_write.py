"""Files a run writes appear whole or not at all (checkpoints, statistics).

Why: a full disk or a kill in the middle of a write must not leave a truncated file where a good
one was. The data go to a temporary file beside the target (same file system), are flushed to
disk, then renamed over it; on any failure the temporary file is removed and the target is as it
was. Standard library only: ``gaaf-report`` imports this without torch.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

__all__ = ["write_atomically"]


def write_atomically(path: Path, data: bytes | memoryview) -> None:
    """Replace ``path`` by ``data`` in one step; an ``OSError`` leaves ``path`` untouched and no temporary file."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _sync_directory(path.parent)


def _sync_directory(directory: Path) -> None:
    """Make the rename itself durable (a power loss right after it keeps the new file)."""
    with contextlib.suppress(OSError):  # not every platform or file system can open a directory
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
