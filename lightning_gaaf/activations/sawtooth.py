"""The sawtooth ``g(x) = (xK - floor(xK) - 0.5) / K``: its checks, its 1/K rounding, its product.

``g`` has amplitude ``0.5/K`` and slope 1 almost everywhere, so ``phi(x) + g(x) s(x)`` moves the
forward value by at most ``0.5/K * |s(x)|`` while the backward pass gains ``s(x)``.
"""

from __future__ import annotations

import functools
import math

import torch
from torch import Tensor

__all__ = ["DEFAULT_K", "check_k", "compute_dtype", "inverse_k", "sawtooth", "times_sawtooth"]

#: The paper's sawtooth frequency.
DEFAULT_K: float = 10_000


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """g is computed in float32 or wider: in half precision ``x*K`` has no fractional part left."""
    return torch.promote_types(dtype, torch.float32)


@functools.cache
def inverse_k(K: float, dtype: torch.dtype) -> float:
    """``1/K`` rounded *down* in ``dtype``, so ``|g| <= 0.5/K`` holds exactly after rounding.

    Multiplying by a reciprocal instead of dividing keeps compiled kernels fast.
    """
    inv = 1.0 / K
    t = torch.tensor(inv, dtype=dtype)
    if float(t) > inv:
        t = torch.nextafter(t, torch.zeros((), dtype=dtype))
    return float(t)


def times_sawtooth(x: Tensor, f: Tensor | float, K: float, inv_k: float) -> Tensor:
    """``g(x) * f``, the one place where the GAAF term meets non-finite inputs.

    Where ``x*K`` is not finite (inf, NaN, or overflow) the tooth is undefined and the product is
    dropped: +-inf gives what phi gives (``f`` may be ``inf * 0`` there, e.g. a shape's derivative)
    and NaN still comes out of phi and s (never masked). The native C kernels do the same.
    """
    y = x * K
    g = (y - torch.floor(y) - 0.5) * inv_k
    return torch.where(torch.isfinite(y), g * f, 0.0)


def check_k(K: float | None) -> None:
    """Raise a one-line ValueError unless ``K`` is a positive finite number or None (exact mode)."""
    if K is None:
        return
    if isinstance(K, bool) or not isinstance(K, (int, float)) or not math.isfinite(K) or K <= 0:
        raise ValueError(f"GAAF: K must be a positive finite number or None (exact mode), got {K!r}")


def sawtooth(x: Tensor, K: float = DEFAULT_K) -> Tensor:
    """``g(x) = (xK - floor(xK) - 0.5) / K`` in float32 or wider; ``|g| <= 0.5/K`` for finite x."""
    check_k(K)
    cdt = compute_dtype(x.dtype)
    return times_sawtooth(x.to(cdt), 1.0, float(K), inverse_k(float(K), cdt))
