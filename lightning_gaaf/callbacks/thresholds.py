"""Where an activation saturates: one rule for every activation, computed from its derivative.

Rule: the saturation area of ``phi`` is the set of nets ``z`` where ``|phi'(z)| < 0.1 * max |phi'|``,
i.e. where less than 10 % of the activation's best gradient gets through. The intervals are found
numerically from the module itself (autograd on a fine grid over [-20, 20], boundaries refined by
bisection), so parameters such as LeakyReLU's slope or ELU's alpha are taken into account and no
number is typed in by hand. The values for default parameters are tabulated in
:class:`~lightning_gaaf.callbacks.SaturationMonitor` (e.g. tanh: ``|z| > atanh(sqrt(0.9)) = 1.8184``).

A GAAF module uses the area of its plain activation (``.base``): GAAF exists to put gradient into
exactly that area.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Mapping
from fnmatch import fnmatchcase

import torch
from torch import Tensor, nn

from lightning_gaaf.callbacks._layers import plain_activation

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
    # A float64 CPU copy: the grid needs float64 and the module may live on an accelerator.
    module = copy.deepcopy(plain_activation(activation)).to("cpu", torch.float64)
    grid = torch.linspace(-_GRID_LIMIT, _GRID_LIMIT, _GRID_POINTS, dtype=torch.float64)
    with torch.no_grad():  # elementwise: each output depends on its own input only
        whole, half = module(grid.clone()), _GRID_POINTS // 2
        parts = torch.cat([module(grid[:half].clone()), module(grid[half:].clone())])
    if whole.shape != grid.shape or not torch.allclose(whole, parts, equal_nan=True):
        raise ValueError(
            f"{type(module).__name__} is not an elementwise activation; give its threshold explicitly"
        )
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
