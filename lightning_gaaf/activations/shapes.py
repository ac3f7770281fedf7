"""Shape functions ``s(x)``: the family, its name registry, and the float32 / native forms.

The paper gives no formula for ``s`` ("an exponential" for tanh, "a shifted sigmoid" for ReLU). The
defaults are our choice, following the only public code: ``gauss`` ``exp(-x^2/c)`` with ``c = 3``
and ``shifted_sigmoid`` ``sigmoid(a (x + b))`` with ``a = 1, b = 1``. Which activation gets which
default is part of its catalogue entry (:mod:`lightning_gaaf.activations.catalog`).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable

import torch
from torch import Tensor

from lightning_gaaf.activations.f32math import exp_nonpos, sigmoid_parts

__all__ = [
    "SHAPES",
    "CallableShape",
    "Gauss",
    "One",
    "Shape",
    "ShiftedSigmoid",
    "make_shape",
    "register_shape",
]


class Shape:
    """A shape function ``s(x)`` with its derivative; subclasses are registered by ``name``.

    ``__call__`` and ``derivative`` must use elementwise torch ops only (they are fused into one
    kernel). Instances are hashable by ``(name, params)`` so equal shapes share a compiled kernel.
    ``kernel`` is the shape's column in the native C table (None: no native kernel).
    """

    name: str = ""
    kernel: int | None = None

    def __init__(self, **params: float) -> None:
        self.params = {k: float(v) for k, v in params.items()}

    def __call__(self, x: Tensor) -> Tensor:
        raise NotImplementedError

    def derivative(self, x: Tensor, s: Tensor) -> Tensor:
        """``s'(x)``; ``s`` is ``self(x)``, passed in so it is not computed twice."""
        raise NotImplementedError

    def parts(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """``(s(x), s'(x))`` with torch's functions (the reference math)."""
        s = self(x)
        return s, self.derivative(x, s)

    def parts_f32(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """``(s, s')`` for compiled float32 CPU kernels (inlineable polynomials where it matters)."""
        return self.parts(x)

    def kernel_params(self) -> tuple[float, float]:
        """The two floats the native kernel reads for this shape."""
        return (0.0, 0.0)

    def op_params(self) -> list[float] | None:
        """Parameter values in constructor order, so ``SHAPES[name](*values) == self``; None if not.

        What the GAAF ops take to name this shape (a registered class with plain float parameters).
        """
        try:
            names = [
                p.name
                for p in inspect.signature(type(self)).parameters.values()
                if p.kind is p.POSITIONAL_OR_KEYWORD
            ]
            values = [self.params[n] for n in names]
            if SHAPES.get(self.name) is not type(self) or type(self)(*values) != self:
                return None
        except (KeyError, TypeError, ValueError):
            return None
        return values

    def key(self) -> tuple:
        return (self.name, tuple(sorted(self.params.items())))

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Shape) and self.key() == other.key()

    def __hash__(self) -> int:
        return hash(self.key())

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.params.items())
        return f"{self.name}({args})"


class Gauss(Shape):
    """``s(x) = exp(-x^2 / c)``: 1 at the origin, fading into both saturated tails (tanh-like)."""

    name = "gauss"
    kernel = 0

    def __init__(self, c: float = 3.0) -> None:
        if not c > 0:
            raise ValueError(f"gauss shape: c must be > 0, got {c!r}")
        super().__init__(c=c)
        self._neg_inv_c = -1.0 / float(c)

    def __call__(self, x: Tensor) -> Tensor:
        return torch.exp(x * x * self._neg_inv_c)

    def derivative(self, x: Tensor, s: Tensor) -> Tensor:
        return (2.0 * self._neg_inv_c) * x * s  # NaN at +-inf (inf * 0): dropped with g there

    def parts_f32(self, x: Tensor) -> tuple[Tensor, Tensor]:
        s = exp_nonpos(x * x * self._neg_inv_c)
        return s, (2.0 * self._neg_inv_c) * x * s

    def kernel_params(self) -> tuple[float, float]:
        return (self._neg_inv_c, 0.0)


class ShiftedSigmoid(Shape):
    """``s(x) = sigmoid(a (x + b))``: ~1 on the active side, fading far into ``x < 0`` (ReLU family)."""

    name = "shifted_sigmoid"
    kernel = 1

    def __init__(self, a: float = 1.0, b: float = 1.0) -> None:
        if not a > 0:
            raise ValueError(f"shifted_sigmoid shape: a must be > 0, got {a!r}")
        super().__init__(a=a, b=b)
        self._a, self._b = float(a), float(b)

    def __call__(self, x: Tensor) -> Tensor:
        return torch.sigmoid((x + self._b) * self._a)

    def derivative(self, x: Tensor, s: Tensor) -> Tensor:
        return self._a * s * (1.0 - s)

    def parts_f32(self, x: Tensor) -> tuple[Tensor, Tensor]:
        s, ds = sigmoid_parts((x + self._b) * self._a)
        return s, self._a * ds

    def kernel_params(self) -> tuple[float, float]:
        return (self._a, self._b)


class One(Shape):
    """``s(x) = 1``: the full extra gradient everywhere (the paper's un-shaped variant)."""

    name = "one"
    kernel = 2

    def __call__(self, x: Tensor) -> Tensor:
        return torch.ones_like(x)

    def derivative(self, x: Tensor, s: Tensor) -> Tensor:
        return torch.zeros_like(x)


class CallableShape(Shape):
    """Wraps any elementwise ``fn(x) -> s``; ``s'`` comes from autograd (slower, never compiled)."""

    name = "callable"

    def __init__(self, fn: Callable[[Tensor], Tensor]) -> None:
        super().__init__()
        self.fn = fn

    def __call__(self, x: Tensor) -> Tensor:
        return self.fn(x)

    def derivative(self, x: Tensor, s: Tensor) -> Tensor:
        with torch.enable_grad():
            xd = x.detach().requires_grad_(True)
            (ds,) = torch.autograd.grad(self.fn(xd).sum(), xd)
        return ds

    def op_params(self) -> None:
        return None

    def key(self) -> tuple:
        return (self.name, id(self.fn))

    def __repr__(self) -> str:
        return getattr(self.fn, "__name__", repr(self.fn))


#: Shape classes by name (what ``shape="gauss"`` and configs accept).
SHAPES: dict[str, type[Shape]] = {}


def register_shape(cls: type[Shape]) -> type[Shape]:
    """Register a :class:`Shape` subclass under ``cls.name`` (usable as a decorator)."""
    if not cls.name:
        raise ValueError("register_shape: a Shape subclass needs a non-empty `name`")
    SHAPES[cls.name] = cls
    return cls


for _cls in (Gauss, ShiftedSigmoid, One):
    register_shape(_cls)


def make_shape(shape: str | Shape | Callable[[Tensor], Tensor], **kwargs: float) -> Shape:
    """Build a shape from a registered name (with keyword parameters), a Shape, or a callable."""
    if isinstance(shape, Shape):
        if kwargs:
            raise ValueError("make_shape: keyword parameters only go with a shape *name*")
        return shape
    if isinstance(shape, str):
        if shape not in SHAPES:
            raise ValueError(f"GAAF: unknown shape {shape!r}; known shapes: {', '.join(sorted(SHAPES))}")
        try:
            return SHAPES[shape](**kwargs)
        except TypeError as err:
            raise ValueError(f"GAAF: bad parameters {kwargs} for shape {shape!r}: {err}") from None
    if callable(shape):
        return CallableShape(shape)
    raise TypeError(f"GAAF: shape must be a name, a Shape or a callable, got {type(shape).__name__}")
