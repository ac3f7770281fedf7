"""Per-layer options: a policy ``(qualified_name, module) -> options | None``."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch import nn

__all__ = ["POLICY_KEYS", "Policy"]

#: ``(qualified_name, module) -> options or None``: per-layer GAAF options (``K``, ``shape``,
#: ``shape_kwargs``) merged over the call's; None leaves that activation alone.
Policy = Callable[[str, nn.Module], "dict[str, Any] | None"]
#: The options a policy may return.
POLICY_KEYS = ("K", "shape", "shape_kwargs")
