"""Optuna storage and pruner choices of ``gaaf-tune`` (``--storage``, ``--pruner``).

The pruning callback itself is :mod:`lightning_gaaf.run.pruning`.
"""

from __future__ import annotations

import time
from pathlib import Path

import optuna
import sqlalchemy.exc


class StorageError(ValueError):
    """A storage URL that cannot be opened here (e.g. its database driver is missing)."""


class PrunerSpecError(ValueError):
    """A ``--pruner`` value that names no known pruner or has bad numbers."""


def _rdb_storage(spec: str, attempts: int = 5) -> optuna.storages.RDBStorage:
    """Optuna's RDB storage; a fresh database's schema is created by whichever process comes first.

    Workers started together on an empty database race to create Optuna's tables (PostgreSQL
    answers the loser with a unique violation on its catalogue): the loser tries again and then
    finds the tables made.
    """
    for attempt in range(1, attempts):
        try:
            return optuna.storages.RDBStorage(spec, engine_kwargs={"pool_pre_ping": True})
        except (sqlalchemy.exc.IntegrityError, sqlalchemy.exc.ProgrammingError):
            time.sleep(0.5 * attempt)
    return optuna.storages.RDBStorage(spec, engine_kwargs={"pool_pre_ping": True})


def open_storage(spec: str) -> optuna.storages.BaseStorage:
    """``spec`` is a database URL (``sqlite:///f.db``, ``postgresql://user@host/db``, ``mysql://...``:
    Optuna's RDB storage, which several processes and machines can share) or a file path (an Optuna
    journal file: nothing to start, safe for several processes on one machine)."""
    if "://" in spec:
        try:
            return _rdb_storage(spec)
        except sqlalchemy.exc.ArgumentError as exc:
            raise StorageError(
                f"storage {spec.split('@')[-1]!r}: not a usable database URL ({exc})"
            ) from None
        except ImportError as exc:
            raise StorageError(
                f"storage {spec.split('@')[-1]!r}: the database driver is not installed ({exc}; "
                "for PostgreSQL: pip install 'psycopg[binary]' and a postgresql+psycopg:// URL)"
            ) from None
    path = Path(spec)
    path.parent.mkdir(parents=True, exist_ok=True)
    return optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(str(path)))


def make_pruner(spec: str, direction: str = "maximize") -> optuna.pruners.BasePruner:
    """``none``; ``median[:STARTUP[:WARMUP]]`` (Optuna's MedianPruner: stop a trial whose value at an
    epoch is worse than the median of earlier trials at that epoch, after STARTUP finished trials
    (default 5) and WARMUP epochs (default 1)); ``threshold:VALUE`` (stop as soon as the metric is
    worse than VALUE: below it when maximizing, above it when minimizing)."""
    name, *args = spec.split(":")
    try:
        numbers = [float(a) for a in args]
    except ValueError:
        raise PrunerSpecError(f"pruner {spec!r}: the values after ':' must be numbers") from None
    if name == "none" and not numbers:
        return optuna.pruners.NopPruner()
    if name == "median" and len(numbers) <= 2:
        startup, warmup = (list(map(int, numbers)) + [5, 1][len(numbers) :])[:2]
        return optuna.pruners.MedianPruner(n_startup_trials=startup, n_warmup_steps=warmup)
    if name == "threshold" and len(numbers) == 1:
        key = "lower" if direction == "maximize" else "upper"
        return optuna.pruners.ThresholdPruner(**{key: numbers[0]})
    raise PrunerSpecError(f"pruner {spec!r}: expected none, median[:STARTUP[:WARMUP]] or threshold:VALUE")
