"""lightning-gaaf: Gradient Acceleration in Activation Functions for PyTorch Lightning.

GAAF adds a tiny sawtooth ``g(x)`` times a shape function ``s(x)`` to an activation: the forward
value moves by less than ``0.5/K`` while the backward pass gains ``s(x)``, pushing gradient into the
activation's saturation area. One implementation lives in :mod:`lightning_gaaf.activations`; models
stay plain and get GAAF through :func:`apply_gaaf` or the :class:`GAAFCallback`. Activations of other
libraries are taught with :func:`register_activation`; kernels are chosen with :func:`set_backend`.

The names below are loaded on first access (PEP 562), so each costs only what it uses:
``from lightning_gaaf import GAAF, apply_gaaf`` imports torch but not Lightning, ``GAAFCallback``
imports Lightning, and ``gaaf-report`` (which imports this package) imports neither.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from lightning_gaaf.activations import GAAF, gaaf, register_activation, set_backend
    from lightning_gaaf.callback import GAAFCallback
    from lightning_gaaf.surgery import apply_gaaf, strip_gaaf

__all__ = ["GAAF", "GAAFCallback", "apply_gaaf", "gaaf", "register_activation", "set_backend", "strip_gaaf"]
__version__ = "0.1.0"

#: public name -> the submodule that defines it (imported on first access)
_SOURCES: dict[str, str] = {
    "GAAF": "lightning_gaaf.activations",
    "gaaf": "lightning_gaaf.activations",
    "register_activation": "lightning_gaaf.activations",
    "set_backend": "lightning_gaaf.activations",
    "apply_gaaf": "lightning_gaaf.surgery",
    "strip_gaaf": "lightning_gaaf.surgery",
    "GAAFCallback": "lightning_gaaf.callback",
}


def __getattr__(name: str) -> Any:
    """Import the submodule behind a public name on first access, then keep the name here."""
    source = _SOURCES.get(name)
    if source is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(source), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
