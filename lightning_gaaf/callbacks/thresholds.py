"""Where an activation saturates: one rule for every activation, computed from its derivative.

Rule: the saturation area of ``phi`` is the set of nets ``z`` where ``|phi'(z)| < 0.1 * max |phi'|``,
i.e. where less than 10 % of the activation's best gradient gets through. The intervals are found
numerically from the module itself (autograd on a fine grid over [-20, 20], boundaries refined by
bisection), so parameters such as LeakyReLU's slope or ELU's alpha are taken into account and no
number is typed in by hand. Values for the default parameters (``z*`` = boundary):

================  =============================================  ======================
activation        saturation area                                closed form
================  =============================================  ======================
Tanh              ``|z| > 1.8184``                               ``atanh(sqrt(0.9))``
Sigmoid           ``|z| > 3.6369``                               ``2 atanh(sqrt(0.9))``
Hardtanh / ReLU6  ``z < min_val`` or ``z > max_val``             (-1, 1) / (0, 6)
ReLU              ``z < 0``                                      derivative is 0
LeakyReLU(0.01)   ``z < 0`` (none if ``negative_slope >= 0.1``)  slope below 10 %
ELU(alpha=1)      ``z < -2.3026``                                ``ln 0.1``
Softplus(beta=1)  ``z < -2.1972``                                ``-ln 9``
SiLU              ``z < -0.8825``                                numeric
GELU              ``z < -1.7282`` or ``-1.1583 < z < -0.5324``   numeric
================  =============================================  ======================

GELU's derivative dips below zero for negative nets and its magnitude there (up to 0.129) briefly
exceeds the 10 % cut (0.113), hence two intervals.

A GAAF module uses the area of its plain activation (``.base``): GAAF exists to put gradient into
exactly that area.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from fnmatch import fnmatchcase

import torch
from torch import Tensor, nn

from lightning_gaaf.callbacks._utils import plain_activation

#: Saturated = derivative magnitude below this fraction of its maximum.
SATURATION_RATIO: float = 0.1

Interval = tuple[float, float]

_GRID_LIMIT = 20.0
_GRID_POINTS = 200_001
_BISECTION_STEPS = 60


def _derivative(activation: nn.Module, z: Tensor) -> Tensor:
    with torch.enable_grad():
        x = z.detach().clone().requires_grad_(True)
        y = activation(x.clone())  # clone: in-place activations must not touch the leaf
        if y.shape != x.shape:
            raise ValueError("not an elementwise activation")
        (grad,) = torch.autograd.grad(y.sum(), x)
    return grad.abs()


def saturation_intervals(activation: nn.Module, ratio: float = SATURATION_RATIO) -> list[Interval]:
    """Open intervals ``(lo, hi)`` of nets where ``|phi'(z)| < ratio * max |phi'|`` (±inf for open ends).

    ``activation`` must be elementwise; it is evaluated in float64 on the CPU.
    """
    module = plain_activation(activation)
    grid = torch.linspace(-_GRID_LIMIT, _GRID_LIMIT, _GRID_POINTS, dtype=torch.float64)
    deriv = _derivative(module, grid)
    peak = float(deriv.max())
    if not math.isfinite(peak) or peak <= 0:
        raise ValueError(
            f"{type(module).__name__}: derivative is zero or not finite; give its threshold explicitly"
        )
    cut = ratio * peak
    saturated = (deriv < cut).tolist()

    def below(z: float) -> bool:
        return float(_derivative(module, torch.tensor([z], dtype=torch.float64))[0]) < cut

    def boundary(a: float, b: float) -> float:
        """Bisection between grid points a (state below(a)) and b (the other state)."""
        state_a = below(a)
        for _ in range(_BISECTION_STEPS):
            mid = 0.5 * (a + b)
            if below(mid) == state_a:
                a = mid
            else:
                b = mid
        z = 0.5 * (a + b)
        return 0.0 if abs(z) < 1e-9 else z

    values = grid.tolist()
    intervals: list[Interval] = []
    start: float | None = -math.inf if saturated[0] else None
    for i in range(1, len(values)):
        if saturated[i] and not saturated[i - 1]:
            start = boundary(values[i - 1], values[i])
        elif saturated[i - 1] and not saturated[i]:
            intervals.append((start, boundary(values[i - 1], values[i])))
            start = None
    if start is not None:
        intervals.append((start, math.inf))
    return intervals


def check_override(key: str, value: object) -> list[Interval]:
    """Intervals of a user threshold: ``t`` -> ``|z| > t``; ``(lo, hi)`` -> ``z < lo`` or ``z > hi``."""
    if isinstance(value, bool):
        value = None  # caught below
    if isinstance(value, (int, float)):
        if not value >= 0:
            raise ValueError(f"SaturationMonitor: thresholds[{key!r}] must be >= 0, got {value!r}")
        return [(-math.inf, -float(value)), (float(value), math.inf)]
    if isinstance(value, (tuple, list)) and len(value) == 2:
        lo, hi = value
        out = []
        if lo is not None:
            out.append((-math.inf, float(lo)))
        if hi is not None:
            out.append((float(hi), math.inf))
        return out
    raise ValueError(
        f"SaturationMonitor: thresholds[{key!r}] must be a number t (saturated when |z| > t) or a pair "
        f"(lo, hi) (saturated when z < lo or z > hi; None = no bound), got {value!r}"
    )


def resolve_intervals(
    layers: Mapping[str, nn.Module], overrides: Mapping[str, object] | None
) -> dict[str, list[Interval] | None]:
    """Saturation intervals per layer: an override matched by layer-name glob or class name of the
    plain activation, else the computed rule. None when neither works (saturation then reads NaN)."""
    overrides = dict(overrides or {})
    checked = {key: check_override(key, value) for key, value in overrides.items()}
    cache: dict[tuple, list[Interval] | None] = {}
    result: dict[str, list[Interval] | None] = {}
    for name, module in layers.items():
        base = plain_activation(module)
        by_name = [k for k in checked if fnmatchcase(name, k)]
        if by_name:
            result[name] = checked[by_name[0]]
            continue
        if type(base).__name__ in checked:
            result[name] = checked[type(base).__name__]
            continue
        key = (type(base), repr(base))
        if key not in cache:
            try:
                cache[key] = saturation_intervals(base)
            except Exception:
                cache[key] = None
        result[name] = cache[key]
    return result
