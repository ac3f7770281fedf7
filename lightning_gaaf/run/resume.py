"""``--ckpt_path last|best|PATH``: which checkpoint a run continues from, and in which run directory.

:func:`resolve_checkpoint` turns ``last`` / ``best`` / a path into a checkpoint file and the run
directory it belongs to, so that a resumed run continues in its own directory (no new version).
:func:`check_checkpoint` reads the file before anything in the run directory changes: a truncated
file, or one whose weights no longer fit the configured model, is a one-line user error.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from lightning_gaaf.run.directory import CHECKPOINTS, RUN_CONFIG

__all__ = [
    "CheckpointNotFoundError",
    "UnusableCheckpointError",
    "check_checkpoint",
    "load_checkpoint",
    "resolve_checkpoint",
    "run_dir_of_checkpoint",
]

LAST_FILE = "last.ckpt"


class CheckpointNotFoundError(ValueError):
    """``--ckpt_path`` names no checkpoint (missing file, no run with a ``last.ckpt``, no best recorded)."""


class UnusableCheckpointError(ValueError):
    """``--ckpt_path`` names a file that is no readable checkpoint, or one the configured run cannot use."""


def run_dir_of_checkpoint(path: Path) -> Path | None:
    """The run directory holding ``path`` (``<run>/checkpoints/<file>`` next to ``<run>/config.yaml``)."""
    parent = path.absolute().parent
    if parent.name == CHECKPOINTS and (parent.parent / RUN_CONFIG).is_file():
        return parent.parent
    return None


def _versions(runs_root: Path) -> list[Path]:
    if not runs_root.is_dir():
        return []
    found = [
        (int(m.group(1)), p) for p in runs_root.iterdir() if (m := re.fullmatch(r"version_(\d+)", p.name))
    ]
    return [p for _, p in sorted(found, reverse=True)]


def _latest_run(runs_root: Path) -> Path:
    for run in _versions(runs_root):
        if (run / CHECKPOINTS / LAST_FILE).is_file():
            return run
    raise CheckpointNotFoundError(
        f"ckpt_path: no run under {runs_root} has {CHECKPOINTS}/{LAST_FILE}; pass --run_dir RUN or a checkpoint path"
    )


def _best_of(last: Path) -> Path:
    """The best checkpoint recorded by the monitored ``ModelCheckpoint`` whose state ``last`` holds."""
    state = load_checkpoint(last).get("callbacks", {})
    for value in state.values():
        if isinstance(value, dict) and value.get("monitor") and value.get("best_model_path"):
            best = Path(value["best_model_path"])
            # A run directory that moved: the file name is still right, next to last.ckpt.
            for candidate in (best, last.parent / best.name):
                if candidate.is_file():
                    return candidate
            raise CheckpointNotFoundError(f"ckpt_path=best: {best} (recorded in {last}) does not exist")
    raise CheckpointNotFoundError(
        f"ckpt_path=best: {last} records no best checkpoint of a monitored ModelCheckpoint"
    )


def resolve_checkpoint(value: str, run_dir: Path | None, runs_root: Path) -> tuple[Path, Path | None]:
    """``(checkpoint file, run directory to continue in)`` for ``--ckpt_path value``.

    Args:
        value: ``"last"`` (the run's ``checkpoints/last.ckpt``), ``"best"`` (the best checkpoint that the
            run's monitored ``ModelCheckpoint`` recorded), or a checkpoint file path.
        run_dir: the run directory if the user chose one (``--run_dir``); ``last`` / ``best`` refer to it.
        runs_root: ``runs/<config name>``: without ``run_dir``, ``last`` / ``best`` refer to its newest
            ``version_N`` that has a ``last.ckpt``.

    Returns the checkpoint and the run directory it lives in (``run_dir`` if given, else the directory of
    the checkpoint when it is ``<run>/checkpoints/<file>``, else ``None``: a new run directory).
    """
    if value in ("last", "best"):
        run = run_dir if run_dir is not None else _latest_run(runs_root)
        last = run / CHECKPOINTS / LAST_FILE
        if not last.is_file():
            raise CheckpointNotFoundError(f"ckpt_path={value}: {last.absolute()} does not exist")
        ckpt = last if value == "last" else _best_of(last)
        return ckpt.absolute(), run.absolute()
    path = Path(value).expanduser()
    if not path.is_file():
        raise CheckpointNotFoundError(
            f"ckpt_path: {path.absolute()} is not a file (expected last, best or a path)"
        )
    return path.absolute(), (run_dir.absolute() if run_dir is not None else run_dir_of_checkpoint(path))


def load_checkpoint(path: Path) -> dict[str, Any]:
    """The checkpoint at ``path`` on the CPU; a file that is no checkpoint is a one-line user error."""
    import torch

    try:
        content = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:  # truncated zip, pickle garbage, empty file: all the same to the user
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UnusableCheckpointError(
            f"ckpt_path: {path} is not a readable checkpoint ({type(exc).__name__}: {reason})"
        ) from None
    if not isinstance(content, dict) or "state_dict" not in content:
        raise UnusableCheckpointError(f"ckpt_path: {path} is not a Lightning checkpoint (no state_dict)")
    return content


def check_checkpoint(path: Path, model: Any) -> None:
    """Read ``path`` and check that its weights fit ``model`` (same names and shapes where both have them).

    Called before the fit starts, so that a checkpoint that cannot be used changes nothing in the run.
    """
    weights = load_checkpoint(path)["state_dict"]
    own = model.state_dict()
    for name, tensor in weights.items():
        mine = own.get(name)
        if mine is not None and hasattr(tensor, "shape") and tuple(mine.shape) != tuple(tensor.shape):
            raise UnusableCheckpointError(
                f"ckpt_path: {path} does not fit the configured model: {name} has shape "
                f"{list(tensor.shape)} in the checkpoint and {list(mine.shape)} in the model"
            )
