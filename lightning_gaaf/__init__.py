"""lightning-gaaf: Gradient Acceleration in Activation Functions for PyTorch Lightning.

GAAF adds a tiny sawtooth ``g(x)`` times a shape function ``s(x)`` to an activation: the forward
value moves by less than ``0.5/K`` while the backward pass gains ``s(x)``, pushing gradient into the
activation's saturation area. One implementation lives in :mod:`lightning_gaaf.activations`; models
stay plain and get GAAF through :func:`apply_gaaf` or the :class:`GAAFCallback`. Activations of other
libraries are taught with :func:`register_activation`; kernels are chosen with :func:`set_backend`.
"""

from lightning_gaaf.activations import GAAF, gaaf, register_activation, set_backend
from lightning_gaaf.callback import GAAFCallback
from lightning_gaaf.surgery import apply_gaaf, strip_gaaf

__all__ = ["GAAF", "GAAFCallback", "apply_gaaf", "gaaf", "register_activation", "set_backend", "strip_gaaf"]
__version__ = "0.1.0"
