"""exp / tanh / sigmoid for float32 as inlineable polynomials (the compiled float32 CPU kernels).

Inductor's C++ backend calls Sleef for ``exp`` and ``tanh``, one out-of-line call per vector (tanh
~5x slower than ATen's MKL tanh); plain multiply-adds are inlined and scheduled together with the
rest of the GAAF arithmetic instead. Both are accurate to a few float32 ulp. The native C kernels
(``csrc/gaaf_kernels.c``) use the same polynomials; float64, CUDA and the eager path keep torch's
functions.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["exp_nonpos", "sigmoid_parts", "tanh_f32"]

_LOG2E = 1.4426950408889634
_LN2_HI = 0.693359375  # ln 2 split in two (Cody-Waite): n * _LN2_HI is exact for |n| <= 126
_LN2_LO = -2.12194440e-4
_EXPM1_POLY = (
    1.9875691500e-4,
    1.3981999507e-3,
    8.3334519073e-3,
    4.1665795894e-2,
    1.6666665459e-1,
    5.0000001201e-1,
)
_EXP_MIN = -87.33  # exp(a) < FLT_MIN below this: flushed to 0 (no slow subnormals)
# tanh(x) = x P(x^2) / Q(x^2) on [-c, c], c = 7.905... where tanh rounds to +-1 (Eigen's float tanh).
_TANH_CLAMP = 7.90531110763549805
_TANH_P = (-2.76076847742355e-16, 2.00018790482477e-13, -8.60467152213735e-11, 5.12229709037114e-08)
_TANH_P += (1.48572235717979e-05, 6.37261928875436e-04, 4.89352455891786e-03)
_TANH_Q = (1.19825839466702e-06, 1.18534705686654e-04, 2.26843463243900e-03, 4.89352518554385e-03)


def _horner(x: Tensor, coeffs: tuple[float, ...]) -> Tensor:
    p = x * coeffs[0] + coeffs[1]
    for c in coeffs[2:]:
        p = p * x + c
    return p


def exp_nonpos(a: Tensor) -> Tensor:
    """``exp(a)`` for float32 ``a <= 0`` (NaN stays NaN) in inlineable ops, within ~1 ulp."""
    ac = torch.where(a < _EXP_MIN, _EXP_MIN, a)  # keeps 2^n a normal float
    n = torch.floor(ac * _LOG2E + 0.5)
    r = (ac - n * _LN2_HI) - n * _LN2_LO  # |r| <= ln(2)/2
    expm1_r = r + r * r * _horner(r, _EXPM1_POLY)
    two_n = ((n.to(torch.int32) + 127) << 23).view(torch.float32)  # 2^n from its exponent bits
    return torch.where(a < _EXP_MIN, 0.0, two_n + two_n * expm1_r)


def tanh_f32(x: Tensor) -> Tensor:
    """``tanh`` for float32 as a rational function: within ~4 float32 ulp, +-inf -> +-1, NaN -> NaN."""
    xc = torch.clamp(x, -_TANH_CLAMP, _TANH_CLAMP)
    x2 = xc * xc
    t = xc * _horner(x2, _TANH_P) / _horner(x2, _TANH_Q)
    return torch.where(x.abs() < 0.0004, x, t)  # tiny |x|: tanh(x) == x in float32


def sigmoid_parts(z: Tensor) -> tuple[Tensor, Tensor]:
    """``(sigmoid(z), sigmoid'(z))`` from one ``e = exp(-|z|)``: no overflow, no cancellation."""
    e = exp_nonpos(-z.abs())
    r = 1.0 / (1.0 + e)
    return torch.where(z >= 0, r, e * r), e * r * r
