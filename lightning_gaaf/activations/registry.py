"""Looking activations up in the catalogue, and teaching it new ones.

:data:`CATALOG` holds the entries by name: the built-in table of
:mod:`~lightning_gaaf.activations.catalog` (put here by :func:`install_builtin` when that module is
imported, which ``lightning_gaaf.activations`` always does first), then whatever
:func:`register_activation` adds. Surgery, :class:`~lightning_gaaf.GAAF` and the models ask these
functions, never a list of their own: what a module, function or call computes
(:func:`match_module`, :func:`match_function`, :func:`match_call`), which classes and functional
names exist (:func:`activation_classes`, :func:`functional_words`), and an entry by name.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable
from typing import Any

from torch import nn

from lightning_gaaf.activations.spec import ActivationSpec, Match, Params, resolve_ref

__all__ = [
    "CATALOG",
    "activation_classes",
    "activation_from_name",
    "functional_words",
    "install_builtin",
    "match_call",
    "match_function",
    "match_module",
    "register_activation",
    "spec_by_name",
    "unregister_activation",
]

#: The catalogue, by name, in lookup order (a more specific class before its base class).
CATALOG: dict[str, ActivationSpec] = {}
_BUILTIN_NAMES: set[str] = set()
#: Classes and callables registered by users: ``(target, spec name, params or params_of)``.
_REGISTERED_CLASSES: list[tuple[type, str, Callable[[nn.Module], Params | None]]] = []
_REGISTERED_FUNCTIONS: list[tuple[Callable, str, Params]] = []


def install_builtin(specs: Iterable[ActivationSpec]) -> None:
    """Put the built-in table in :data:`CATALOG` (catalog.py, once on import); built-ins stay for good."""
    for spec in specs:
        CATALOG[spec.name] = spec
        _BUILTIN_NAMES.add(spec.name)


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
                resolved = resolve_ref(form)
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
        if target in _BUILTIN_NAMES:
            raise ValueError(f"unregister_activation: {target!r} is built in")
        CATALOG.pop(target, None)
        return
    _REGISTERED_CLASSES[:] = [r for r in _REGISTERED_CLASSES if r[0] is not target]
    _REGISTERED_FUNCTIONS[:] = [r for r in _REGISTERED_FUNCTIONS if r[0] is not target]
