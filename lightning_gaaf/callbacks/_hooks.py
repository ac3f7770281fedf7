"""Module hooks registered and removed together, and the mark on a model during forwards a monitor adds."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn

#: Attribute set on a model while a monitor runs forwards of its own through it (net-variance probes).
PROBE_ATTRIBUTE = "gaaf_probe_forwards"


class HookSet:
    """Handles of hooks registered together, removed together."""

    def __init__(self) -> None:
        self.handles: list[torch.utils.hooks.RemovableHandle] = []

    def add(self, handle: torch.utils.hooks.RemovableHandle) -> None:
        self.handles.append(handle)

    def remove(self) -> None:
        for handle in self.handles:
            handle.remove()
        self.handles.clear()

    def __bool__(self) -> bool:
        return bool(self.handles)


@contextmanager
def probe_forwards(model: nn.Module) -> Iterator[None]:
    """Mark ``model`` while a monitor runs forwards of its own through it: training-step statistics
    of the same model skip them. The mark lives on the model, so other models (other trainers, other
    threads) are not affected, and it is removed afterwards."""
    depth = vars(model).get(PROBE_ATTRIBUTE, 0)
    setattr(model, PROBE_ATTRIBUTE, depth + 1)
    try:
        yield
    finally:
        if depth:
            setattr(model, PROBE_ATTRIBUTE, depth)
        else:
            delattr(model, PROBE_ATTRIBUTE)


def in_probe_forward(model: nn.Module) -> bool:
    """Whether ``model`` is running a monitor's own forward (see :func:`probe_forwards`)."""
    return vars(model).get(PROBE_ATTRIBUTE, 0) > 0
