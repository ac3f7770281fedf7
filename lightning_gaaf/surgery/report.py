"""What surgery did: :class:`GAAFReport`, one :class:`Replacement` per replaced place, and why."""

from __future__ import annotations

import types
from typing import Any, NamedTuple

__all__ = ["GAAFReport", "Replacement", "show"]


class Replacement(NamedTuple):
    """One replaced activation: what was there and what is there now."""

    old: Any
    new: Any


class GAAFReport(dict):
    """``{qualified name: Replacement(old, new)}`` plus why each matched and what was left alone.

    ``reasons`` maps each replaced name to why it matched (which catalogue entry, registered class,
    function attribute or call). ``skipped`` maps names that look like activations but were not
    replaced to the reason. ``shared`` maps a name to the other names of the *same* module object
    (wrapped once, stays shared). ``attributes`` and ``functional`` list the function-valued
    attributes and the rewritten functional calls (also keys of the report).
    """

    def __init__(self) -> None:
        super().__init__()
        self.reasons: dict[str, str] = {}
        self.skipped: dict[str, str] = {}
        self.shared: dict[str, tuple[str, ...]] = {}
        self.attributes: list[str] = []
        self.functional: list[str] = []

    @property
    def count(self) -> int:
        """Number of distinct objects replaced (a shared module counts once)."""
        return len({id(r.new) for r in self.values()})

    def summary(self) -> str:
        """Readable lines: what was replaced and why, then the look-alikes left alone."""
        lines = [f"{self.count} activation(s) replaced at {len(self)} place(s)"]
        for name, (old, new) in self.items():
            extra = f"  (shared with {', '.join(self.shared[name])})" if name in self.shared else ""
            why = f"  [{self.reasons[name]}]" if name in self.reasons else ""
            lines.append(f"  {name or '<root>'}: {show(old)} -> {new!r}{why}{extra}")
        if self.skipped:
            lines.append(f"{len(self.skipped)} look-alike(s) not replaced")
            lines.extend(f"  {name}: {why}" for name, why in self.skipped.items())
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.summary()


def show(obj: Any) -> str:
    """A module as its repr, a function as ``function module.name``."""
    if isinstance(obj, (types.FunctionType, types.BuiltinFunctionType)):
        return f"function {obj.__module__}.{obj.__name__}"
    return repr(obj)
