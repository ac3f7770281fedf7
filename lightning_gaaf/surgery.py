"""Model surgery: turn a plain model into its GAAF variant and back.

In the spirit of Composer's module surgery: ``apply_gaaf`` finds the activations of any model with
the activation catalogue (:mod:`lightning_gaaf.activations.catalog`), replaces them in place and
returns a report ``{name: (old, new)}`` that says why each one matched and lists look-alikes that
were left alone. Three kinds of activation are found:

* activation modules (torch's, timm's, Hugging Face transformers', registered classes);
* function-valued attributes such as ``nn.TransformerEncoderLayer``'s ``activation=F.relu``: the
  attribute becomes a GAAF module and ``strip_gaaf`` puts the function back;
* with ``functional=True``, functional calls inside ``forward`` (``torch.tanh``, ``F.relu``,
  ``x.tanh()``...), rewritten with ``torch.fx``.

A policy ``(qualified_name, module) -> options | None`` gives per-layer options (None: leave it).
Surgery must run before a model is wrapped for distributed training (DDP/FSDP), so wrapped models
are refused.
"""

from __future__ import annotations

import fnmatch
import functools
import inspect
import re
import types
import warnings
from collections.abc import Callable, Iterable, Sequence
from typing import Any, NamedTuple

import torch
import torch.fx
from torch import Tensor, nn

from lightning_gaaf.activations import DEFAULT_K, GAAF, Shape, make_shape
from lightning_gaaf.activations.catalog import (
    CATALOG,
    Match,
    activation_classes,
    functional_words,
    match_call,
    match_function,
    match_module,
)
from lightning_gaaf.activations.sawtooth import check_k

__all__ = ["GAAFReport", "Policy", "Replacement", "apply_gaaf", "strip_gaaf"]

#: ``(qualified_name, module) -> options or None``: per-layer GAAF options (``K``, ``shape``,
#: ``shape_kwargs``) merged over the call's; None leaves that activation alone.
Policy = Callable[[str, nn.Module], "dict[str, Any] | None"]
_POLICY_KEYS = ("K", "shape", "shape_kwargs")
# Flags that make torch's transformer layers skip their ``activation`` in a fused fast path
# (inference only); cleared while GAAF is applied so the main path goes through GAAF.
_FAST_PATH_FLAGS = ("activation_relu_or_gelu",)
_LOOKS_LIKE = re.compile(
    r"activation|^act|act$|gelu|relu|elu$|silu|swish|mish|sigmoid|tanh|softplus|softsign|hardswish|shrink|glu$",
    re.IGNORECASE,
)


class Replacement(NamedTuple):
    """One replaced activation: what was there and what is there now."""

    old: Any
    new: Any


class GAAFReport(dict):
    """``{qualified name: Replacement(old, new)}`` plus why each matched and what was left alone.

    ``reasons`` maps each replaced name to why it matched (which catalogue entry, registered class,
    function attribute or call). ``skipped`` maps names that look like activations but were not
    replaced to the reason. ``shared`` maps a name to the other names of the *same* module object
    (wrapped once, stays shared). ``attributes`` and ``functional`` list the function-valued
    attributes and the rewritten functional calls (also keys of the report).
    """

    def __init__(self) -> None:
        super().__init__()
        self.reasons: dict[str, str] = {}
        self.skipped: dict[str, str] = {}
        self.shared: dict[str, tuple[str, ...]] = {}
        self.attributes: list[str] = []
        self.functional: list[str] = []

    @property
    def count(self) -> int:
        """Number of distinct objects replaced (a shared module counts once)."""
        return len({id(r.new) for r in self.values()})

    def summary(self) -> str:
        """Readable lines: what was replaced and why, then the look-alikes left alone."""
        lines = [f"{self.count} activation(s) replaced at {len(self)} place(s)"]
        for name, (old, new) in self.items():
            extra = f"  (shared with {', '.join(self.shared[name])})" if name in self.shared else ""
            why = f"  [{self.reasons[name]}]" if name in self.reasons else ""
            lines.append(f"  {name or '<root>'}: {_show(old)} -> {new!r}{why}{extra}")
        if self.skipped:
            lines.append(f"{len(self.skipped)} look-alike(s) not replaced")
            lines.extend(f"  {name}: {why}" for name, why in self.skipped.items())
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.summary()


def _show(obj: Any) -> str:
    if isinstance(obj, (types.FunctionType, types.BuiltinFunctionType)):
        return f"function {obj.__module__}.{obj.__name__}"
    return repr(obj)


# --------------------------------------------------------------------------------------------------
# Which activations: targets, include/exclude, policy
# --------------------------------------------------------------------------------------------------


class _Targets(NamedTuple):
    names: frozenset[str] | None  # catalogue names; None with no classes = every catalogue activation
    classes: tuple[type, ...]  # any class, catalogue or not (the latter: generic path)

    def accepts(self, match: Match | None, module: nn.Module | None) -> bool:
        if self.names is None and not self.classes:
            return match is not None
        if match is not None and self.names is not None and match.base.name in self.names:
            return True
        return module is not None and isinstance(module, self.classes)


def resolve_targets(targets: Iterable[str | type[nn.Module]] | str | type | None) -> _Targets:
    """Catalogue names, classes, class names (``"Tanh"``) or class paths; one-line errors otherwise."""
    if targets is None:
        return _Targets(None, ())
    if isinstance(targets, (str, type)):
        targets = [targets]
    names: set[str] = set()
    classes: list[type] = []
    by_class_name = {c.__name__: c for c in activation_classes()}
    for t in targets:
        if isinstance(t, type) and issubclass(t, nn.Module):
            classes.append(t)
        elif isinstance(t, str) and t in CATALOG:
            names.add(t)
        elif isinstance(t, str) and t in by_class_name:
            classes.append(by_class_name[t])
        elif isinstance(t, str) and "." in t:
            module_name, _, cls_name = t.rpartition(".")
            try:
                cls = getattr(__import__(module_name, fromlist=[cls_name]), cls_name)
            except (ImportError, AttributeError):
                raise ValueError(f"apply_gaaf: unknown target {t!r} (cannot import it)") from None
            classes.append(cls)
        else:
            known = ", ".join(CATALOG)
            raise ValueError(
                f"apply_gaaf: unknown target {t!r}; use an nn.Module class, a class path, or one of: {known}"
            )
    return _Targets(frozenset(names), tuple(classes))


def _as_patterns(patterns: str | Sequence[str] | None) -> list[str] | None:
    if patterns is None:
        return None
    return [patterns] if isinstance(patterns, str) else list(patterns)


def _selected(name: str, include: list[str] | None, exclude: list[str] | None) -> bool:
    if include is not None and not any(fnmatch.fnmatchcase(name, p) for p in include):
        return False
    return not (exclude and any(fnmatch.fnmatchcase(name, p) for p in exclude))


def _looks_like_activation(module: nn.Module) -> bool:
    if isinstance(module, GAAF) or next(module.children(), None) is not None:
        return False
    cls = type(module)
    return cls.__module__ == "torch.nn.modules.activation" or bool(_LOOKS_LIKE.search(cls.__name__))


class _Chooser:
    """Decides, per candidate, whether and how to wrap it; records skipped look-alikes."""

    def __init__(
        self, targets: _Targets, include, exclude, policy, options: dict, report: GAAFReport
    ) -> None:
        self.targets, self.include, self.exclude = targets, include, exclude
        self.policy, self.options, self.report = policy, options, report

    def wrap(self, name: str, match: Match | None, module: nn.Module) -> GAAF | None:
        """The GAAF module for candidate ``name`` (``module`` is what it computes), or None."""
        if not self.targets.accepts(match, module):
            if match is not None:
                self.report.skipped[name] = f"{match.why}, but not in targets"
            return None
        if not _selected(name, self.include, self.exclude):
            self.report.skipped[name] = "left out by include/exclude"
            return None
        options = dict(self.options)
        if self.policy is not None:
            chosen = self.policy(name, module)
            if chosen is None:
                self.report.skipped[name] = "the policy returned None"
                return None
            unknown = set(chosen) - set(_POLICY_KEYS)
            if unknown:
                raise ValueError(
                    f"apply_gaaf: the policy returned unknown option(s) {sorted(unknown)} for {name!r}; "
                    f"allowed: {', '.join(_POLICY_KEYS)}"
                )
            options.update(chosen)
        shape_kwargs = dict(options.get("shape_kwargs") or {})
        return GAAF(module, shape=options.get("shape"), K=options.get("K", DEFAULT_K), **shape_kwargs)


def _refuse_wrapped(model: nn.Module, verb: str) -> None:
    wrapped = isinstance(model, (nn.parallel.DistributedDataParallel, nn.DataParallel))
    names = {c.__name__ for c in type(model).__mro__}
    if wrapped or names & {"FullyShardedDataParallel", "FSDPModule"}:
        raise TypeError(
            f"{verb}: the model is wrapped in {type(model).__name__}; apply GAAF surgery to the bare "
            "module before wrapping it for distributed training (GAAFCallback does this in setup)"
        )


def _parent(root: nn.Module, name: str) -> tuple[nn.Module, str]:
    parent_name, _, child = name.rpartition(".")
    return (root.get_submodule(parent_name) if parent_name else root), child


def _clear_fast_path(owner: nn.Module) -> None:
    saved = owner.__dict__.setdefault("_gaaf_saved_flags", {})
    for flag in _FAST_PATH_FLAGS:
        if flag in owner.__dict__ and flag not in saved:
            saved[flag] = owner.__dict__[flag]
            owner.__dict__[flag] = 0
    if not saved:
        del owner.__dict__["_gaaf_saved_flags"]


def _inside_gaaf(model: nn.Module, name: str) -> bool:
    parts = name.split(".")
    return any(isinstance(model.get_submodule(".".join(parts[:i])), GAAF) for i in range(1, len(parts)))


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
    policy: Policy | None = None,
) -> GAAFReport:
    """Replace the activations of ``model`` in place by :class:`~lightning_gaaf.GAAF` modules.

    Args:
        model: any ``nn.Module`` (a LightningModule too), not yet wrapped by DDP/FSDP.
        targets: catalogue names (``"tanh"``, ``"gelu"``...), classes, class names or class paths
            to replace; default every activation of the catalogue. A class outside the catalogue
            is wrapped too (generic path: its own autograd plus the GAAF term).
        include: glob pattern(s) on qualified names that must match (default: all).
        exclude: glob pattern(s) on qualified names to leave alone.
        K, shape, shape_kwargs: GAAF options (see :class:`~lightning_gaaf.GAAF`).
        functional: also rewrite functional activation calls inside ``forward`` with ``torch.fx``.
        policy: ``(qualified_name, module) -> dict | None`` called for every candidate that passed
            targets/include/exclude (``module`` is the plain activation module, also for function
            attributes and calls); a dict of ``K`` / ``shape`` / ``shape_kwargs`` overrides the
            options for that layer, None leaves it alone.

    Returns:
        A :class:`GAAFReport`: ``{qualified name: (old, new)}``, why each matched, look-alikes
        not replaced. Device and dtype are kept (GAAF has no parameters). A second call changes
        nothing and warns.
    """
    _refuse_wrapped(model, "apply_gaaf")
    check_k(K)
    chosen_targets = resolve_targets(targets)
    shape_kwargs = dict(shape_kwargs or {})
    if shape is not None:
        make_shape(shape, **shape_kwargs)  # fail early on an unknown shape name / bad parameters
    elif shape_kwargs:
        raise ValueError("apply_gaaf: shape_kwargs given without a shape name")
    if policy is not None and not callable(policy):
        raise TypeError(
            f"apply_gaaf: policy must be a callable (name, module) -> dict | None, got {policy!r}"
        )
    report = GAAFReport()
    options = {"K": K, "shape": shape, "shape_kwargs": shape_kwargs}
    chooser = _Chooser(chosen_targets, _as_patterns(include), _as_patterns(exclude), policy, options, report)
    existing = sum(isinstance(m, GAAF) for m in model.modules())

    _replace_modules(model, chooser, report)
    _replace_function_attributes(model, chooser, report)
    if functional:
        _rewrite_functional(model, chooser, report)

    if not report:
        what = (
            f"the model already has {existing} GAAF module(s)"
            if existing
            else "no activation matched the targets/include/exclude/policy"
        )
        warnings.warn(f"apply_gaaf: {what}; nothing changed", UserWarning, stacklevel=2)
    return report


def _replace_modules(model: nn.Module, chooser: _Chooser, report: GAAFReport) -> None:
    names: dict[int, list[str]] = {}
    for name, module in model.named_modules(remove_duplicate=False):
        names.setdefault(id(module), []).append(name)
    replaced: dict[int, tuple[GAAF, str]] = {}
    for name, module in list(model.named_modules(remove_duplicate=False)):
        if not name or isinstance(module, GAAF) or _inside_gaaf(model, name):
            continue
        if id(module) in replaced:  # a shared module: wrapped once, replaced where selected
            new, why = replaced[id(module)]
            if not _selected(name, chooser.include, chooser.exclude):
                report.skipped[name] = "left out by include/exclude"
                continue
        else:
            match = match_module(module)
            if match is None and not isinstance(module, chooser.targets.classes):
                if _looks_like_activation(module):
                    report.skipped[name] = (
                        f"{type(module).__qualname__} is not in the activation catalogue "
                        "(register_activation(cls, base) or targets=[cls] to include it)"
                    )
                continue
            new = chooser.wrap(name, match, module)
            if new is None:
                continue
            why = match.why if match else f"{type(module).__qualname__} is in targets (generic path)"
            replaced[id(module)] = (new, why)
        report.reasons[name] = why
        parent, child = _parent(model, name)
        setattr(parent, child, new)  # also right for Sequential/ModuleList/ModuleDict ("0", "key")
        _clear_fast_path(parent)
        report[name] = Replacement(module, new)
        others = tuple(n for n in names[id(module)] if n != name)
        if others:
            report.shared[name] = others


def _replace_function_attributes(model: nn.Module, chooser: _Chooser, report: GAAFReport) -> None:
    for owner_name, owner in list(model.named_modules()):
        if isinstance(owner, GAAF) or (owner_name and _inside_gaaf(model, owner_name)):
            continue
        for attr, value in list(vars(owner).items()):
            if attr.startswith("_") or not isinstance(
                value, (types.FunctionType, types.BuiltinFunctionType, functools.partial)
            ):
                continue
            qual = f"{owner_name}.{attr}" if owner_name else attr
            match = match_function(value)
            if match is None:
                if _LOOKS_LIKE.search(getattr(value, "__name__", "")):
                    report.skipped[qual] = f"function {_show(value)} is not in the activation catalogue"
                continue
            new = chooser.wrap(qual, match, match.base.module())
            if new is None:
                continue
            setattr(owner, attr, new)  # nn.Module moves it from the instance dict to the submodules
            owner.__dict__.setdefault("_gaaf_function_attrs", {})[attr] = value
            _clear_fast_path(owner)
            report[qual] = Replacement(value, new)
            report.reasons[qual] = f"function attribute: {match.why}"
            report.attributes.append(qual)


def strip_gaaf(model: nn.Module) -> GAAFReport:
    """Undo :func:`apply_gaaf`: put each original activation back (same object, same function).

    Function attributes get their function back, functional rewrites are undone, fast-path flags
    are restored. Returns ``{name: (gaaf module, restored module or function)}``.
    """
    _refuse_wrapped(model, "strip_gaaf")
    report = GAAFReport()
    for owner_name, owner in list(model.named_modules()):
        prefix = f"{owner_name}." if owner_name else ""
        for attr, fn in owner.__dict__.pop("_gaaf_function_attrs", {}).items():
            gaaf_module = getattr(owner, attr)
            delattr(owner, attr)
            setattr(owner, attr, fn)
            report[prefix + attr] = Replacement(gaaf_module, fn)
        added = owner.__dict__.pop("_gaaf_functional_nodes", None)
        if added is not None:
            owner.__dict__.pop("forward", None)  # back to the class's own forward
            for attr in added:
                gaaf_module = getattr(owner, attr)
                delattr(owner, attr)
                report[prefix + attr] = Replacement(gaaf_module, gaaf_module.base)
    for name, module in list(model.named_modules(remove_duplicate=False)):
        if name and isinstance(module, GAAF) and not _inside_gaaf(model, name):
            parent, child = _parent(model, name)
            setattr(parent, child, module.base)
            report[name] = Replacement(module, module.base)
    for owner in model.modules():
        owner.__dict__.update(owner.__dict__.pop("_gaaf_saved_flags", {}))
    return report


# --------------------------------------------------------------------------------------------------
# Functional calls via torch.fx
# --------------------------------------------------------------------------------------------------


class _OneLevelTracer(torch.fx.Tracer):
    """Traces only the given module's own forward: every submodule stays a call_module leaf."""

    def __init__(self, root: nn.Module) -> None:
        super().__init__()
        self._root = root

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        return m is not self._root


def _mentions_activation(module: nn.Module) -> bool:
    try:
        src = inspect.getsource(type(module).forward)
    except (OSError, TypeError):
        return True
    return any(w in src for w in functional_words())


def _rewrite_functional(model: nn.Module, chooser: _Chooser, report: GAAFReport) -> None:
    for owner_name, owner in list(model.named_modules()):
        if (
            isinstance(owner, GAAF)
            or type(owner).__module__.startswith("torch.nn")
            or "_gaaf_functional_nodes" in owner.__dict__
            or not _mentions_activation(owner)
        ):
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
            match = match_call(node.target, tuple(node.args), dict(node.kwargs))
            if match is None:
                continue
            qual = f"{owner_name}.{node.name}" if owner_name else node.name
            plain = match.base.module()
            new = chooser.wrap(qual, match, plain)
            if new is None:
                continue
            attr = f"gaaf_{node.name}"
            new._gaaf_functional = True
            owner.add_module(attr, new)
            with graph.inserting_before(node):
                call = graph.call_module(attr, (node.args[0],))
            node.replace_all_uses_with(call)
            graph.erase_node(node)
            added.append(attr)
            report[qual] = Replacement(plain, new)
            report.reasons[qual] = match.why
            report.functional.append(qual)
        if not added:
            continue
        graph.lint()
        gm = torch.fx.GraphModule(owner, graph, class_name=type(owner).__name__)
        # The generated forward only touches attributes the owner has, so it can run bound to it.
        owner.forward = gm.forward.__func__.__get__(owner)
        owner.__dict__["_gaaf_functional_nodes"] = added
