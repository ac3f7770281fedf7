"""Model surgery: turn a plain model into its GAAF variant and back.

In the spirit of Composer's module surgery: a policy decides which activation modules to replace,
replacement happens in place on the parents, and the result is a report ``{name: (old, new)}``.
Functional calls inside ``forward`` (``torch.tanh``, ``F.relu``, ``x.tanh()``...) are rewritten with
``torch.fx`` when asked (``functional=True``). Surgery must run before a model is wrapped for
distributed training (DDP/FSDP), so wrapped models are refused.
"""

from __future__ import annotations

import fnmatch
import inspect
import warnings
from collections.abc import Callable, Iterable, Sequence
from typing import Any, NamedTuple

import torch
import torch.fx
import torch.nn.functional as F
from torch import Tensor, nn

from lightning_gaaf.activations import (
    ACTIVATIONS,
    DEFAULT_K,
    GAAF,
    SUPPORTED_ACTIVATIONS,
    Shape,
    _check_k,
    make_shape,
)

__all__ = ["GAAFReport", "Replacement", "apply_gaaf", "strip_gaaf"]


class Replacement(NamedTuple):
    """One replaced module: what was there and what is there now."""

    old: nn.Module
    new: nn.Module


class GAAFReport(dict):
    """``{qualified name: Replacement(old, new)}`` plus which names share one module object.

    ``shared`` maps a name to the other names under which the *same* module object is registered
    (a module shared by several parents is wrapped once and stays shared). ``functional`` lists the
    ``<module>.<node>`` names of rewritten functional calls (also keys of the report).
    """

    def __init__(self) -> None:
        super().__init__()
        self.shared: dict[str, tuple[str, ...]] = {}
        self.functional: list[str] = []

    @property
    def count(self) -> int:
        """Number of distinct module objects replaced (a shared module counts once)."""
        return len({id(r.new) for r in self.values()})

    def summary(self) -> str:
        lines = [f"{self.count} module(s) replaced at {len(self)} place(s)"]
        for name, (old, new) in self.items():
            extra = f"  (shared with {', '.join(self.shared[name])})" if name in self.shared else ""
            lines.append(f"  {name or '<root>'}: {old!r} -> {new!r}{extra}")
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.summary()


# --------------------------------------------------------------------------------------------------
# Policy helpers
# --------------------------------------------------------------------------------------------------


def target_classes(targets: Iterable[str | type[nn.Module]] | str | type | None) -> tuple[type, ...]:
    """Activation classes named by ``targets`` (classes, class paths or names); None = all supported."""
    if targets is None:
        return SUPPORTED_ACTIVATIONS
    if isinstance(targets, (str, type)):
        targets = [targets]
    classes: list[type] = []
    for t in targets:
        if isinstance(t, type) and issubclass(t, nn.Module):
            classes.append(t)
        elif isinstance(t, str) and t in ACTIVATIONS:
            classes.append(type(ACTIVATIONS[t]()))
        elif isinstance(t, str) and t in {c.__name__ for c in SUPPORTED_ACTIVATIONS}:
            classes.append(getattr(nn, t))
        elif isinstance(t, str) and "." in t:
            module_name, _, cls_name = t.rpartition(".")
            try:
                cls = getattr(__import__(module_name, fromlist=[cls_name]), cls_name)
            except (ImportError, AttributeError):
                raise ValueError(f"apply_gaaf: unknown target {t!r} (cannot import it)") from None
            classes.append(cls)
        else:
            known = ", ".join(sorted(ACTIVATIONS))
            raise ValueError(
                f"apply_gaaf: unknown target {t!r}; use an nn.Module class, a class path, or one of: {known}"
            )
    return tuple(classes)


def _as_patterns(patterns: str | Sequence[str] | None) -> list[str] | None:
    if patterns is None:
        return None
    return [patterns] if isinstance(patterns, str) else list(patterns)


def _selected(name: str, include: list[str] | None, exclude: list[str] | None) -> bool:
    if include is not None and not any(fnmatch.fnmatchcase(name, p) for p in include):
        return False
    return not (exclude and any(fnmatch.fnmatchcase(name, p) for p in exclude))


def _refuse_wrapped(model: nn.Module, verb: str) -> None:
    wrapped = isinstance(model, (nn.parallel.DistributedDataParallel, nn.DataParallel))
    names = {c.__name__ for c in type(model).__mro__}
    if wrapped or names & {"FullyShardedDataParallel", "FSDPModule"}:
        raise TypeError(
            f"{verb}: the model is wrapped in {type(model).__name__}; apply GAAF surgery to the bare "
            "module before wrapping it for distributed training (GAAFCallback does this in setup)"
        )


def _set_submodule(root: nn.Module, name: str, module: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = root.get_submodule(parent_name) if parent_name else root
    setattr(parent, child, module)  # also right for Sequential/ModuleList/ModuleDict ("0", "key")


def _names_by_object(model: nn.Module) -> dict[int, list[str]]:
    names: dict[int, list[str]] = {}
    for name, module in model.named_modules(remove_duplicate=False):
        names.setdefault(id(module), []).append(name)
    return names


# --------------------------------------------------------------------------------------------------
# apply / strip
# --------------------------------------------------------------------------------------------------


def apply_gaaf(
    model: nn.Module,
    targets: Iterable[str | type[nn.Module]] | str | None = None,
    include: str | Sequence[str] | None = None,
    exclude: str | Sequence[str] | None = None,
    K: float | None = DEFAULT_K,
    shape: str | Shape | Callable[[Tensor], Tensor] | None = None,
    shape_kwargs: dict[str, float] | None = None,
    functional: bool = False,
) -> GAAFReport:
    """Replace activation modules of ``model`` in place by :class:`~lightning_gaaf.GAAF` wrappers.

    Args:
        model: any ``nn.Module`` (a LightningModule too), not yet wrapped by DDP/FSDP.
        targets: activation classes, class paths or names (``"tanh"``, ``"relu"``...) to replace;
            default every supported activation class.
        include: glob pattern(s) on qualified module names that must match (default: all).
        exclude: glob pattern(s) on qualified module names to leave alone.
        K, shape, shape_kwargs: GAAF options (see :class:`~lightning_gaaf.GAAF`).
        functional: also rewrite functional activation calls inside ``forward`` with ``torch.fx``.

    Returns:
        A :class:`GAAFReport` ``{qualified name: (old, new)}``. Device and dtype are kept (GAAF has
        no parameters). A second call changes nothing and warns.
    """
    _refuse_wrapped(model, "apply_gaaf")
    _check_k(K)
    classes = target_classes(targets)
    inc, exc = _as_patterns(include), _as_patterns(exclude)
    shape_kwargs = dict(shape_kwargs or {})
    if shape is not None:
        make_shape(shape, **shape_kwargs)  # fail early on an unknown shape name / bad parameters
    elif shape_kwargs:
        raise ValueError("apply_gaaf: shape_kwargs given without a shape name")

    def wrap(module: nn.Module) -> GAAF:
        return GAAF(module, shape=shape, K=K, **shape_kwargs)

    report = GAAFReport()
    names = _names_by_object(model)
    existing = sum(isinstance(m, GAAF) for m in model.modules())
    replaced: dict[int, GAAF] = {}
    for name, module in list(model.named_modules(remove_duplicate=False)):
        if not name or isinstance(module, GAAF) or not isinstance(module, classes):
            continue
        if _inside_gaaf(model, name) or not _selected(name, inc, exc):
            continue
        new = replaced.get(id(module))
        if new is None:
            new = replaced[id(module)] = wrap(module)
        _set_submodule(model, name, new)
        report[name] = Replacement(module, new)
        others = tuple(n for n in names[id(module)] if n != name)
        if others:
            report.shared[name] = others

    if functional:
        _rewrite_functional(model, classes, inc, exc, wrap, report)

    if not report:
        if existing:
            warnings.warn(
                f"apply_gaaf: the model already has {existing} GAAF module(s); nothing changed",
                UserWarning,
                stacklevel=2,
            )
        else:
            warnings.warn(
                "apply_gaaf: no activation matched the targets/include/exclude; nothing changed",
                UserWarning,
                stacklevel=2,
            )
    return report


def _inside_gaaf(model: nn.Module, name: str) -> bool:
    parts = name.split(".")
    for i in range(1, len(parts)):
        if isinstance(model.get_submodule(".".join(parts[:i])), GAAF):
            return True
    return False


def strip_gaaf(model: nn.Module) -> GAAFReport:
    """Undo :func:`apply_gaaf`: put each original activation module back (same object, same args).

    Functional rewrites are undone too. Returns ``{name: (gaaf module, restored module)}``.
    """
    _refuse_wrapped(model, "strip_gaaf")
    report = GAAFReport()
    for name, module in list(model.named_modules(remove_duplicate=False)):
        if name and isinstance(module, GAAF) and not _inside_gaaf(model, name):
            if getattr(module, "_gaaf_functional", False):
                continue
            _set_submodule(model, name, module.base)
            report[name] = Replacement(module, module.base)
    for owner_name, owner in list(model.named_modules()):
        added = owner.__dict__.pop("_gaaf_functional_nodes", None)
        if added is None:
            continue
        owner.__dict__.pop("forward", None)  # back to the class's own forward
        for attr in added:
            gaaf_module = getattr(owner, attr)
            delattr(owner, attr)
            qual = f"{owner_name}.{attr}" if owner_name else attr
            report[qual] = Replacement(gaaf_module, gaaf_module.base)
    return report


# --------------------------------------------------------------------------------------------------
# Functional calls via torch.fx
# --------------------------------------------------------------------------------------------------


def _module_for_call(target: Any, args: tuple, kwargs: dict) -> nn.Module | None:
    """The activation module equivalent to a functional call node, or None if it is not one."""

    def arg(i: int, key: str, default: Any) -> Any:
        if key in kwargs:
            return kwargs[key]
        return args[i] if len(args) > i else default

    if target in (torch.tanh, F.tanh, "tanh"):
        return nn.Tanh()
    if target in (torch.sigmoid, F.sigmoid, "sigmoid"):
        return nn.Sigmoid()
    if target in (torch.relu, F.relu, "relu"):
        return nn.ReLU()
    if target in (F.leaky_relu, "leaky_relu"):
        return nn.LeakyReLU(arg(1, "negative_slope", 0.01))
    if target in (F.elu, "elu"):
        return nn.ELU(arg(1, "alpha", 1.0))
    if target in (F.gelu, "gelu"):
        return nn.GELU(approximate=arg(1, "approximate", "none"))
    if target in (F.silu, "silu"):
        return nn.SiLU()
    if target is F.hardtanh:
        return nn.Hardtanh(arg(1, "min_val", -1.0), arg(2, "max_val", 1.0))
    if target is F.relu6:
        return nn.ReLU6()
    if target in (F.softplus, "softplus"):
        return nn.Softplus(arg(1, "beta", 1.0), arg(2, "threshold", 20.0))
    return None


class _OneLevelTracer(torch.fx.Tracer):
    """Traces only the given module's own forward: every submodule stays a call_module leaf."""

    def __init__(self, root: nn.Module) -> None:
        super().__init__()
        self._root = root

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        return m is not self._root


_FUNCTIONAL_WORDS = ("tanh", "sigmoid", "relu", "gelu", "elu", "silu", "softplus", "hardtanh")


def _mentions_activation(module: nn.Module) -> bool:
    try:
        src = inspect.getsource(type(module).forward)
    except (OSError, TypeError):
        return True
    return any(w in src for w in _FUNCTIONAL_WORDS)


def _rewrite_functional(
    model: nn.Module,
    classes: tuple[type, ...],
    include: list[str] | None,
    exclude: list[str] | None,
    wrap: Callable[[nn.Module], GAAF],
    report: GAAFReport,
) -> None:
    for owner_name, owner in list(model.named_modules()):
        cls_module = type(owner).__module__
        if (
            isinstance(owner, GAAF)
            or cls_module.startswith("torch.nn")
            or "_gaaf_functional_nodes" in (owner.__dict__)
        ):
            continue
        if not _mentions_activation(owner):
            continue
        try:
            graph = _OneLevelTracer(owner).trace(owner)
        except Exception as err:
            where = owner_name or "<root>"
            raise RuntimeError(
                f"apply_gaaf(functional=True): could not trace module {where!r} "
                f"({type(owner).__name__}) with torch.fx: {type(err).__name__}: {err}. "
                "Use activation modules in that forward, or exclude it with functional=False."
            ) from None
        added: list[str] = []
        for node in list(graph.nodes):
            if node.op not in ("call_function", "call_method"):
                continue
            plain = _module_for_call(node.target, tuple(node.args), dict(node.kwargs))
            if plain is None or not isinstance(plain, classes):
                continue
            qual = f"{owner_name}.{node.name}" if owner_name else node.name
            if not _selected(qual, include, exclude):
                continue
            attr = f"gaaf_{node.name}"
            new = wrap(plain)
            new._gaaf_functional = True
            owner.add_module(attr, new)
            with graph.inserting_before(node):
                call = graph.call_module(attr, (node.args[0],))
            node.replace_all_uses_with(call)
            graph.erase_node(node)
            added.append(attr)
            report[qual] = Replacement(plain, new)
            report.functional.append(qual)
        if not added:
            continue
        graph.lint()
        gm = torch.fx.GraphModule(owner, graph, class_name=type(owner).__name__)
        # The generated forward only touches attributes the owner has, so it can run bound to it.
        owner.forward = gm.forward.__func__.__get__(owner)
        owner.__dict__["_gaaf_functional_nodes"] = added
