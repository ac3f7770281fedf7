"""Module hooks registered and removed together, and the marker for forwards a monitor adds itself."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch

_EXTRA_FORWARDS = [0]


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
def extra_forwards() -> Iterator[None]:
    """Mark forwards a monitor adds itself (net-variance probes): training-step statistics skip them."""
    _EXTRA_FORWARDS[0] += 1
    try:
        yield
    finally:
        _EXTRA_FORWARDS[0] -= 1


def in_extra_forward() -> bool:
    return _EXTRA_FORWARDS[0] > 0
