"""GAAF activations: the sawtooth ``g``, shape functions, one fused autograd Function, the module.

``GAAF(base)(x) = phi(x) + g(x) * s(x)`` with ``g(x) = (xK - floor(xK) - 0.5) / K``. ``g`` is a
sawtooth of amplitude ``0.5/K`` whose slope is 1 almost everywhere, so the forward value moves by at
most ``0.5/K * |s(x)|`` while the backward pass returns ``phi'(x) + s(x) + g(x) s'(x)``. ``s`` fades
the extra gradient far into saturation.

The paper gives no formula for ``s`` ("an exponential" for tanh, "a shifted sigmoid" for ReLU). The
defaults here are our choice, following the only public code: ``gauss`` ``exp(-x^2/c)`` with
``c = 3`` for tanh, sigmoid and hardtanh; ``shifted_sigmoid`` ``sigmoid(a (x + b))`` with
``a = 1, b = 1`` for the ReLU family (relu, leaky_relu, elu, gelu, silu, softplus).

Like timm's memory-efficient activations, each activation has a functional form (:func:`gaaf`) and
a module form (:class:`GAAF`); the autograd Function saves only ``x`` and recomputes the derivative.
Supported base activations have analytic derivatives and one fused elementwise kernel per pass:

* float32 on the CPU, for the bases and shapes in :mod:`lightning_gaaf.native`: a C loop compiled at
  first use with the machine's C compiler (``GAAF_NATIVE=0`` / :func:`~lightning_gaaf.native.set_native`
  skips it);
* anything else on CPU or CUDA: the same math compiled with ``torch.compile``;
* no compiler, or ``GAAF_COMPILE=0`` / :func:`set_compile` (False): eager torch ops.

Any other elementwise module goes through a slower generic path (autograd of the base activation
plus a fused GAAF term).
"""

from __future__ import annotations

import functools
import math
import types
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lightning_gaaf import native
from lightning_gaaf._env import env_switch

__all__ = [
    "ACTIVATIONS",
    "DEFAULT_K",
    "GAAF",
    "SHAPES",
    "SUPPORTED_ACTIVATIONS",
    "CallableShape",
    "Gauss",
    "One",
    "Shape",
    "ShiftedSigmoid",
    "activation_from_name",
    "compile_enabled",
    "default_shape_for",
    "gaaf",
    "make_shape",
    "register_shape",
    "sawtooth",
    "set_compile",
]

DEFAULT_K: float = 10_000


# --------------------------------------------------------------------------------------------------
# The sawtooth g(x)
# --------------------------------------------------------------------------------------------------


def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """g is computed in float32 or wider: in half precision ``x*K`` has no fractional part left."""
    return torch.promote_types(dtype, torch.float32)


@functools.cache
def _inverse_k(K: float, dtype: torch.dtype) -> float:
    """``1/K`` rounded *down* in ``dtype``, so ``|g| <= 0.5/K`` holds exactly after rounding.

    Multiplying by a reciprocal instead of dividing keeps compiled kernels fast. Cached: the generic
    path and :func:`sawtooth` ask for it on every call.
    """
    inv = 1.0 / K
    t = torch.tensor(inv, dtype=dtype)
    if float(t) > inv:
        t = torch.nextafter(t, torch.zeros((), dtype=dtype))
    return float(t)


def _times_sawtooth(x: Tensor, f: Tensor | float, K: float, inv_k: float) -> Tensor:
    """``g(x) * f``, the one place where the GAAF term meets non-finite inputs.

    Where ``x*K`` is not finite (inf, NaN, or overflow) the tooth is undefined and the product is
    dropped: +-inf gives what phi gives (``f`` may be ``inf * 0`` there, e.g. a shape's derivative)
    and NaN still comes out of phi and s (never masked). The native C kernels do the same.
    """
    y = x * K
    g = (y - torch.floor(y) - 0.5) * inv_k
    return torch.where(torch.isfinite(y), g * f, 0.0)


def sawtooth(x: Tensor, K: float = DEFAULT_K) -> Tensor:
    """``g(x) = (xK - floor(xK) - 0.5) / K`` in float32 or wider; ``|g| <= 0.5/K`` for finite x."""
    _check_k(K)
    cdt = _compute_dtype(x.dtype)
    return _times_sawtooth(x.to(cdt), 1.0, float(K), _inverse_k(float(K), cdt))


def _check_k(K: float | None) -> None:
    if K is None:
        return
    if isinstance(K, bool) or not isinstance(K, (int, float)) or not math.isfinite(K) or K <= 0:
        raise ValueError(f"GAAF: K must be a positive finite number or None (exact mode), got {K!r}")


# --------------------------------------------------------------------------------------------------
# Shape functions s(x)
# --------------------------------------------------------------------------------------------------


class Shape:
    """A shape function ``s(x)`` with its derivative; subclasses are registered by ``name``.

    ``__call__`` and ``derivative`` must use elementwise torch ops only (they are fused into one
    kernel). Instances are hashable by ``(name, params)`` so equal shapes share a compiled kernel.
    """

    name: str = ""

    def __init__(self, **params: float) -> None:
        self.params = {k: float(v) for k, v in params.items()}

    def __call__(self, x: Tensor) -> Tensor:
        raise NotImplementedError

    def derivative(self, x: Tensor, s: Tensor) -> Tensor:
        """``s'(x)``; ``s`` is ``self(x)``, passed in so it is not computed twice."""
        raise NotImplementedError

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

    def __init__(self, c: float = 3.0) -> None:
        if not c > 0:
            raise ValueError(f"gauss shape: c must be > 0, got {c!r}")
        super().__init__(c=c)
        self._neg_inv_c = -1.0 / float(c)

    def __call__(self, x: Tensor) -> Tensor:
        return torch.exp(x * x * self._neg_inv_c)

    def derivative(self, x: Tensor, s: Tensor) -> Tensor:
        return (2.0 * self._neg_inv_c) * x * s  # NaN at +-inf (inf * 0): dropped with g there


class ShiftedSigmoid(Shape):
    """``s(x) = sigmoid(a (x + b))``: ~1 on the active side, fading far into ``x < 0`` (ReLU family)."""

    name = "shifted_sigmoid"

    def __init__(self, a: float = 1.0, b: float = 1.0) -> None:
        if not a > 0:
            raise ValueError(f"shifted_sigmoid shape: a must be > 0, got {a!r}")
        super().__init__(a=a, b=b)
        self._a, self._b = float(a), float(b)

    def __call__(self, x: Tensor) -> Tensor:
        return torch.sigmoid((x + self._b) * self._a)

    def derivative(self, x: Tensor, s: Tensor) -> Tensor:
        return self._a * s * (1.0 - s)


class One(Shape):
    """``s(x) = 1``: the full extra gradient everywhere (the paper's un-shaped variant)."""

    name = "one"

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

    def key(self) -> tuple:
        return (self.name, id(self.fn))

    def __repr__(self) -> str:
        return getattr(self.fn, "__name__", repr(self.fn))


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


# --------------------------------------------------------------------------------------------------
# Base activations with analytic derivatives
# --------------------------------------------------------------------------------------------------

_SQRT_2_OVER_PI = math.sqrt(2.0 / math.pi)
_INV_SQRT_2 = 1.0 / math.sqrt(2.0)
_INV_SQRT_2PI = 1.0 / math.sqrt(2.0 * math.pi)


@dataclass(frozen=True)
class _Base:
    """phi and phi' of one supported activation, with its parameters baked in."""

    name: str
    params: tuple = ()
    fn: Callable[[Tensor], Tensor] = field(compare=False, hash=False, default=None)
    grad: Callable[[Tensor], Tensor] = field(compare=False, hash=False, default=None)


def _tanh_grad(x: Tensor) -> Tensor:
    t = torch.tanh(x)
    return 1.0 - t * t


def _sigmoid_grad(x: Tensor) -> Tensor:
    s = torch.sigmoid(x)
    return s * (1.0 - s)


def _relu_grad(x: Tensor) -> Tensor:
    return (x > 0).to(x.dtype)


def _silu_grad(x: Tensor) -> Tensor:
    s = torch.sigmoid(x)
    return s * (1.0 + x * (1.0 - s))


def _gelu_grad(x: Tensor) -> Tensor:
    cdf = 0.5 * (1.0 + torch.erf(x * _INV_SQRT_2))
    return cdf + x * torch.exp(-0.5 * x * x) * _INV_SQRT_2PI


def _gelu_tanh_grad(x: Tensor) -> Tensor:
    inner = _SQRT_2_OVER_PI * (x + 0.044715 * x * x * x)
    t = torch.tanh(inner)
    return 0.5 * (1.0 + t) + 0.5 * x * (1.0 - t * t) * _SQRT_2_OVER_PI * (1.0 + 3 * 0.044715 * x * x)


def _base_of(module: nn.Module) -> _Base | None:
    """The analytic description of ``module``, or None when it is not a supported activation."""
    if isinstance(module, nn.Tanh):
        return _Base("tanh", (), torch.tanh, _tanh_grad)
    if isinstance(module, nn.Sigmoid):
        return _Base("sigmoid", (), torch.sigmoid, _sigmoid_grad)
    if isinstance(module, nn.ReLU):
        return _Base("relu", (), torch.relu, _relu_grad)
    if isinstance(module, nn.LeakyReLU):
        slope = float(module.negative_slope)
        return _Base(
            "leaky_relu",
            (slope,),
            lambda x: F.leaky_relu(x, slope),
            lambda x: torch.where(x > 0, torch.ones_like(x), slope),
        )
    if isinstance(module, nn.ELU):
        alpha = float(module.alpha)
        return _Base(
            "elu",
            (alpha,),
            lambda x: F.elu(x, alpha),
            lambda x: torch.where(x > 0, torch.ones_like(x), alpha * torch.exp(torch.clamp(x, max=0.0))),
        )
    if isinstance(module, nn.GELU):
        if module.approximate == "tanh":
            return _Base("gelu_tanh", (), lambda x: F.gelu(x, approximate="tanh"), _gelu_tanh_grad)
        return _Base("gelu", (), F.gelu, _gelu_grad)
    if isinstance(module, nn.SiLU):
        return _Base("silu", (), F.silu, _silu_grad)
    if isinstance(module, nn.Hardtanh):  # also ReLU6
        lo, hi = float(module.min_val), float(module.max_val)
        return _Base(
            "hardtanh",
            (lo, hi),
            lambda x: F.hardtanh(x, lo, hi),
            lambda x: ((x > lo) & (x < hi)).to(x.dtype),
        )
    if isinstance(module, nn.Softplus):
        beta, threshold = float(module.beta), float(module.threshold)
        return _Base(
            "softplus",
            (beta, threshold),
            lambda x: F.softplus(x, beta, threshold),
            lambda x: torch.where(x * beta > threshold, torch.ones_like(x), torch.sigmoid(x * beta)),
        )
    return None


#: Activation classes with an analytic (fast) GAAF path. ReLU6 is covered as a Hardtanh.
SUPPORTED_ACTIVATIONS: tuple[type[nn.Module], ...] = (
    nn.Tanh,
    nn.Sigmoid,
    nn.ReLU,
    nn.LeakyReLU,
    nn.ELU,
    nn.GELU,
    nn.SiLU,
    nn.Hardtanh,
    nn.Softplus,
)

#: Plain activation modules by name (what configs and :func:`activation_from_name` accept).
ACTIVATIONS: dict[str, Callable[[], nn.Module]] = {
    "tanh": nn.Tanh,
    "sigmoid": nn.Sigmoid,
    "relu": nn.ReLU,
    "leaky_relu": nn.LeakyReLU,
    "elu": nn.ELU,
    "gelu": nn.GELU,
    "gelu_tanh": lambda: nn.GELU(approximate="tanh"),
    "silu": nn.SiLU,
    "hardtanh": nn.Hardtanh,
    "relu6": nn.ReLU6,
    "softplus": nn.Softplus,
}

_GAUSS_DEFAULT = ("tanh", "sigmoid", "hardtanh")


def activation_from_name(name: str) -> nn.Module:
    """A fresh plain activation module for a name such as ``"tanh"`` or ``"leaky_relu"``."""
    try:
        return ACTIVATIONS[name]()
    except KeyError:
        raise ValueError(
            f"unknown activation {name!r}; known activations: {', '.join(sorted(ACTIVATIONS))}"
        ) from None


def default_shape_for(base: nn.Module) -> Shape:
    """Our default shape (not from the paper): gauss(c=3) for tanh-like, shifted_sigmoid otherwise."""
    spec = _base_of(base)
    if spec is not None and spec.name in _GAUSS_DEFAULT:
        return Gauss()
    if spec is None and isinstance(base, (nn.Tanhshrink, nn.Softsign, nn.Hardsigmoid)):
        return Gauss()
    return ShiftedSigmoid()


# --------------------------------------------------------------------------------------------------
# Kernels: forward and backward as pure elementwise functions (what torch.compile fuses)
# --------------------------------------------------------------------------------------------------

_COMPILE_OVERRIDE: bool | None = None


def set_compile(enabled: bool | None) -> None:
    """Turn kernel fusion with ``torch.compile`` on/off for this process (None: use ``GAAF_COMPILE``)."""
    global _COMPILE_OVERRIDE
    _COMPILE_OVERRIDE = enabled


def compile_enabled() -> bool:
    """Whether GAAF uses compiled kernels: the native C ones or ``torch.compile``'s (``GAAF_COMPILE``).

    Default on; ``GAAF_COMPILE=0`` (or ``set_compile(False)``) leaves the eager torch ops only.
    """
    if _COMPILE_OVERRIDE is not None:
        return _COMPILE_OVERRIDE
    return env_switch("GAAF_COMPILE")


# Compiled float32 CPU kernels spell exp and tanh out as polynomials. Inductor's C++ backend calls
# Sleef for them, one out-of-line call per vector (tanh ~5x slower than ATen's MKL tanh); plain
# multiply-adds are inlined and scheduled together with the rest of the GAAF arithmetic instead.
# Both are accurate to a few float32 ulp; float64, CUDA and the eager path keep the torch functions.

_LOG2E = 1.4426950408889634
_LN2_HI = 0.693359375  # ln 2 split in two (Cody-Waite): n * _LN2_HI is exact for |n| <= 126
_LN2_LO = -2.12194440e-4
_EXPM1_POLY = (
    1.9875691500e-4,
    1.3981999507e-3,
    8.3334519073e-3,
    4.1665795894e-2,
    1.6666665459e-1,
    5.0000001201e-1,
)
_EXP_MIN = -87.33  # exp(a) < FLT_MIN below this: flushed to 0 (no slow subnormals)
# tanh(x) = x P(x^2) / Q(x^2) on [-c, c], c = 7.905... where tanh rounds to +-1 (Eigen's float tanh).
_TANH_CLAMP = 7.90531110763549805
_TANH_P = (-2.76076847742355e-16, 2.00018790482477e-13, -8.60467152213735e-11, 5.12229709037114e-08)
_TANH_P += (1.48572235717979e-05, 6.37261928875436e-04, 4.89352455891786e-03)
_TANH_Q = (1.19825839466702e-06, 1.18534705686654e-04, 2.26843463243900e-03, 4.89352518554385e-03)


def _horner(x: Tensor, coeffs: tuple[float, ...]) -> Tensor:
    p = x * coeffs[0] + coeffs[1]
    for c in coeffs[2:]:
        p = p * x + c
    return p


def _exp_nonpos(a: Tensor) -> Tensor:
    """``exp(a)`` for float32 ``a <= 0`` (NaN stays NaN) in inlineable ops, within ~1 ulp."""
    ac = torch.where(a < _EXP_MIN, _EXP_MIN, a)  # keeps 2^n a normal float
    n = torch.floor(ac * _LOG2E + 0.5)
    r = (ac - n * _LN2_HI) - n * _LN2_LO  # |r| <= ln(2)/2
    expm1_r = r + r * r * _horner(r, _EXPM1_POLY)
    two_n = ((n.to(torch.int32) + 127) << 23).view(torch.float32)  # 2^n from its exponent bits
    return torch.where(a < _EXP_MIN, 0.0, two_n + two_n * expm1_r)


def _tanh_f32(x: Tensor) -> Tensor:
    """``tanh`` for float32 as a rational function: within ~4 float32 ulp, +-inf -> +-1, NaN -> NaN."""
    xc = torch.clamp(x, -_TANH_CLAMP, _TANH_CLAMP)
    x2 = xc * xc
    t = xc * _horner(x2, _TANH_P) / _horner(x2, _TANH_Q)
    return torch.where(x.abs() < 0.0004, x, t)  # tiny |x|: tanh(x) == x in float32


def _sigmoid_parts(z: Tensor) -> tuple[Tensor, Tensor]:
    """``(sigmoid(z), sigmoid'(z))`` from one ``e = exp(-|z|)``: no overflow, no cancellation."""
    e = _exp_nonpos(-z.abs())
    r = 1.0 / (1.0 + e)
    return torch.where(z >= 0, r, e * r), e * r * r


# Fast float32 CPU forms of phi (with phi') and of s (with s'), keyed by base / shape name.
def _fast_tanh(x: Tensor, params: tuple, grad: bool) -> Tensor:
    t = _tanh_f32(x)
    return 1.0 - t * t if grad else t


def _fast_sigmoid(x: Tensor, params: tuple, grad: bool) -> Tensor:
    s, ds = _sigmoid_parts(x)
    return ds if grad else s


def _fast_silu(x: Tensor, params: tuple, grad: bool) -> Tensor:
    s, ds = _sigmoid_parts(x)
    return s + x * ds if grad else x * s


_FAST_BASES: dict[str, Callable[[Tensor, tuple, bool], Tensor]] = {
    "tanh": _fast_tanh,
    "sigmoid": _fast_sigmoid,
    "silu": _fast_silu,
}


def _fast_gauss(x: Tensor, params: dict[str, float]) -> tuple[Tensor, Tensor]:
    neg_inv_c = -1.0 / params["c"]
    s = _exp_nonpos(x * x * neg_inv_c)
    return s, (2.0 * neg_inv_c) * x * s


def _fast_shifted_sigmoid(x: Tensor, params: dict[str, float]) -> tuple[Tensor, Tensor]:
    a = params["a"]
    s, ds = _sigmoid_parts((x + params["b"]) * a)
    return s, a * ds


def _fast_one(x: Tensor, params: dict[str, float]) -> tuple[Tensor, Tensor]:
    return torch.ones_like(x), torch.zeros_like(x)


_FAST_SHAPES: dict[str, Callable[[Tensor, dict[str, float]], tuple[Tensor, Tensor]]] = {
    "gauss": _fast_gauss,
    "shifted_sigmoid": _fast_shifted_sigmoid,
    "one": _fast_one,
}


def _inductor_options(device_type: str) -> dict[str, Any] | None:
    """256-bit vectors for CPU kernels on Intel AVX-512 CPUs, unless the user set ``cpp.simdlen``.

    These kernels are arithmetic-bound. Their AVX-512 builds ran 2-3x slower than AVX2 on the
    Xeon we measured, and 1.7-2x faster on a Zen 5 EPYC, so other vendors keep inductor's own
    choice (see ``benchmarks/activation.py``).
    """
    if device_type != "cpu" or torch.backends.cpu.get_cpu_capability() != "AVX512":
        return None
    from torch._inductor import config as inductor_config

    if inductor_config.cpp.simdlen is not None or native.cpuinfo_field("vendor_id") != "GenuineIntel":
        return None
    return {"cpp.simdlen": 256}


def _own_code(method: Callable) -> Callable:
    """The bound ``method`` with a code object of its own.

    Dynamo caches compiled graphs per code object (at most ``recompile_limit`` per code); every
    kernel instance getting its own keeps many (base, shape, K) combinations compiled.
    """
    func = method.__func__
    code = func.__code__.replace(co_name=f"{func.__name__}_{id(method.__self__):x}")
    copy = types.FunctionType(code, func.__globals__, code.co_name, func.__defaults__, func.__closure__)
    return types.MethodType(copy, method.__self__)


class _Kernels:
    """Forward/backward of ``phi + g s`` for one (base, shape, K); optionally compiled, per process."""

    def __init__(self, base: _Base, shape: Shape, K: float | None) -> None:
        self.base, self.shape, self.K = base, shape, K
        # 1/K per compute dtype, fixed here so compiled kernels see a constant and no float input.
        self._inv_k = {} if K is None else {dt: _inverse_k(K, dt) for dt in (torch.float32, torch.float64)}
        self._fast_base = _FAST_BASES.get(base.name)
        self._fast_shape = (
            _FAST_SHAPES.get(shape.name) if type(shape) in (Gauss, ShiftedSigmoid, One) else None
        )
        self._compiled: dict[tuple[str, str, bool], Callable | None] = {}
        self._fallback_warned = False
        self._native = None
        if (
            K is not None
            and self._fast_shape is not None
            and native.NativeKernels.supports(base.name, shape.name)
        ):
            self._native = native.NativeKernels(
                base.name, base.params, shape.name, shape.params, float(K), self._inv_k[torch.float32]
            )

    # Reference math (eager path, float64, CUDA). ``x`` is already in the compute dtype.
    def forward_math(self, x: Tensor) -> Tensor:
        y = self.base.fn(x)
        if self.K is None:
            return y
        return y + _times_sawtooth(x, self.shape(x), self.K, self._inv_k[x.dtype])

    def backward_math(self, x: Tensor, grad_out: Tensor) -> Tensor:
        s = self.shape(x)
        d = self.base.grad(x) + s
        if self.K is not None:
            d = d + _times_sawtooth(x, self.shape.derivative(x, s), self.K, self._inv_k[x.dtype])
        return grad_out * d

    # The same math for compiled float32 CPU kernels, with inlineable exp/tanh (see above).
    def _phi(self, x: Tensor, grad: bool) -> Tensor:
        if self._fast_base is not None:
            return self._fast_base(x, self.base.params, grad)
        return self.base.grad(x) if grad else self.base.fn(x)

    def _s(self, x: Tensor) -> tuple[Tensor, Tensor]:
        if self._fast_shape is not None:
            return self._fast_shape(x, self.shape.params)
        s = self.shape(x)
        return s, self.shape.derivative(x, s)

    def fast_forward_math(self, x: Tensor) -> Tensor:
        y = self._phi(x, grad=False)
        if self.K is None:
            return y
        return y + _times_sawtooth(x, self._s(x)[0], self.K, self._inv_k[x.dtype])

    def fast_backward_math(self, x: Tensor, grad_out: Tensor) -> Tensor:
        s, ds = self._s(x)
        d = self._phi(x, grad=True) + s
        if self.K is not None:
            d = d + _times_sawtooth(x, ds, self.K, self._inv_k[x.dtype])
        return grad_out * d

    def _math(self, which: str, fast: bool) -> Callable:
        if fast:
            return self.fast_forward_math if which == "forward" else self.fast_backward_math
        return self.forward_math if which == "forward" else self.backward_math

    def _compiled_fn(self, which: str, x: Tensor) -> tuple[Callable | None, bool]:
        """The compiled kernel for ``which`` on x's device/dtype (None where eager is the right path)."""
        if (
            not compile_enabled()
            or isinstance(self.shape, CallableShape)
            or x.device.type not in ("cpu", "cuda")
            or x.numel() < 2  # sizes 0 and 1 would each be compiled separately
            or torch.compiler.is_compiling()  # inside a user's torch.compile: let it fuse us
        ):
            return None, False
        fast = x.device.type == "cpu" and x.dtype == torch.float32
        key = (which, x.device.type, fast)
        if key not in self._compiled:
            self._compiled[key] = torch.compile(
                _own_code(self._math(which, fast)), fullgraph=True, options=_inductor_options(x.device.type)
            )
        return self._compiled[key], fast

    def _run(self, which: str, *tensors: Tensor) -> Tensor:
        flat = [t.reshape(-1) for t in tensors]
        fn, fast = self._compiled_fn(which, tensors[0])
        out = None
        if fn is not None:
            for t in flat:  # one kernel for all sizes; constants (K, 1/K, shape parameters) stay baked in
                torch._dynamo.maybe_mark_dynamic(t, 0)
            try:
                out = fn(*flat)
            except Exception as err:
                # No C++ compiler, unsupported platform...: fall back to eager for good, once warned.
                if not self._fallback_warned:
                    warnings.warn(
                        f"GAAF: torch.compile failed here ({type(err).__name__}: {str(err)[:200]}); "
                        "using the eager kernels (set GAAF_COMPILE=0 to skip compilation)",
                        RuntimeWarning,
                        stacklevel=4,
                    )
                    self._fallback_warned = True
                self._compiled[(which, tensors[0].device.type, fast)] = None
        if out is None:
            out = self._math(which, fast=False)(*flat)
        return out.view(tensors[0].shape)

    def _use_native(self, *tensors: Tensor) -> bool:
        """Native C kernels: float32 CPU tensors, a supported (base, shape), compiled kernels on.

        Ordered cheapest first: this runs twice per GAAF layer per training step.
        """
        return (
            self._native is not None
            and all(t.dtype is torch.float32 and t.is_cpu for t in tensors)
            and compile_enabled()
            and native.native_enabled()
            and not torch.compiler.is_compiling()
            and native.load_library() is not None
        )

    def forward(self, x: Tensor) -> Tensor:
        if self.K is None:
            return self.base.fn(x)  # exact mode: bit-identical to phi
        xc = _as_dtype(x, _compute_dtype(x.dtype))
        out = self._native.forward(xc.contiguous()) if self._use_native(xc) else self._run("forward", xc)
        return _as_dtype(out, x.dtype)

    def backward(self, x: Tensor, grad_out: Tensor) -> Tensor:
        xc = _as_dtype(x, _compute_dtype(x.dtype))
        gc = _as_dtype(grad_out, xc.dtype)  # x's shape (autograd checks it), any strides (even expanded)
        if self._use_native(xc, gc):
            out = self._native.backward(xc.contiguous(), gc.contiguous())
        else:
            out = self._run("backward", xc, gc)
        return _as_dtype(out, x.dtype)


def _as_dtype(t: Tensor, dtype: torch.dtype) -> Tensor:
    """``t.to(dtype)`` without the cost of a no-op call (it sits on every layer's hot path)."""
    return t if t.dtype is dtype else t.to(dtype)


_KERNEL_CACHE: dict[tuple, _Kernels] = {}


def _kernels_for(base: _Base, shape: Shape, K: float | None) -> _Kernels:
    key = (base, shape, K)
    kernels = _KERNEL_CACHE.get(key)
    if kernels is None:
        kernels = _KERNEL_CACHE[key] = _Kernels(base, shape, K)
    return kernels


class _GAAFFunction(torch.autograd.Function):
    """Fused ``phi + g s``: saves only ``x``; backward recomputes ``phi' + s + g s'``."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, kernels: _Kernels) -> Tensor:
        ctx.save_for_backward(x)
        ctx.kernels = kernels
        return kernels.forward(x)

    @staticmethod
    def backward(ctx: Any, grad_out: Tensor) -> tuple[Tensor, None]:
        (x,) = ctx.saved_tensors
        return ctx.kernels.backward(x, grad_out), None


# The generic path's GAAF term ``g s`` alone: the fused Function around a base that is zero, so the
# term has the same kernels (forward ``g s``, backward ``s + g s'``) as every supported base.
_TERM_ONLY = _Base("gaaf_term", (), torch.zeros_like, torch.zeros_like)


# --------------------------------------------------------------------------------------------------
# Functional and module forms
# --------------------------------------------------------------------------------------------------


def _resolve_base(base: str | nn.Module) -> nn.Module:
    if isinstance(base, str):
        return activation_from_name(base)
    if isinstance(base, nn.Module):
        return base
    raise TypeError(f"GAAF: base must be an activation name or nn.Module, got {type(base).__name__}")


def _fused(x: Tensor, spec: _Base, shape: Shape, K: float | None) -> Tensor:
    kernels = _kernels_for(spec, shape, K)
    if x.requires_grad and torch.is_grad_enabled():
        return _GAAFFunction.apply(x, kernels)
    with torch.no_grad():
        return kernels.forward(x)


def _apply(x: Tensor, base: nn.Module, spec: _Base | None, shape: Shape, K: float | None) -> Tensor:
    if spec is not None:
        return _fused(x, spec, shape, K)
    # Generic path: the base keeps its own autograd; GAAF never runs in place.
    phi = base(x.clone() if getattr(base, "inplace", False) else x)
    return phi + _fused(x, _TERM_ONLY, shape, K)


def gaaf(
    x: Tensor,
    base: str | nn.Module = "tanh",
    shape: str | Shape | Callable[[Tensor], Tensor] | None = None,
    K: float | None = DEFAULT_K,
    **shape_kwargs: float,
) -> Tensor:
    """Functional GAAF: ``phi(x) + g(x) s(x)`` for a base activation given by name or module.

    ``K=None`` is exact mode: the forward is ``phi(x)`` bit for bit and the backward ``phi' + s``.
    """
    _check_k(K)
    base_module = _resolve_base(base)
    shape_obj = default_shape_for(base_module) if shape is None else make_shape(shape, **shape_kwargs)
    return _apply(x, base_module, _base_of(base_module), shape_obj, None if K is None else float(K))


class GAAF(nn.Module):
    """Gradient Acceleration in Activation Functions around a plain activation module.

    Args:
        base: the activation to accelerate (module or name); kept as the child ``base`` so
            :func:`~lightning_gaaf.surgery.strip_gaaf` can restore it unchanged.
        shape: shape function name (``gauss``, ``shifted_sigmoid``, ``one``), a :class:`Shape`, or
            any elementwise callable; None picks our default for the base (see module docstring).
        K: sawtooth frequency (paper: 10 000); None = exact mode (forward exactly ``phi``).
        **shape_kwargs: parameters of a named shape, e.g. ``c=3.0`` or ``a=1.0, b=1.0``.

    GAAF never runs in place (it wraps ``ReLU(inplace=True)`` out of place) and adds no parameters
    or buffers: a base's own parameters keep their ``state_dict`` keys.
    """

    def __init__(
        self,
        base: str | nn.Module,
        shape: str | Shape | Callable[[Tensor], Tensor] | None = None,
        K: float | None = DEFAULT_K,
        **shape_kwargs: float,
    ) -> None:
        super().__init__()
        _check_k(K)
        self.base = _resolve_base(base)
        if isinstance(self.base, GAAF):
            raise ValueError("GAAF: the base is already a GAAF module")
        self.shape = default_shape_for(self.base) if shape is None else make_shape(shape, **shape_kwargs)
        self.K = None if K is None else float(K)
        self._spec = _base_of(self.base)
        # The base is a child only for repr and restoration: its state keeps the keys it had before.
        self.register_state_dict_post_hook(_drop_base_prefix)
        self.register_load_state_dict_pre_hook(_add_base_prefix)

    @property
    def fused(self) -> bool:
        """True when the base has an analytic derivative (fast fused path)."""
        return self._spec is not None

    def forward(self, x: Tensor) -> Tensor:
        return _apply(x, self.base, self._spec, self.shape, self.K)

    def __repr__(self) -> str:
        base = repr(self.base)
        if base.endswith("()"):
            base = base[:-2]
        k = "None" if self.K is None else f"{self.K:g}" if self.K < 1e6 else repr(self.K)
        return f"GAAF({base}, shape={self.shape!r}, K={k})"


def _drop_base_prefix(module: nn.Module, state_dict: dict, prefix: str, local_metadata: Any) -> None:
    inner = prefix + "base."
    for key in [k for k in state_dict if k.startswith(inner)]:
        state_dict[prefix + key[len(inner) :]] = state_dict.pop(key)


def _add_base_prefix(
    module: nn.Module, state_dict: dict, prefix: str, local_metadata: Any, strict: bool, *args: Any
) -> None:
    own = {name for name, _ in module.base.named_parameters()} | {n for n, _ in module.base.named_buffers()}
    for name in own:
        key = prefix + name
        if key in state_dict:
            state_dict[prefix + "base." + name] = state_dict.pop(key)
