"""Which activations surgery replaces, and with which options: targets, include/exclude, policy.

:class:`Chooser` answers, for each candidate (a module, a function attribute or a functional call),
whether to wrap it and into which GAAF module, and records the look-alikes left alone in the report.
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Iterable, Sequence
from typing import NamedTuple

from torch import nn

from lightning_gaaf.activations import DEFAULT_K, GAAF
from lightning_gaaf.activations.registry import CATALOG, activation_classes
from lightning_gaaf.activations.spec import Match
from lightning_gaaf.surgery.policy import POLICY_KEYS
from lightning_gaaf.surgery.report import GAAFReport

__all__ = ["LOOKS_LIKE", "Chooser", "as_patterns", "looks_like_activation", "resolve_targets", "selected"]

#: Class or function names that look like an activation: listed in the report when not replaced.
LOOKS_LIKE = re.compile(
    r"activation|^act|act$|gelu|relu|elu$|silu|swish|mish|sigmoid|tanh|softplus|softsign|hardswish|shrink|glu$",
    re.IGNORECASE,
)


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


def as_patterns(patterns: str | Sequence[str] | None) -> list[str] | None:
    """One glob or several as a list (None stays None: no restriction)."""
    if patterns is None:
        return None
    return [patterns] if isinstance(patterns, str) else list(patterns)


def selected(name: str, include: list[str] | None, exclude: list[str] | None) -> bool:
    """Whether ``name`` matches an include glob (if any are given) and no exclude glob."""
    if include is not None and not any(fnmatch.fnmatchcase(name, p) for p in include):
        return False
    return not (exclude and any(fnmatch.fnmatchcase(name, p) for p in exclude))


def looks_like_activation(module: nn.Module) -> bool:
    """A leaf module that is probably an activation (reported when the catalogue does not know it)."""
    if isinstance(module, GAAF) or next(module.children(), None) is not None:
        return False
    cls = type(module)
    return cls.__module__ == "torch.nn.modules.activation" or bool(LOOKS_LIKE.search(cls.__name__))


class Chooser:
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
        if not selected(name, self.include, self.exclude):
            self.report.skipped[name] = "left out by include/exclude"
            return None
        options = dict(self.options)
        if self.policy is not None:
            chosen = self.policy(name, module)
            if chosen is None:
                self.report.skipped[name] = "the policy returned None"
                return None
            unknown = set(chosen) - set(POLICY_KEYS)
            if unknown:
                raise ValueError(
                    f"apply_gaaf: the policy returned unknown option(s) {sorted(unknown)} for {name!r}; "
                    f"allowed: {', '.join(POLICY_KEYS)}"
                )
            options.update(chosen)
        shape_kwargs = dict(options.get("shape_kwargs") or {})
        return GAAF(module, shape=options.get("shape"), K=options.get("K", DEFAULT_K), **shape_kwargs)
