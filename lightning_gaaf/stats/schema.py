"""The ``stats/`` file schema: one JSON file per statistic, versioned, written atomically.

Every file is a JSON object with at least::

    {"schema_version": 2, "statistic": "<name>", "partial": false, "nonfinite": {}, ...}

``partial`` is true when the run ended with an exception (interrupted, crashed) and the file holds
what was recorded until then. Non-finite numbers (a diverged loss, an exploded gradient) are kept
as such: ``nonfinite`` maps the JSON Pointer (RFC 6901) of each to ``"nan"``, ``"inf"`` or
``"-inf"``, and the file holds ``null`` there inside a list and leaves the member out inside an
object, so any JSON reader loads the files and one that skips missing values reads them as before.
:func:`read_stats` puts the values back (``float("nan")``...). It also reads the files of earlier
versions: version 1 (non-finite numbers as plain ``null``) and version 0 (without
``schema_version``: ``weights.json`` and ``node_correlation.csv``), returned in the current layout.

Writing is atomic: a temporary file in the same directory, flushed to disk, then renamed over the
old one; if that fails (a full disk) the temporary file is removed, the old file stays as it was,
and :class:`StatsWriteError` says which file could not be written and why, in one line.
"""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from lightning_gaaf.atomic_write import write_atomically

#: Version of the layout written by :func:`write_stats`; :func:`read_stats` reads this and older ones.
SCHEMA_VERSION = 2

#: Statistic -> file name under ``<run_dir>/stats/``.
FILES: dict[str, str] = {
    "metrics": "metrics.json",
    "grad_info": "grad_info.json",
    "grad_scale": "grad_scale.json",
    "saturation": "saturation.json",
    "net_var": "net_var.json",
    "node_correlation": "node_correlation.json",
    "weight_hist": "weight_hist.json",
}

#: File names of version 0 (before ``schema_version``), read when the current file is missing.
LEGACY_FILES: dict[str, str] = {"weight_hist": "weights.json", "node_correlation": "node_correlation.csv"}

#: Columns of a node-correlation row.
CORRELATION_COLUMNS = ("layer", "threshold", "pairs", "total_pairs", "nodes", "dead_nodes")


class StatsFileError(ValueError):
    """A stats file that cannot be read: not JSON, not a stats file, or from a newer version."""


class StatsWriteError(OSError):
    """A stats file that could not be written (full disk, no permission); the old file is unchanged."""


#: Keys every file has besides the statistic's own.
RESERVED = ("schema_version", "statistic", "partial", "nonfinite")


def _nonfinite_label(value: float) -> str:
    return "nan" if math.isnan(value) else "inf" if value > 0 else "-inf"


def _pointer_token(key: str) -> str:
    return key.replace("~", "~0").replace("/", "~1")


def _encode(obj: Any, pointer: str, marks: dict[str, str]) -> Any:
    """``obj`` as plain JSON values; non-finite floats become ``null`` and an entry in ``marks``."""
    if hasattr(obj, "tolist") and not isinstance(obj, (str, bytes)):  # numpy arrays and scalars, tensors
        obj = obj.tolist()
    if isinstance(obj, float) and not math.isfinite(obj):
        marks[pointer] = _nonfinite_label(obj)
        return None
    if isinstance(obj, Mapping):
        out = {}
        for key, value in obj.items():
            item = _encode(value, f"{pointer}/{_pointer_token(str(key))}", marks)
            if item is not None or value is None:  # a non-finite member is left out
                out[str(key)] = item
        return out
    if isinstance(obj, (list, tuple)):
        return [_encode(v, f"{pointer}/{i}", marks) for i, v in enumerate(obj)]
    return obj


def _decode(data: dict[str, Any], path: Path) -> None:
    """Put the non-finite values listed in ``data["nonfinite"]`` back in place."""
    marks = data.pop("nonfinite", None) or {}
    if not isinstance(marks, dict):
        raise StatsFileError(f"cannot read {path}: 'nonfinite' must be an object")
    for pointer, label in marks.items():
        if label not in ("nan", "inf", "-inf") or not pointer.startswith("/"):
            raise StatsFileError(f"cannot read {path}: bad 'nonfinite' entry {pointer!r}: {label!r}")
        tokens = [t.replace("~1", "/").replace("~0", "~") for t in pointer[1:].split("/")]
        node: Any = data
        try:
            for token in tokens[:-1]:
                node = node[int(token)] if isinstance(node, list) else node[token]
            last = tokens[-1]
            if isinstance(node, list):
                node[int(last)] = float(label)
            else:
                node[last] = float(label)
        except (KeyError, IndexError, ValueError, TypeError):
            raise StatsFileError(
                f"cannot read {path}: 'nonfinite' entry {pointer!r} points nowhere"
            ) from None


def write_stats(stats_dir: Path, statistic: str, payload: Mapping[str, Any], partial: bool = False) -> Path:
    """Write ``stats_dir/<FILES[statistic]>`` atomically and return its path.

    Raises:
        StatsWriteError: the file could not be written; the previous file (if any) is unchanged
            and no temporary file is left behind.
    """
    if statistic not in FILES:
        raise ValueError(f"unknown statistic {statistic!r}; known: {', '.join(FILES)}")
    marks: dict[str, str] = {}
    body = _encode({k: v for k, v in payload.items() if k not in RESERVED}, "", marks)
    record = {"schema_version": SCHEMA_VERSION, "statistic": statistic, "partial": bool(partial)}
    record.update(body)
    record["nonfinite"] = marks
    text = json.dumps(record, allow_nan=False) + "\n"
    path = Path(stats_dir) / FILES[statistic]
    try:
        write_atomically(path, text.encode())
    except OSError as err:
        error = StatsWriteError(f"cannot write {path}: {err.strerror or err}")
        error.errno = err.errno
        raise error from None
    return path


def find_stats_file(stats_dir: Path, statistic: str) -> Path | None:
    """The file holding ``statistic`` in ``stats_dir`` (current name, else the version-0 name)."""
    for name in (FILES[statistic], LEGACY_FILES.get(statistic)):
        if name and (Path(stats_dir) / name).is_file():
            return Path(stats_dir) / name
    return None


def read_stats(path: Path) -> dict[str, Any]:
    """Load a stats file in the current layout (older versions are converted)."""
    path = Path(path)
    try:
        if path.suffix == ".csv":
            return _correlation_from_csv(path)
        data = json.loads(path.read_text())
    except (OSError, ValueError, KeyError) as err:
        raise StatsFileError(f"cannot read {path}: {err}") from None
    if not isinstance(data, dict):
        raise StatsFileError(f"cannot read {path}: not a stats file (a JSON object is expected)")
    version = data.get("schema_version", 0)
    if not isinstance(version, int) or version > SCHEMA_VERSION:
        raise StatsFileError(
            f"cannot read {path}: schema_version {version!r} is newer than this lightning-gaaf reads "
            f"({SCHEMA_VERSION}); upgrade lightning-gaaf"
        )
    if version == 0:
        data = _upgrade_v0(path, data)
    elif version == 2:
        _decode(data, path)
    data["schema_version"] = SCHEMA_VERSION
    return data


def _upgrade_v0(path: Path, data: dict[str, Any]) -> dict[str, Any]:
    statistic = data.get("statistic")
    if statistic is None:
        statistic = {v: k for k, v in FILES.items()}.get(path.name)
        if path.name == "weights.json":
            statistic = "weight_hist"
    if statistic == "weights":
        statistic = "weight_hist"
    if statistic == "net_var" and "every_n_steps" in data:
        data["log_every_n_steps"] = data.pop("every_n_steps")
    data.update(schema_version=SCHEMA_VERSION, statistic=statistic, partial=bool(data.get("partial")))
    return data


def _correlation_from_csv(path: Path) -> dict[str, Any]:
    with open(path, newline="") as f:
        rows = [
            {
                "layer": r["layer"],
                "threshold": float(r["threshold"]),
                "pairs": int(r["pairs"]),
                "total_pairs": int(r["total_pairs"]),
                "nodes": int(r.get("nodes") or 0),
                "dead_nodes": int(r.get("dead_nodes") or 0),
            }
            for r in csv.DictReader(f)
        ]
    thresholds = list(dict.fromkeys(r["threshold"] for r in rows))
    return {
        "schema_version": SCHEMA_VERSION,
        "statistic": "node_correlation",
        "partial": False,
        "split": "test",
        "thresholds": thresholds,
        "rows": rows,
    }
