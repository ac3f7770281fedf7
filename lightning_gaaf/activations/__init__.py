"""GAAF activations: ``GAAF(base)(x) = phi(x) + g(x) * s(x)``, one concept per module.

* :mod:`~lightning_gaaf.activations.sawtooth`: ``g(x) = (xK - floor(xK) - 0.5) / K``;
* :mod:`~lightning_gaaf.activations.shapes`: the shape functions ``s(x)`` and their registry;
* :mod:`~lightning_gaaf.activations.catalog`: the one table of supported activations (entries:
  :mod:`~lightning_gaaf.activations.spec`, formulas: :mod:`~lightning_gaaf.activations.derivatives`);
* :mod:`~lightning_gaaf.activations.registry`: lookups in that table and registration;
* :mod:`~lightning_gaaf.activations.function`: the custom ops, :func:`gaaf` and :class:`GAAF`;
* :mod:`~lightning_gaaf.activations.backends`: which kernels run (``GAAF_BACKEND``).

``g`` is a sawtooth of amplitude ``0.5/K`` whose slope is 1 almost everywhere, so the forward value
moves by at most ``0.5/K * |s(x)|`` while the backward pass returns ``phi'(x) + s(x) + g(x) s'(x)``.
``s`` fades the extra gradient far into saturation. See ``docs/activations.md``.
"""

from __future__ import annotations

from lightning_gaaf.activations import catalog  # noqa: F401  (puts the built-in table in CATALOG)
from lightning_gaaf.activations.backends import BACKENDS, get_backend, set_backend, use_backend
from lightning_gaaf.activations.function import GAAF, default_shape_for, gaaf
from lightning_gaaf.activations.registry import (
    CATALOG,
    activation_classes,
    activation_from_name,
    register_activation,
    unregister_activation,
)
from lightning_gaaf.activations.sawtooth import DEFAULT_K, sawtooth
from lightning_gaaf.activations.shapes import (
    SHAPES,
    CallableShape,
    Gauss,
    One,
    Shape,
    ShiftedSigmoid,
    make_shape,
    register_shape,
)
from lightning_gaaf.activations.spec import ActivationSpec

__all__ = [
    "BACKENDS",
    "CATALOG",
    "DEFAULT_K",
    "GAAF",
    "SHAPES",
    "ActivationSpec",
    "CallableShape",
    "Gauss",
    "One",
    "Shape",
    "ShiftedSigmoid",
    "activation_classes",
    "activation_from_name",
    "default_shape_for",
    "gaaf",
    "get_backend",
    "make_shape",
    "register_activation",
    "register_shape",
    "sawtooth",
    "set_backend",
    "unregister_activation",
    "use_backend",
]
