"""The ``stats/`` file schema: one JSON file per statistic, versioned, written atomically.

Every file is a JSON object with at least::

    {"schema_version": 1, "statistic": "<name>", "partial": false, ...}

``partial`` is true when the run ended with an exception (interrupted, crashed) and the file holds
what was recorded until then. NaN and infinity are stored as ``null`` so any JSON reader can load
the files. :func:`read_stats` also reads the files of earlier versions (without
``schema_version``: ``weights.json`` and ``node_correlation.csv``) and returns them in the current
layout.
"""

from __future__ import annotations

import csv
import json
import math
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

#: Version of the layout written by :func:`write_stats`; :func:`read_stats` reads this and older ones.
SCHEMA_VERSION = 1

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


def _json_safe(obj: Any) -> Any:
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, Mapping):
        return {str(k): _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_json_safe(v) for v in obj]
    if hasattr(obj, "tolist"):  # numpy arrays and scalars
        return _json_safe(obj.tolist())
    return obj


def write_stats(stats_dir: Path, statistic: str, payload: Mapping[str, Any], partial: bool = False) -> Path:
    """Write ``stats_dir/<FILES[statistic]>`` and return its path.

    The file is written to a temporary name and renamed, so a reader (or an interruption) never
    sees half a file.
    """
    if statistic not in FILES:
        raise ValueError(f"unknown statistic {statistic!r}; known: {', '.join(FILES)}")
    stats_dir = Path(stats_dir)
    stats_dir.mkdir(parents=True, exist_ok=True)
    record = {"schema_version": SCHEMA_VERSION, "statistic": statistic, "partial": bool(partial)}
    record.update({k: v for k, v in payload.items() if k not in record})
    path = stats_dir / FILES[statistic]
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(_json_safe(record), allow_nan=False) + "\n")
    os.replace(tmp, path)
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
