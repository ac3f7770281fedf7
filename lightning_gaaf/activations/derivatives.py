"""The catalogue's formulas beyond one torch call: ``phi'`` in torch ops, float32 forms, QuickGELU.

Each function takes ``(x, params)`` like :attr:`ActivationSpec.phi` / ``dphi``. The ``_f32`` forms use
the inlineable float32 polynomials of :mod:`~lightning_gaaf.activations.f32math` (compiled CPU
kernels). QuickGELU is here because torch has no class for it and the catalogue needs one to build.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from lightning_gaaf.activations.f32math import exp_nonpos, sigmoid_parts, tanh_f32
from lightning_gaaf.activations.spec import Params

__all__ = [
    "QUICK_GELU_SCALE",
    "QuickGELU",
    "f32_elu_grad",
    "f32_sigmoid",
    "f32_sigmoid_grad",
    "f32_silu",
    "f32_silu_grad",
    "f32_tanh",
    "f32_tanh_grad",
    "gelu_grad",
    "gelu_tanh_grad",
    "hardtanh_grad",
    "quick_gelu_grad",
    "sigmoid_grad",
    "silu_grad",
    "softplus_grad",
    "softsign_grad",
    "tanh_grad",
]

_SQRT_2_OVER_PI = math.sqrt(2.0 / math.pi)
_INV_SQRT_2 = 1.0 / math.sqrt(2.0)
_INV_SQRT_2PI = 1.0 / math.sqrt(2.0 * math.pi)
#: QuickGELU's ``x * sigmoid(1.702 x)``.
QUICK_GELU_SCALE = 1.702


class QuickGELU(nn.Module):
    """``x * sigmoid(1.702 x)`` (CLIP's GELU approximation): torch has no class for it."""

    def forward(self, x: Tensor) -> Tensor:
        return x * torch.sigmoid(QUICK_GELU_SCALE * x)


def tanh_grad(x: Tensor, p: Params) -> Tensor:
    t = torch.tanh(x)
    return 1.0 - t * t


def sigmoid_grad(x: Tensor, p: Params) -> Tensor:
    s = torch.sigmoid(x)
    return s * (1.0 - s)


def silu_grad(x: Tensor, p: Params) -> Tensor:
    s = torch.sigmoid(x)
    return s * (1.0 + x * (1.0 - s))


def gelu_grad(x: Tensor, p: Params) -> Tensor:
    cdf = 0.5 * (1.0 + torch.erf(x * _INV_SQRT_2))
    return cdf + x * torch.exp(-0.5 * x * x) * _INV_SQRT_2PI


def gelu_tanh_grad(x: Tensor, p: Params) -> Tensor:
    inner = _SQRT_2_OVER_PI * (x + 0.044715 * x * x * x)
    t = torch.tanh(inner)
    return 0.5 * (1.0 + t) + 0.5 * x * (1.0 - t * t) * _SQRT_2_OVER_PI * (1.0 + 3 * 0.044715 * x * x)


def quick_gelu_grad(x: Tensor, p: Params) -> Tensor:
    s = torch.sigmoid(QUICK_GELU_SCALE * x)
    return s + QUICK_GELU_SCALE * x * s * (1.0 - s)


def hardtanh_grad(x: Tensor, p: Params) -> Tensor:
    return ((x > p[0]) & (x < p[1])).to(x.dtype)


def softplus_grad(x: Tensor, p: Params) -> Tensor:
    return torch.where(x * p[0] > p[1], torch.ones_like(x), torch.sigmoid(x * p[0]))


def softsign_grad(x: Tensor, p: Params) -> Tensor:
    d = 1.0 + x.abs()
    return 1.0 / (d * d)


def f32_tanh(x: Tensor, p: Params) -> Tensor:
    return tanh_f32(x)


def f32_tanh_grad(x: Tensor, p: Params) -> Tensor:
    t = tanh_f32(x)
    return 1.0 - t * t


def f32_sigmoid(x: Tensor, p: Params) -> Tensor:
    return sigmoid_parts(x)[0]


def f32_sigmoid_grad(x: Tensor, p: Params) -> Tensor:
    return sigmoid_parts(x)[1]


def f32_silu(x: Tensor, p: Params) -> Tensor:
    return x * sigmoid_parts(x)[0]


def f32_silu_grad(x: Tensor, p: Params) -> Tensor:
    s, ds = sigmoid_parts(x)
    return s + x * ds


def f32_elu_grad(x: Tensor, p: Params) -> Tensor:
    return torch.where(x > 0, 1.0, p[0] * exp_nonpos(torch.clamp(x, max=0.0)))
