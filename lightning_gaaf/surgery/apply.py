"""``apply_gaaf`` and ``strip_gaaf``: replace activation modules and function attributes, and undo it."""

from __future__ import annotations

import functools
import types
import warnings
from collections.abc import Callable, Iterable, Sequence

from torch import Tensor, nn

from lightning_gaaf.activations import DEFAULT_K, GAAF, Shape, make_shape
from lightning_gaaf.activations.registry import match_function, match_module
from lightning_gaaf.activations.sawtooth import check_k
from lightning_gaaf.surgery.functional import rewrite_functional
from lightning_gaaf.surgery.policy import Policy, PolicyMapping, as_policy
from lightning_gaaf.surgery.report import GAAFReport, Replacement, show
from lightning_gaaf.surgery.selection import (
    LOOKS_LIKE,
    Chooser,
    as_patterns,
    looks_like_activation,
    resolve_targets,
    selected,
)

__all__ = ["apply_gaaf", "strip_gaaf"]

# Flags that make torch's transformer layers skip their ``activation`` in a fused fast path
# (inference only); cleared while GAAF is applied so the main path goes through GAAF.
_FAST_PATH_FLAGS = ("activation_relu_or_gelu",)


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


def apply_gaaf(
    model: nn.Module,
    targets: Iterable[str | type[nn.Module]] | str | None = None,
    include: str | Sequence[str] | None = None,
    exclude: str | Sequence[str] | None = None,
    K: float | None = DEFAULT_K,
    shape: str | Shape | Callable[[Tensor], Tensor] | None = None,
    shape_kwargs: dict[str, float] | None = None,
    functional: bool = False,
    policy: Policy | PolicyMapping | None = None,
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
            options for that layer, None leaves it alone. Or a mapping ``{name glob: options or
            None}``: the first glob that matches decides, unmatched names get the options above
            (:mod:`~lightning_gaaf.surgery.policy`).

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
    layer_policy = as_policy(policy)
    report = GAAFReport()
    options = {"K": K, "shape": shape, "shape_kwargs": shape_kwargs}
    chooser = Chooser(
        chosen_targets, as_patterns(include), as_patterns(exclude), layer_policy, options, report
    )
    existing = sum(isinstance(m, GAAF) for m in model.modules())

    _replace_modules(model, chooser, report)
    _replace_function_attributes(model, chooser, report)
    if functional:
        rewrite_functional(model, chooser, report)

    if not report:
        what = (
            f"the model already has {existing} GAAF module(s)"
            if existing
            else "no activation matched the targets/include/exclude/policy"
        )
        warnings.warn(f"apply_gaaf: {what}; nothing changed", UserWarning, stacklevel=2)
    return report


def _replace_modules(model: nn.Module, chooser: Chooser, report: GAAFReport) -> None:
    names: dict[int, list[str]] = {}
    for name, module in model.named_modules(remove_duplicate=False):
        names.setdefault(id(module), []).append(name)
    replaced: dict[int, tuple[GAAF, str]] = {}
    for name, module in list(model.named_modules(remove_duplicate=False)):
        if not name or isinstance(module, GAAF) or _inside_gaaf(model, name):
            continue
        if id(module) in replaced:  # a shared module: wrapped once, replaced where selected
            new, why = replaced[id(module)]
            if not selected(name, chooser.include, chooser.exclude):
                report.skipped[name] = "left out by include/exclude"
                continue
        else:
            match = match_module(module)
            if match is None and not isinstance(module, chooser.targets.classes):
                if looks_like_activation(module):
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


def _replace_function_attributes(model: nn.Module, chooser: Chooser, report: GAAFReport) -> None:
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
                if LOOKS_LIKE.search(getattr(value, "__name__", "")):
                    report.skipped[qual] = f"function {show(value)} is not in the activation catalogue"
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
