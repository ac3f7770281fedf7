"""What one catalogue entry is: :class:`ActivationSpec`, its bound form and a recognised match.

An entry names a base activation ``phi`` and everything GAAF needs to know about it; the entries
themselves are listed in :mod:`~lightning_gaaf.activations.catalog`, the lookups that read them live
in :mod:`~lightning_gaaf.activations.registry`. Classes and functions of other libraries are named
as strings and resolved by :func:`resolve_ref` only once their module has been imported by the user.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from torch import Tensor, nn

__all__ = ["ActivationSpec", "BoundActivation", "Match", "Params", "call_args", "resolve_ref"]

Params = tuple[float, ...]


def _no_params(module: nn.Module) -> Params:
    return ()


def call_args(*names_defaults: tuple[str, Any]) -> Callable[[tuple, dict], Params]:
    """Parameters of a functional call ``f(x, p1, p2, ...)`` read positionally or by keyword."""

    def read(args: tuple, kwargs: dict) -> Params:
        out = []
        for i, (key, default) in enumerate(names_defaults):
            value = kwargs[key] if key in kwargs else args[i + 1] if len(args) > i + 1 else default
            out.append(float(value))
        return tuple(out)

    return read


def resolve_ref(ref: type | Callable | str) -> Any:
    """A class/function, or ``"package.module:attr"`` once that module is imported (else None).

    Never imports: an instance of a class (or a reference to a function) can only exist once its
    defining module is imported, and importing one can cost seconds (``transformers.activations``
    pulls in most of ``transformers`` even when only its lazy top-level package is loaded).
    """
    if not isinstance(ref, str) or ":" not in ref:
        return ref
    module_name, _, attr = ref.partition(":")
    module = sys.modules.get(module_name)
    return None if module is None else getattr(module, attr, None)


@dataclass(frozen=True, eq=False)
class ActivationSpec:
    """Everything GAAF knows about one base activation ``phi``.

    Args:
        name: the catalogue name (``"tanh"``); configs, ``targets`` and ``activation_from_name`` use it.
        phi, dphi: ``phi(x, params)`` and ``phi'(x, params)`` in elementwise torch ops.
        build: a plain module computing ``phi`` with the given parameters, ``build(*params)``.
        defaults: the parameters of the module that ``activation_from_name(name)`` builds.
        classes: module classes computing ``phi``; a string ``"package.module:Class"`` names a class
            of another library, resolved only once ``package.module`` is imported.
        params_of: the parameters of a matched module, or None when this instance is not ``phi``
            (``nn.GELU(approximate="tanh")`` is not ``gelu``).
        functions: functional forms (``F.relu``); a string is a Tensor method name (``x.relu()``)
            or ``"package.module:function"``.
        call_params: the parameters of a functional call ``(args, kwargs)``, or None if not ``phi``.
        default_shape: the shape name GAAF uses when none is given (our choice, see shapes.py).
        kernel: the row of the native C kernel table (``csrc/gaaf_kernels.c``); None: no C kernel.
        phi_f32, dphi_f32: optional float32 forms with inlineable polynomials (compiled CPU kernels).
    """

    name: str
    phi: Callable[[Tensor, Params], Tensor]
    dphi: Callable[[Tensor, Params], Tensor]
    build: Callable[..., nn.Module]
    defaults: Params = ()
    classes: tuple[type | str, ...] = ()
    params_of: Callable[[nn.Module], Params | None] = _no_params
    functions: tuple[Callable | str, ...] = ()
    call_params: Callable[[tuple, dict], Params | None] = field(default=lambda args, kwargs: ())
    default_shape: str = "shifted_sigmoid"
    kernel: int | None = None
    phi_f32: Callable[[Tensor, Params], Tensor] | None = None
    dphi_f32: Callable[[Tensor, Params], Tensor] | None = None

    def bind(self, params: Params = ()) -> BoundActivation:
        """This activation with its parameters fixed."""
        return BoundActivation(self, tuple(float(p) for p in params))

    def resolved_classes(self) -> tuple[type, ...]:
        """The classes of :attr:`classes` that exist in this process (foreign ones once imported)."""
        return tuple(c for c in map(resolve_ref, self.classes) if isinstance(c, type))


@dataclass(frozen=True)
class BoundActivation:
    """A spec with its parameters: hashable by (name, params), so equal bases share kernels."""

    spec: ActivationSpec = field(compare=False, hash=False)
    params: Params = ()
    name: str = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "name", self.spec.name)

    def phi(self, x: Tensor) -> Tensor:
        return self.spec.phi(x, self.params)

    def dphi(self, x: Tensor) -> Tensor:
        return self.spec.dphi(x, self.params)

    def phi_f32(self, x: Tensor, grad: bool) -> Tensor:
        fast = self.spec.dphi_f32 if grad else self.spec.phi_f32
        if fast is None:
            return self.dphi(x) if grad else self.phi(x)
        return fast(x, self.params)

    def kernel_params(self) -> tuple[float, float]:
        """The two floats the native kernel reads (slope, alpha, or hardtanh bounds)."""
        return (tuple(self.params) + (0.0, 0.0))[:2]  # type: ignore[return-value]

    def module(self) -> nn.Module:
        return self.spec.build(*self.params)


class Match(NamedTuple):
    """A module, function or call recognised as a catalogue activation, and why."""

    base: BoundActivation
    why: str
