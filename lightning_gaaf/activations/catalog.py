"""The activation catalogue: the one table that says what each supported activation *is*.

Each :class:`ActivationSpec` holds the name, the module classes that compute it (torch's, and the
classes of timm and Hugging Face transformers, named as strings and resolved only once that library
has been imported by the user: nothing here imports them), its functional forms, ``phi`` and
``phi'``, the default shape, and the row of the native C kernel table. Surgery (modules, function
attributes, fx functional calls), the models' activation names, the kernels and ``docs/activations.md``
all read this table; nothing else in the package lists activations.

Adding an activation is one :func:`register_activation` call (or one entry in ``_BUILTIN`` below),
plus a C kernel row where a native kernel is wanted.
"""

from __future__ import annotations

import functools
import importlib
import math
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lightning_gaaf.activations.f32math import exp_nonpos, sigmoid_parts, tanh_f32

__all__ = [
    "CATALOG",
    "ActivationSpec",
    "BoundActivation",
    "Match",
    "activation_classes",
    "activation_from_name",
    "functional_words",
    "match_call",
    "match_function",
    "match_module",
    "register_activation",
    "spec_by_name",
    "unregister_activation",
]

Params = tuple[float, ...]


def _no_params(module: nn.Module) -> Params:
    return ()


def _call_args(*names_defaults: tuple[str, Any]) -> Callable[[tuple, dict], Params]:
    """Parameters of a functional call ``f(x, p1, p2, ...)`` read positionally or by keyword."""

    def read(args: tuple, kwargs: dict) -> Params:
        out = []
        for i, (key, default) in enumerate(names_defaults):
            value = kwargs[key] if key in kwargs else args[i + 1] if len(args) > i + 1 else default
            out.append(float(value))
        return tuple(out)

    return read


@dataclass(frozen=True, eq=False)
class ActivationSpec:
    """Everything GAAF knows about one base activation ``phi``.

    Args:
        name: the catalogue name (``"tanh"``); configs, ``targets`` and ``activation_from_name`` use it.
        phi, dphi: ``phi(x, params)`` and ``phi'(x, params)`` in elementwise torch ops.
        build: a plain module computing ``phi`` with the given parameters, ``build(*params)``.
        defaults: the parameters of the module that ``activation_from_name(name)`` builds.
        classes: module classes computing ``phi``; a string ``"package.module:Class"`` names a class
            of another library, resolved only when ``package`` is already imported.
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
        return tuple(c for c in map(_resolve, self.classes) if isinstance(c, type))


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


# --------------------------------------------------------------------------------------------------
# phi and phi'
# --------------------------------------------------------------------------------------------------

_SQRT_2_OVER_PI = math.sqrt(2.0 / math.pi)
_INV_SQRT_2 = 1.0 / math.sqrt(2.0)
_INV_SQRT_2PI = 1.0 / math.sqrt(2.0 * math.pi)
_QUICK = 1.702


def _tanh_grad(x: Tensor, p: Params) -> Tensor:
    t = torch.tanh(x)
    return 1.0 - t * t


def _sigmoid_grad(x: Tensor, p: Params) -> Tensor:
    s = torch.sigmoid(x)
    return s * (1.0 - s)


def _silu_grad(x: Tensor, p: Params) -> Tensor:
    s = torch.sigmoid(x)
    return s * (1.0 + x * (1.0 - s))


def _gelu_grad(x: Tensor, p: Params) -> Tensor:
    cdf = 0.5 * (1.0 + torch.erf(x * _INV_SQRT_2))
    return cdf + x * torch.exp(-0.5 * x * x) * _INV_SQRT_2PI


def _gelu_tanh_grad(x: Tensor, p: Params) -> Tensor:
    inner = _SQRT_2_OVER_PI * (x + 0.044715 * x * x * x)
    t = torch.tanh(inner)
    return 0.5 * (1.0 + t) + 0.5 * x * (1.0 - t * t) * _SQRT_2_OVER_PI * (1.0 + 3 * 0.044715 * x * x)


def _quick_gelu_grad(x: Tensor, p: Params) -> Tensor:
    s = torch.sigmoid(_QUICK * x)
    return s + _QUICK * x * s * (1.0 - s)


def _hardtanh_grad(x: Tensor, p: Params) -> Tensor:
    return ((x > p[0]) & (x < p[1])).to(x.dtype)


def _softplus_grad(x: Tensor, p: Params) -> Tensor:
    return torch.where(x * p[0] > p[1], torch.ones_like(x), torch.sigmoid(x * p[0]))


def _softsign_grad(x: Tensor, p: Params) -> Tensor:
    d = 1.0 + x.abs()
    return 1.0 / (d * d)


def _f32_tanh(x: Tensor, p: Params) -> Tensor:
    return tanh_f32(x)


def _f32_tanh_grad(x: Tensor, p: Params) -> Tensor:
    t = tanh_f32(x)
    return 1.0 - t * t


def _f32_sigmoid(x: Tensor, p: Params) -> Tensor:
    return sigmoid_parts(x)[0]


def _f32_sigmoid_grad(x: Tensor, p: Params) -> Tensor:
    return sigmoid_parts(x)[1]


def _f32_silu(x: Tensor, p: Params) -> Tensor:
    return x * sigmoid_parts(x)[0]


def _f32_silu_grad(x: Tensor, p: Params) -> Tensor:
    s, ds = sigmoid_parts(x)
    return s + x * ds


def _f32_elu_grad(x: Tensor, p: Params) -> Tensor:
    return torch.where(x > 0, 1.0, p[0] * exp_nonpos(torch.clamp(x, max=0.0)))


def _gelu_params(approximate: str) -> Callable[[nn.Module], Params | None]:
    """torch's GELU says which one it is; the other libraries' classes are one or the other."""
    return lambda m: () if not isinstance(m, nn.GELU) or m.approximate == approximate else None


def _gelu_call(approximate: str) -> Callable[[tuple, dict], Params | None]:
    def read(args: tuple, kwargs: dict) -> Params | None:
        value = kwargs.get("approximate", args[1] if len(args) > 1 else "none")
        return () if value == approximate else None

    return read


class QuickGELU(nn.Module):
    """``x * sigmoid(1.702 x)`` (CLIP's GELU approximation): torch has no class for it."""

    def forward(self, x: Tensor) -> Tensor:
        return x * torch.sigmoid(_QUICK * x)


_TIMM = "timm.layers.activations:"
_TIMM_ME = "timm.layers.activations_me:"
_HF = "transformers.activations:"

_BUILTIN: tuple[ActivationSpec, ...] = (
    ActivationSpec(
        "tanh",
        lambda x, p: torch.tanh(x),
        _tanh_grad,
        nn.Tanh,
        classes=(nn.Tanh, _TIMM + "Tanh"),
        functions=(torch.tanh, F.tanh, "tanh", _TIMM + "tanh"),
        default_shape="gauss",
        kernel=0,
        phi_f32=_f32_tanh,
        dphi_f32=_f32_tanh_grad,
    ),
    ActivationSpec(
        "sigmoid",
        lambda x, p: torch.sigmoid(x),
        _sigmoid_grad,
        nn.Sigmoid,
        classes=(nn.Sigmoid, _TIMM + "Sigmoid"),
        functions=(torch.sigmoid, F.sigmoid, "sigmoid", _TIMM + "sigmoid"),
        default_shape="gauss",
        kernel=1,
        phi_f32=_f32_sigmoid,
        dphi_f32=_f32_sigmoid_grad,
    ),
    ActivationSpec(
        "relu",
        lambda x, p: torch.relu(x),
        lambda x, p: (x > 0).to(x.dtype),
        nn.ReLU,
        classes=(nn.ReLU,),
        functions=(torch.relu, F.relu, "relu"),
        kernel=2,
    ),
    ActivationSpec(
        "leaky_relu",
        lambda x, p: F.leaky_relu(x, p[0]),
        lambda x, p: torch.where(x > 0, torch.ones_like(x), p[0]),
        nn.LeakyReLU,
        defaults=(0.01,),
        classes=(nn.LeakyReLU,),
        params_of=lambda m: (float(m.negative_slope),),
        functions=(F.leaky_relu,),
        call_params=_call_args(("negative_slope", 0.01)),
        kernel=3,
    ),
    ActivationSpec(
        "elu",
        lambda x, p: F.elu(x, p[0]),
        lambda x, p: torch.where(x > 0, torch.ones_like(x), p[0] * torch.exp(torch.clamp(x, max=0.0))),
        nn.ELU,
        defaults=(1.0,),
        classes=(nn.ELU,),
        params_of=lambda m: (float(m.alpha),),
        functions=(F.elu,),
        call_params=_call_args(("alpha", 1.0)),
        kernel=4,
        dphi_f32=_f32_elu_grad,
    ),
    ActivationSpec(
        "gelu",
        lambda x, p: F.gelu(x),
        _gelu_grad,
        nn.GELU,
        classes=(nn.GELU, _TIMM + "GELU", _HF + "GELUActivation"),
        params_of=_gelu_params("none"),
        functions=(F.gelu, _TIMM + "gelu"),
        call_params=_gelu_call("none"),
    ),
    ActivationSpec(
        "gelu_tanh",
        lambda x, p: F.gelu(x, approximate="tanh"),
        _gelu_tanh_grad,
        lambda: nn.GELU(approximate="tanh"),
        classes=(
            nn.GELU,
            _TIMM + "GELUTanh",
            _HF + "GELUTanh",
            _HF + "NewGELUActivation",
            _HF + "FastGELUActivation",
        ),
        params_of=_gelu_params("tanh"),
        functions=(F.gelu, _TIMM + "gelu_tanh"),
        call_params=_gelu_call("tanh"),
    ),
    ActivationSpec(
        "quick_gelu",
        lambda x, p: x * torch.sigmoid(_QUICK * x),
        _quick_gelu_grad,
        QuickGELU,
        classes=(QuickGELU, _TIMM + "QuickGELU", _HF + "QuickGELUActivation"),
        functions=(_TIMM + "quick_gelu",),
    ),
    ActivationSpec(
        "silu",
        lambda x, p: F.silu(x),
        _silu_grad,
        nn.SiLU,
        classes=(nn.SiLU, _TIMM + "Swish", _TIMM_ME + "SwishMe", _HF + "SiLUActivation"),
        functions=(F.silu, _TIMM + "swish"),
        kernel=5,
        phi_f32=_f32_silu,
        dphi_f32=_f32_silu_grad,
    ),
    ActivationSpec(
        "relu6",
        lambda x, p: F.hardtanh(x, 0.0, 6.0),
        lambda x, p: _hardtanh_grad(x, (0.0, 6.0)),
        lambda *p: nn.ReLU6(),
        classes=(nn.ReLU6,),  # before hardtanh: ReLU6 is a Hardtanh subclass
        params_of=lambda m: (0.0, 6.0),
        functions=(F.relu6,),
        call_params=lambda args, kwargs: (0.0, 6.0),
        kernel=6,  # the hardtanh kernel with bounds (0, 6)
    ),
    ActivationSpec(
        "hardtanh",
        lambda x, p: F.hardtanh(x, p[0], p[1]),
        _hardtanh_grad,
        nn.Hardtanh,
        defaults=(-1.0, 1.0),
        classes=(nn.Hardtanh,),
        params_of=lambda m: (float(m.min_val), float(m.max_val)),
        functions=(F.hardtanh,),
        call_params=_call_args(("min_val", -1.0), ("max_val", 1.0)),
        default_shape="gauss",
        kernel=6,
    ),
    ActivationSpec(
        "softplus",
        lambda x, p: F.softplus(x, p[0], p[1]),
        _softplus_grad,
        nn.Softplus,
        defaults=(1.0, 20.0),
        classes=(nn.Softplus,),
        params_of=lambda m: (float(m.beta), float(m.threshold)),
        functions=(F.softplus,),
        call_params=_call_args(("beta", 1.0), ("threshold", 20.0)),
    ),
    ActivationSpec(
        "softsign",
        lambda x, p: x / (1.0 + x.abs()),
        _softsign_grad,
        nn.Softsign,
        classes=(nn.Softsign,),
        functions=(F.softsign,),
        default_shape="gauss",
    ),
    ActivationSpec(
        "hardsigmoid",
        lambda x, p: F.hardsigmoid(x),
        lambda x, p: ((x > -3.0) & (x < 3.0)).to(x.dtype) / 6.0,
        nn.Hardsigmoid,
        classes=(nn.Hardsigmoid, _TIMM + "HardSigmoid"),
        functions=(F.hardsigmoid,),
        default_shape="gauss",
    ),
)

#: The catalogue, by name, in lookup order (a more specific class before its base class).
CATALOG: dict[str, ActivationSpec] = {spec.name: spec for spec in _BUILTIN}
#: Classes and callables registered by users: ``(target, spec name, params or params_of)``.
_REGISTERED_CLASSES: list[tuple[type, str, Callable[[nn.Module], Params | None]]] = []
_REGISTERED_FUNCTIONS: list[tuple[Callable, str, Params]] = []


# --------------------------------------------------------------------------------------------------
# Lookups
# --------------------------------------------------------------------------------------------------


def _resolve(ref: type | Callable | str) -> Any:
    """A class/function, or ``"package.module:attr"`` once ``package`` is imported (else None)."""
    if not isinstance(ref, str) or ":" not in ref:
        return ref
    module_name, _, attr = ref.partition(":")
    if module_name.partition(".")[0] not in sys.modules:
        return None  # that library is not in use: never import it here
    try:
        return getattr(importlib.import_module(module_name), attr, None)
    except Exception:  # an old or broken version of the library: its classes are simply unknown
        return None


def spec_by_name(name: str) -> ActivationSpec:
    """The catalogue entry ``name``; a one-line ValueError listing the known names otherwise."""
    try:
        return CATALOG[name]
    except (KeyError, TypeError):
        raise ValueError(f"unknown activation {name!r}; known activations: {', '.join(CATALOG)}") from None


def activation_from_name(name: str) -> nn.Module:
    """A fresh plain activation module for a catalogue name such as ``"tanh"`` or ``"leaky_relu"``."""
    spec = spec_by_name(name)
    return spec.build(*spec.defaults)


def activation_factories() -> dict[str, Callable[[], nn.Module]]:
    """Catalogue name -> a factory of a fresh module (the layout of the former ``ACTIVATIONS`` tables)."""
    return {name: functools.partial(activation_from_name, name) for name in CATALOG}


def _qualname(obj: Any) -> str:
    module = getattr(obj, "__module__", "") or ""
    name = getattr(obj, "__qualname__", None) or getattr(obj, "__name__", None) or type(obj).__name__
    return f"{module}.{name}" if module else name


def match_module(module: nn.Module) -> Match | None:
    """The catalogue activation that ``module`` computes, with the reason, or None."""
    for cls, name, params_of in reversed(_REGISTERED_CLASSES):
        if isinstance(module, cls):
            params = params_of(module)
            if params is not None:
                why = f"{_qualname(cls)} registered as {name!r}"
                return Match(CATALOG[name].bind(params), why)
    for spec in CATALOG.values():
        for cls in spec.resolved_classes():
            if isinstance(module, cls):
                params = spec.params_of(module)
                if params is not None:
                    return Match(spec.bind(params), f"{_qualname(cls)} is catalogue activation {spec.name!r}")
    return None


def _same_function(a: Any, b: Any) -> bool:
    return a is b or (getattr(a, "__wrapped__", None) is b)


def match_call(target: Any, args: tuple = (), kwargs: dict | None = None) -> Match | None:
    """The catalogue activation computed by a call ``target(x, *args[1:], **kwargs)``, or None.

    ``target`` is a function (``F.relu``) or a Tensor method name (``"relu"`` for ``x.relu()``).
    """
    kwargs = kwargs or {}
    for fn, name, params in reversed(_REGISTERED_FUNCTIONS):
        if _same_function(target, fn):
            return Match(CATALOG[name].bind(params), f"{_qualname(fn)} registered as {name!r}")
    for spec in CATALOG.values():
        for form in spec.functions:
            if isinstance(form, str) and ":" not in form:
                hit = isinstance(target, str) and target == form
            else:
                resolved = _resolve(form)
                hit = (
                    resolved is not None and not isinstance(target, str) and _same_function(target, resolved)
                )
            if not hit:
                continue
            try:
                params = spec.call_params(tuple(args), kwargs)
            except (TypeError, ValueError, IndexError):
                params = None  # a tensor-valued parameter: not a fixed activation
            if params is not None:
                shown = target if isinstance(target, str) else _qualname(target)
                return Match(spec.bind(params), f"call {shown} is catalogue activation {spec.name!r}")
    return None


def match_function(fn: Any) -> Match | None:
    """The activation a function-valued attribute computes (``activation=F.relu``; partials too)."""
    if isinstance(fn, functools.partial):
        return match_call(fn.func, (None, *fn.args), dict(fn.keywords))
    if callable(fn) and not isinstance(fn, (nn.Module, type, str)):
        return match_call(fn, (None,), {})
    return None


def activation_classes() -> tuple[type, ...]:
    """Every module class the catalogue recognises in this process (foreign ones once imported)."""
    classes: list[type] = [cls for cls, _, _ in _REGISTERED_CLASSES]
    for spec in CATALOG.values():
        classes.extend(c for c in spec.resolved_classes() if c not in classes)
    return tuple(classes)


def functional_words() -> tuple[str, ...]:
    """Names of every functional form: a cheap pre-filter on a ``forward``'s source before tracing."""
    words = {fn.__name__ for fn, _, _ in _REGISTERED_FUNCTIONS if hasattr(fn, "__name__")}
    for spec in CATALOG.values():
        for form in spec.functions:
            words.add(form.rpartition(":")[2] if isinstance(form, str) else form.__name__)
    return tuple(sorted(words))


def register_activation(
    target: type[nn.Module] | Callable | ActivationSpec,
    base: str | None = None,
    params: Params | Callable[[nn.Module], Params | None] | None = None,
) -> type[nn.Module] | Callable | ActivationSpec:
    """Teach GAAF an activation: a class or callable that computes catalogue activation ``base``.

    * ``register_activation(MyGELU, "gelu")``: modules of class ``MyGELU`` (and subclasses) are
      replaced by ``apply_gaaf`` and fused like ``nn.GELU``. ``params`` gives the base's
      parameters as a tuple or as a function of the module (``lambda m: (m.slope,)``).
    * ``register_activation(my_relu, "relu")``: the function ``my_relu`` is recognised as a
      function-valued attribute and in ``apply_gaaf(functional=True)``'s rewrite.
    * ``register_activation(ActivationSpec(...))``: a new base activation (a new catalogue entry).

    Returns ``target``, so it also works as a decorator for classes: ``@register_activation``
    needs ``base`` though, so use ``register_activation(cls, "gelu")`` in that form.
    """
    if isinstance(target, ActivationSpec):
        if target.name in CATALOG:
            raise ValueError(f"register_activation: {target.name!r} is already in the catalogue")
        CATALOG[target.name] = target
        return target
    spec = spec_by_name(base) if base is not None else None
    if spec is None:
        raise ValueError("register_activation: say which catalogue activation it computes (base='gelu')")
    if isinstance(target, type):
        if not issubclass(target, nn.Module):
            raise TypeError(f"register_activation: {target.__name__} is not an nn.Module subclass")
        if callable(params):
            params_of = params
        else:
            fixed = tuple(params) if params is not None else tuple(spec.defaults)
            params_of = lambda m, fixed=fixed: fixed  # noqa: E731
        _REGISTERED_CLASSES.append((target, spec.name, params_of))
        return target
    if callable(target):
        if callable(params):
            raise TypeError("register_activation: params of a function must be a tuple")
        fixed = tuple(params) if params is not None else tuple(spec.defaults)
        _REGISTERED_FUNCTIONS.append((target, spec.name, fixed))
        return target
    raise TypeError(f"register_activation: expected a class, a callable or an ActivationSpec, got {target!r}")


def unregister_activation(target: type | Callable | str) -> None:
    """Undo :func:`register_activation` for a class, a callable or a spec name (tests, notebooks)."""
    if isinstance(target, str):
        if target in {s.name for s in _BUILTIN}:
            raise ValueError(f"unregister_activation: {target!r} is built in")
        CATALOG.pop(target, None)
        return
    _REGISTERED_CLASSES[:] = [r for r in _REGISTERED_CLASSES if r[0] is not target]
    _REGISTERED_FUNCTIONS[:] = [r for r in _REGISTERED_FUNCTIONS if r[0] is not target]


def markdown_table() -> str:
    """The catalogue as the Markdown table of ``docs/activations.md`` (kept in sync by a test)."""

    def show(ref: Any) -> str:
        if isinstance(ref, str):
            module, _, attr = ref.partition(":")
            return f"`{module.partition('.')[0]}:{attr}`" if attr else f"`x.{ref}()`"
        module = getattr(ref, "__module__", None) or ""
        prefixes = {"torch.nn.functional": "F.", "torch._C._nn": "F.", "torch": "torch."}
        prefix = "nn." if module.startswith("torch.nn.modules") else prefixes.get(module, "")
        if module.startswith("lightning_gaaf"):
            prefix = "lightning_gaaf.activations.catalog."
        return f"`{prefix}{ref.__name__}`"

    lines = [
        "| name | classes | functional forms | default shape | native kernel |",
        "|---|---|---|---|---|",
    ]
    for spec in _BUILTIN:
        classes = ", ".join(show(c) for c in spec.classes)
        functions = ", ".join(show(f) for f in spec.functions)
        kernel = "—" if spec.kernel is None else f"row {spec.kernel}"
        lines.append(f"| `{spec.name}` | {classes} | {functions} | `{spec.default_shape}` | {kernel} |")
    return "\n".join(lines)
