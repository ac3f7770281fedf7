"""The reference math of ``phi + g s`` and its derivative, in plain torch ops.

Used as is by the eager backend (and for float64, CUDA and any dtype the faster backends skip), and
as the source that ``torch.compile`` fuses (:mod:`~lightning_gaaf.activations.backends.compiled`).
``x`` is already in the compute dtype (float32 or wider).
"""

from __future__ import annotations

from torch import Tensor

from lightning_gaaf.activations.sawtooth import times_sawtooth
from lightning_gaaf.activations.shapes import Shape
from lightning_gaaf.activations.spec import BoundActivation

__all__ = ["backward_math", "forward_math"]


def forward_math(base: BoundActivation | None, shape: Shape, K: float, inv_k: float, x: Tensor) -> Tensor:
    """``phi(x) + g(x) s(x)``; ``base=None`` is the GAAF term ``g s`` alone."""
    term = times_sawtooth(x, shape(x), K, inv_k)
    return term if base is None else base.phi(x) + term


def backward_math(
    base: BoundActivation | None, shape: Shape, K: float | None, inv_k: float, x: Tensor, grad_out: Tensor
) -> Tensor:
    """``grad_out * (phi'(x) + s(x) + g(x) s'(x))``; K None (exact mode) drops the ``g s'`` term."""
    s, ds = shape.parts(x)
    d = s if base is None else base.dphi(x) + s
    if K is not None:
        d = d + times_sawtooth(x, ds, K, inv_k)
    return grad_out * d
