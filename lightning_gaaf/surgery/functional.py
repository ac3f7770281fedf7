"""Functional activation calls in ``forward`` (``torch.tanh``, ``F.relu``, ``x.tanh()``), rewritten with fx.

Each module whose own ``forward`` mentions an activation is traced one level deep (submodules stay
leaves); matching calls become GAAF submodules ``gaaf_<node>`` and the module's ``forward`` is
replaced by the traced one. :func:`~lightning_gaaf.surgery.strip_gaaf` undoes it.
"""

from __future__ import annotations

import inspect

import torch
import torch.fx
from torch import nn

from lightning_gaaf.activations import GAAF
from lightning_gaaf.activations.registry import functional_words, match_call
from lightning_gaaf.surgery.report import GAAFReport, Replacement
from lightning_gaaf.surgery.selection import Chooser

__all__ = ["rewrite_functional"]


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


def rewrite_functional(model: nn.Module, chooser: Chooser, report: GAAFReport) -> None:
    """Replace the activation calls of every traceable ``forward`` in ``model`` by GAAF submodules."""
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
