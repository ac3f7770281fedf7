"""Per-layer options: a policy ``(qualified_name, module) -> options | None``, or a glob mapping.

A callable is the Python form (Composer's module-surgery style). A mapping
``{name glob: options or None}`` says the same in a YAML file or on the command line::

    gaaf:
      policy:
        backbone.features.*: {K: 100000}
        backbone.head.*: null

Globs are tried in the mapping's order (the order they are written in) and the **first** that
matches a qualified name decides: its options, merged over the call's, or None (YAML ``null``) to
leave that activation alone. A name that no glob matches gets the call's options. Globs follow
``include``/``exclude``: :func:`fnmatch.fnmatchcase`, where ``*`` also crosses dots.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Callable, Mapping
from typing import Any

from torch import nn

from lightning_gaaf.activations.sawtooth import check_k
from lightning_gaaf.activations.shapes import make_shape

__all__ = ["POLICY_KEYS", "Policy", "PolicyMapping", "as_policy", "policy_from_mapping"]

#: ``(qualified_name, module) -> options or None``: per-layer GAAF options (``K``, ``shape``,
#: ``shape_kwargs``) merged over the call's; None leaves that activation alone.
Policy = Callable[[str, nn.Module], dict[str, Any] | None]
#: ``{name glob: options or None}``: the first glob, in the mapping's order, that matches decides.
PolicyMapping = Mapping[str, Mapping[str, Any] | None]
#: The options a policy may return.
POLICY_KEYS = ("K", "shape", "shape_kwargs")


def _checked_options(glob: str, options: Any) -> dict[str, Any] | None:
    """One rule's options as a dict, or a one-line ValueError that names the glob."""
    if options is None:
        return None
    where = f"policy glob {glob!r}"
    if not isinstance(options, Mapping):
        raise ValueError(
            f"{where}: expected options ({', '.join(POLICY_KEYS)}) or null, got {options!r} "
            "(a policy mapping is {name glob: options})"
        )
    unknown = [key for key in options if key not in POLICY_KEYS]
    if unknown:
        bad = ", ".join(repr(key) for key in unknown)
        raise ValueError(f"{where}: unknown option {bad}; allowed: {', '.join(POLICY_KEYS)}")
    shape_kwargs = options.get("shape_kwargs") or {}
    try:
        check_k(options.get("K"))
        if not isinstance(shape_kwargs, Mapping):
            raise ValueError(f"shape_kwargs must be a mapping, got {shape_kwargs!r}")
        if options.get("shape") is not None:
            make_shape(options["shape"], **shape_kwargs)
    except (TypeError, ValueError) as err:
        raise ValueError(f"{where}: {err}") from None
    return dict(options)


def policy_from_mapping(rules: PolicyMapping) -> Policy:
    """The :data:`Policy` a glob mapping describes, every rule checked now (see the module doc)."""
    checked: list[tuple[str, dict[str, Any] | None]] = []
    for glob, options in rules.items():
        if not isinstance(glob, str):
            raise ValueError(f"policy: glob {glob!r} is not a string")
        checked.append((glob, _checked_options(glob, options)))

    def policy(name: str, module: nn.Module) -> dict[str, Any] | None:
        for glob, options in checked:
            if fnmatch.fnmatchcase(name, glob):
                return None if options is None else dict(options)
        return {}

    return policy


def as_policy(policy: Policy | PolicyMapping | None) -> Policy | None:
    """A callable policy: a mapping goes through :func:`policy_from_mapping`, a callable stays as is."""
    if policy is None:
        return None
    if isinstance(policy, Mapping):
        return policy_from_mapping(policy)
    if callable(policy):
        return policy
    raise TypeError(
        "policy must be a callable (name, module) -> dict | None or a mapping {name glob: options | None}, "
        f"got {policy!r}"
    )
