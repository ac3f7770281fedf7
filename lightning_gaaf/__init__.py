"""lightning-gaaf: Gradient Acceleration in Activation Functions for PyTorch Lightning.

GAAF adds a tiny sawtooth ``g(x)`` times a shape function ``s(x)`` to an activation: the forward
value moves by less than ``0.5/K`` while the backward pass gains ``s(x)``, pushing gradient into the
activation's saturation area. One implementation lives in :mod:`lightning_gaaf.activations`; models
stay plain and get GAAF through :func:`apply_gaaf` or the :class:`GAAFCallback`. Activations of other
libraries are taught with :func:`register_activation`; kernels are chosen with :func:`set_backend`.
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

# The public names load on first use, so that ``import lightning_gaaf.run.threads`` (which a
# program runs before torch, to set torch's OpenMP environment) does not import torch.
_HOMES = {
    "GAAF": "lightning_gaaf.activations",
    "gaaf": "lightning_gaaf.activations",
    "register_activation": "lightning_gaaf.activations",
    "set_backend": "lightning_gaaf.activations",
    "GAAFCallback": "lightning_gaaf.callback",
    "apply_gaaf": "lightning_gaaf.surgery",
    "strip_gaaf": "lightning_gaaf.surgery",
}


def __getattr__(name: str) -> Any:
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(home), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])
