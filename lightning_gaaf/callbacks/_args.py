"""Argument checks shared by the monitors (one-line errors naming the field) and the step rule."""

from __future__ import annotations

from collections.abc import Sequence

#: Data splits whose statistics a monitor can collect in Lightning's evaluation loops.
SPLITS = ("test", "val")


def check_interval(owner: str, field: str, value: int | None, allow_none: bool = True) -> int | None:
    """A positive integer (or None when allowed)."""
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        none = " or None" if allow_none else ""
        raise ValueError(f"{owner}: {field} must be a positive integer{none}, got {value!r}")
    return value


def check_bins(owner: str, bins: int) -> int:
    """A histogram bin count in [1, 512] (W&B's limit)."""
    if isinstance(bins, bool) or not isinstance(bins, int) or not 1 <= bins <= 512:
        raise ValueError(
            f"{owner}: bins must be an integer in [1, 512] (W&B's histogram limit), got {bins!r}"
        )
    return bins


def check_split(owner: str, split: str) -> str:
    if split not in SPLITS:
        raise ValueError(f"{owner}: split must be 'test' or 'val', got {split!r}")
    return split


def check_include(owner: str, include: Sequence[str] | None) -> list[str] | None:
    if include is None:
        return None
    if isinstance(include, str) or not all(isinstance(p, str) for p in include):
        raise ValueError(
            f"{owner}: include must be a list of name globs such as ['backbone.*'], got {include!r}"
        )
    return list(include)


def resolve_interval(every: int | None, trainer_every: int) -> int:
    """A monitor's interval: its own ``log_every_n_steps``, else the trainer's."""
    return every if every is not None else trainer_every


def is_log_step(step: int, every: int) -> bool:
    """Lightning's convention (``log_every_n_steps``): log after steps N-1, 2N-1, ... (0-based)."""
    return every > 0 and (step + 1) % every == 0
