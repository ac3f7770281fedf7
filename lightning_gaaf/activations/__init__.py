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

import warnings

from lightning_gaaf._deprecation import renamed_attributes
from lightning_gaaf.activations.backends import BACKENDS, get_backend, set_backend, use_backend
from lightning_gaaf.activations.catalog import (
    CATALOG,
    ActivationSpec,
    activation_classes,
    activation_factories,
    activation_from_name,
    register_activation,
    unregister_activation,
)
from lightning_gaaf.activations.function import GAAF, default_shape_for, gaaf
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


def set_compile(enabled: bool | None) -> None:
    """Deprecated: ``set_backend("auto" | "eager" | None)``."""
    warnings.warn(
        "set_compile is deprecated: use lightning_gaaf.activations.set_backend('auto'/'eager'/None)",
        DeprecationWarning,
        stacklevel=2,
    )
    set_backend(None if enabled is None else "auto" if enabled else "eager")


def compile_enabled() -> bool:
    """Deprecated: whether the backend in force uses compiled kernels (``get_backend() != "eager"``)."""
    warnings.warn("compile_enabled is deprecated: use get_backend()", DeprecationWarning, stacklevel=2)
    return get_backend() != "eager"


#: Old names, derived from the catalogue (deprecated).
__getattr__ = renamed_attributes(
    __name__,
    {
        "SUPPORTED_ACTIVATIONS": (
            activation_classes,
            "SUPPORTED_ACTIVATIONS is deprecated: use lightning_gaaf.activations.activation_classes()",
        ),
        "ACTIVATIONS": (
            activation_factories,
            "ACTIVATIONS is deprecated: use CATALOG and activation_from_name(name)",
        ),
    },
)
