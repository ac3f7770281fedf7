"""The fused GAAF forward/backward as ``torch.library`` custom ops, :func:`gaaf` and :class:`GAAF`.

``lightning_gaaf::gaaf_forward`` and ``lightning_gaaf::gaaf_backward`` take the base and shape by
catalogue / registry name with their parameters, so ``torch.compile``, ``torch.export`` and
``torch.library.opcheck`` see one opaque op per pass (fake implementations and autograd are
registered): ``torch.compile(model)`` traces GAAF without graph breaks, and the op runs the kernels
of the backend in force (native C kernels inside compiled graphs too). Outside of tracing the same
kernels are called through a light ``autograd.Function``: the custom op's Python dispatch and
autograd wrapper cost about twice the kernels' own time on a 16x64 tensor (forward + backward),
paid twice per layer per step. Both save only ``x`` and recompute the derivative, like timm's
memory-efficient activations.

Bases that are not in the catalogue go through a generic path: the base module keeps its own
autograd and the GAAF term ``g s`` is added by the same ops. A callable shape cannot be named in an
op; it uses the autograd function only (``torch.compile`` traces through it).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn

from lightning_gaaf.activations.backends import Kernels, kernels_for
from lightning_gaaf.activations.registry import CATALOG, activation_from_name, match_module
from lightning_gaaf.activations.sawtooth import DEFAULT_K, check_k
from lightning_gaaf.activations.shapes import SHAPES, Shape, make_shape
from lightning_gaaf.activations.spec import BoundActivation

__all__ = ["GAAF", "default_shape_for", "gaaf"]


# --------------------------------------------------------------------------------------------------
# The custom ops
# --------------------------------------------------------------------------------------------------

_OP_KERNELS: dict[tuple, Kernels] = {}


def _kernels_from_names(
    base: str, base_params: list[float], shape: str, shape_params: list[float], K: float | None
) -> Kernels:
    key = (base, tuple(base_params), shape, tuple(shape_params), K)
    kernels = _OP_KERNELS.get(key)
    if kernels is None:
        bound = CATALOG[base].bind(tuple(base_params)) if base else None
        kernels = _OP_KERNELS[key] = kernels_for(bound, SHAPES[shape](*shape_params), K)
    return kernels


@torch.library.custom_op("lightning_gaaf::gaaf_forward", mutates_args=())
def gaaf_forward(
    x: Tensor, base: str, base_params: list[float], shape: str, shape_params: list[float], K: float | None
) -> Tensor:
    """``phi(x) + g(x) s(x)``: ``base`` a catalogue name ("" = the term ``g s`` alone), ``shape`` a
    registered shape name; parameters in the order the catalogue / the shape's constructor takes."""
    return _kernels_from_names(base, base_params, shape, shape_params, K).forward(x)


@gaaf_forward.register_fake
def _(
    x: Tensor, base: str, base_params: list[float], shape: str, shape_params: list[float], K: Any
) -> Tensor:
    return x.new_empty(x.shape)


@torch.library.custom_op("lightning_gaaf::gaaf_backward", mutates_args=())
def gaaf_backward(
    x: Tensor,
    grad_out: Tensor,
    base: str,
    base_params: list[float],
    shape: str,
    shape_params: list[float],
    K: float | None,
) -> Tensor:
    """``grad_out * (phi'(x) + s(x) + g(x) s'(x))`` for the same arguments as ``gaaf_forward``."""
    return _kernels_from_names(base, base_params, shape, shape_params, K).backward(x, grad_out)


@gaaf_backward.register_fake
def _(
    x: Tensor, grad_out: Tensor, base: str, base_params: Any, shape: str, shape_params: Any, K: Any
) -> Tensor:
    return x.new_empty(x.shape)


def _setup_context(ctx: Any, inputs: tuple, output: Tensor) -> None:
    ctx.save_for_backward(inputs[0])
    ctx.op_args = inputs[1:]


def _op_backward(ctx: Any, grad_out: Tensor) -> tuple:
    (x,) = ctx.saved_tensors
    return (gaaf_backward(x, grad_out, *ctx.op_args), None, None, None, None, None)


gaaf_forward.register_autograd(_op_backward, setup_context=_setup_context)


# --------------------------------------------------------------------------------------------------
# The eager route to the same kernels
# --------------------------------------------------------------------------------------------------


class _GAAFFunction(torch.autograd.Function):
    """Fused ``phi + g s`` outside of tracing: saves only ``x``; backward recomputes ``phi' + s + g s'``."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, kernels: Kernels) -> Tensor:
        ctx.save_for_backward(x)
        ctx.kernels = kernels
        return kernels.forward(x)

    @staticmethod
    def backward(ctx: Any, grad_out: Tensor) -> tuple[Tensor, None]:
        (x,) = ctx.saved_tensors
        return ctx.kernels.backward(x, grad_out), None


def _op_args(base: BoundActivation | None, shape: Shape, K: float | None) -> tuple | None:
    """The op's arguments for (base, shape, K); None when the shape cannot be named in an op."""
    shape_params = shape.op_params()
    if shape_params is None:
        return None
    if base is None:
        return ("", [], shape.name, shape_params, K)
    return (base.name, list(base.params), shape.name, shape_params, K)


def _fused(x: Tensor, kernels: Kernels, op_args: tuple | None) -> Tensor:
    if op_args is not None and torch.compiler.is_compiling():
        return gaaf_forward(x, *op_args)
    if x.requires_grad and torch.is_grad_enabled():
        return _GAAFFunction.apply(x, kernels)
    with torch.no_grad():
        return kernels.forward(x)


# --------------------------------------------------------------------------------------------------
# Functional and module forms
# --------------------------------------------------------------------------------------------------


def _resolve_base(base: str | nn.Module) -> nn.Module:
    if isinstance(base, str):
        return activation_from_name(base)
    if isinstance(base, nn.Module):
        return base
    raise TypeError(f"GAAF: base must be an activation name or nn.Module, got {type(base).__name__}")


def default_shape_for(base: nn.Module) -> Shape:
    """The catalogue's default shape for ``base`` (our choice, not the paper's); shifted_sigmoid otherwise."""
    match = match_module(base)
    return make_shape(match.base.spec.default_shape if match is not None else "shifted_sigmoid")


class GAAF(nn.Module):
    """Gradient Acceleration in Activation Functions around a plain activation module.

    Args:
        base: the activation to accelerate (module or catalogue name); kept as the child ``base`` so
            :func:`~lightning_gaaf.surgery.strip_gaaf` can restore it unchanged.
        shape: shape function name (``gauss``, ``shifted_sigmoid``, ``one``), a :class:`Shape`, or
            any elementwise callable; None picks the catalogue's default for the base.
        K: sawtooth frequency (paper: 10 000); None = exact mode (forward exactly ``phi``).
        **shape_kwargs: parameters of a named shape, e.g. ``c=3.0`` or ``a=1.0, b=1.0``.

    A base the catalogue knows (:func:`~lightning_gaaf.activations.catalog.match_module`; torch's,
    timm's and transformers' classes, and :func:`~lightning_gaaf.register_activation`'s) runs as one
    fused kernel per pass (``fused`` is True); any other elementwise module keeps its own autograd
    and gets the GAAF term added. GAAF never runs in place and adds no parameters or buffers: a
    base's own parameters keep their ``state_dict`` keys.
    """

    def __init__(
        self,
        base: str | nn.Module,
        shape: str | Shape | Callable[[Tensor], Tensor] | None = None,
        K: float | None = DEFAULT_K,
        **shape_kwargs: float,
    ) -> None:
        super().__init__()
        check_k(K)
        self.base = _resolve_base(base)
        if isinstance(self.base, GAAF):
            raise ValueError("GAAF: the base is already a GAAF module")
        self.shape = default_shape_for(self.base) if shape is None else make_shape(shape, **shape_kwargs)
        self.K = None if K is None else float(K)
        match = match_module(self.base)
        self._bound = None if match is None else match.base
        self._kernels = kernels_for(self._bound, self.shape, self.K)
        self._op_args = _op_args(self._bound, self.shape, self.K)
        # The base is a child only for repr and restoration: its state keeps the keys it had before.
        self.register_state_dict_post_hook(_drop_base_prefix)
        self.register_load_state_dict_pre_hook(_add_base_prefix)

    @property
    def fused(self) -> bool:
        """True when the base is a catalogue activation (one fused kernel per pass)."""
        return self._bound is not None

    def forward(self, x: Tensor) -> Tensor:
        if self._bound is not None:
            return _fused(x, self._kernels, self._op_args)
        # Generic path: the base keeps its own autograd; GAAF never runs in place.
        phi = self.base(x.clone() if getattr(self.base, "inplace", False) else x)
        return phi + _fused(x, self._kernels, self._op_args)

    def __repr__(self) -> str:
        base = repr(self.base)
        if base.endswith("()"):
            base = base[:-2]
        k = "None" if self.K is None else f"{self.K:g}" if self.K < 1e6 else repr(self.K)
        return f"GAAF({base}, shape={self.shape!r}, K={k})"


def gaaf(
    x: Tensor,
    base: str | nn.Module = "tanh",
    shape: str | Shape | Callable[[Tensor], Tensor] | None = None,
    K: float | None = DEFAULT_K,
    **shape_kwargs: float,
) -> Tensor:
    """Functional GAAF: ``phi(x) + g(x) s(x)`` for a base activation given by name or module.

    ``K=None`` is exact mode: the forward is ``phi(x)`` bit for bit and the backward ``phi' + s``.
    """
    return GAAF(base, shape=shape, K=K, **shape_kwargs)(x)


def _drop_base_prefix(module: nn.Module, state_dict: dict, prefix: str, local_metadata: Any) -> None:
    inner = prefix + "base."
    for key in [k for k in state_dict if k.startswith(inner)]:
        state_dict[prefix + key[len(inner) :]] = state_dict.pop(key)


def _add_base_prefix(
    module: nn.Module, state_dict: dict, prefix: str, local_metadata: Any, strict: bool, *args: Any
) -> None:
    own = {name for name, _ in module.base.named_parameters()} | {n for n, _ in module.base.named_buffers()}
    for name in own:
        key = prefix + name
        if key in state_dict:
            state_dict[prefix + "base." + name] = state_dict.pop(key)
