"""One run, one directory: ``runs/<config name>/version_N``, and nothing left when a run fails to start.

A DDP worker process gets rank 0's directory through :data:`RUN_DIR_ENV`.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path

RUNS_DIR = "runs"
#: Inside a run directory: the checkpoints folder and the re-runnable config.
CHECKPOINTS = "checkpoints"
RUN_CONFIG = "config.yaml"
#: Set for the worker processes Lightning starts under DDP, so that every rank uses the run directory
#: rank 0 chose instead of picking the next free version itself.
RUN_DIR_ENV = "GAAF_FIT_RUN_DIR"
_VERSION = re.compile(r"version_(\d+)")


def next_run_dir(base: Path) -> Path:
    """Create and return ``base/version_N`` with the smallest N above every existing version."""
    base.mkdir(parents=True, exist_ok=True)
    versions = [int(m.group(1)) for p in base.iterdir() if (m := _VERSION.fullmatch(p.name))]
    n = max(versions, default=-1) + 1
    while True:
        candidate = base / f"version_{n}"
        try:
            candidate.mkdir()
            return candidate
        except FileExistsError:  # another run took it meanwhile
            n += 1


class RunDirectory:
    """The folder of one run, and the folders this process made for it (so a failed start can undo them).

    ``runs/`` gets a ``.gitignore`` of ``*`` when it is made, so runs started inside any git checkout
    stay out of it (as ``.pytest_cache`` does).
    """

    def __init__(self, path: Path, created: list[Path]) -> None:
        self.path = path
        #: folders made by this process, deepest first (the run directory itself among them when new)
        self.created = created

    @classmethod
    def next_version(cls, base: Path) -> RunDirectory:
        """A new ``base/version_N`` (``base`` is ``runs/<name>``)."""
        made = [p for p in (base, base.parent) if not p.exists()]
        path = next_run_dir(base)
        if base.parent in made and base.parent.name == RUNS_DIR:
            (base.parent / ".gitignore").write_text("# made by gaaf-fit: runs stay out of git\n*\n")
        return cls(path, [path, *made])

    @classmethod
    def at(cls, path: Path) -> RunDirectory:
        """A directory the user named; made (with its parents) if missing."""
        made = []
        for parent in (path, *path.parents):
            if parent.exists():
                break
            made.append(parent)
        path.mkdir(parents=True, exist_ok=True)
        return cls(path, made)

    @property
    def is_new(self) -> bool:
        """Whether this process made the run directory (as opposed to reusing an existing one)."""
        return self.path in self.created

    def discard(self) -> None:
        """Remove what this process made: the run directory with everything in it, then its empty parents.

        A directory that existed before (``--run_dir`` pointing at an old run) is never touched.
        """
        for folder in self.created:
            if folder == self.path:
                shutil.rmtree(folder, ignore_errors=True)
            elif folder.is_dir():
                gitignore = folder / ".gitignore"
                if folder.name == RUNS_DIR and gitignore.is_file() and len(list(folder.iterdir())) == 1:
                    gitignore.unlink()
                if not any(folder.iterdir()):
                    folder.rmdir()
