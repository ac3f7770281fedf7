"""What a run is: its directory, saved config, checkpoints and ``--ckpt_path``, random state, stop
signals and exit codes, its W&B run, and :func:`fit_and_test`, which runs one and returns its
:class:`RunResult`.

Importing this package imports neither torch nor Lightning; the names below load their module on
first use, so the programs' ``--help`` and ``--list-configs`` start at once.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from lightning_gaaf.run.fit import fit_and_test
    from lightning_gaaf.run.result import RunResult

__all__ = ["RunResult", "fit_and_test"]

_SOURCES = {"fit_and_test": "lightning_gaaf.run.fit", "RunResult": "lightning_gaaf.run.result"}


def __getattr__(name: str) -> Any:
    if name not in _SOURCES:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(_SOURCES[name]), name)
    globals()[name] = value
    return value
