"""Renamed module attributes: one PEP 562 ``__getattr__`` that warns, then answers with the new thing."""

from __future__ import annotations

import warnings
from collections.abc import Callable, Mapping
from typing import Any

#: old attribute name -> (what it now returns, built on access; the DeprecationWarning's message)
Renamed = Mapping[str, tuple[Callable[[], Any], str]]


def renamed_attributes(module: str, renamed: Renamed) -> Callable[[str], Any]:
    """A module-level ``__getattr__`` for ``module`` that serves the ``renamed`` attributes with a warning."""

    def __getattr__(name: str) -> Any:
        if name in renamed:
            value, message = renamed[name]
            warnings.warn(message, DeprecationWarning, stacklevel=2)
            return value()
        raise AttributeError(f"module {module!r} has no attribute {name!r}")

    return __getattr__
