"""The activation catalogue: the one table that says what each supported activation *is*.

Each :class:`ActivationSpec` (:mod:`~lightning_gaaf.activations.spec`) holds the name, the module
classes that compute it (torch's, and the classes of timm and Hugging Face transformers, named as
strings and resolved only once their module has been imported by the user: nothing here imports
them), its functional forms, ``phi`` and ``phi'``, the default shape, and the row of the native C
kernel table. Surgery (modules, function attributes, fx functional calls), the models' activation
names, the kernels and ``docs/activations.md`` all read this table; nothing else in the package
lists activations.

The lookups and registration that read the table live in :mod:`~lightning_gaaf.activations.registry`,
the longer formulas in :mod:`~lightning_gaaf.activations.derivatives`.

Adding an activation is one :func:`register_activation` call (or one entry in ``_BUILTIN`` below),
plus a C kernel row where a native kernel is wanted.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from lightning_gaaf.activations import derivatives as D  # phi', float32 forms
from lightning_gaaf.activations.derivatives import QuickGELU
from lightning_gaaf.activations.registry import install_builtin
from lightning_gaaf.activations.spec import ActivationSpec, Params, call_args

__all__ = ["markdown_table"]


def _gelu_params(approximate: str) -> Callable[[nn.Module], Params | None]:
    """torch's GELU says which one it is; the other libraries' classes are one or the other."""
    return lambda m: () if not isinstance(m, nn.GELU) or m.approximate == approximate else None


def _gelu_call(approximate: str) -> Callable[[tuple, dict], Params | None]:
    def read(args: tuple, kwargs: dict) -> Params | None:
        value = kwargs.get("approximate", args[1] if len(args) > 1 else "none")
        return () if value == approximate else None

    return read


_TIMM = "timm.layers.activations:"
_TIMM_ME = "timm.layers.activations_me:"
_HF = "transformers.activations:"

_BUILTIN: tuple[ActivationSpec, ...] = (
    ActivationSpec(
        "tanh",
        lambda x, p: torch.tanh(x),
        D.tanh_grad,
        nn.Tanh,
        classes=(nn.Tanh, _TIMM + "Tanh"),
        functions=(torch.tanh, F.tanh, "tanh", _TIMM + "tanh"),
        default_shape="gauss",
        kernel=0,
        phi_f32=D.f32_tanh,
        dphi_f32=D.f32_tanh_grad,
    ),
    ActivationSpec(
        "sigmoid",
        lambda x, p: torch.sigmoid(x),
        D.sigmoid_grad,
        nn.Sigmoid,
        classes=(nn.Sigmoid, _TIMM + "Sigmoid"),
        functions=(torch.sigmoid, F.sigmoid, "sigmoid", _TIMM + "sigmoid"),
        default_shape="gauss",
        kernel=1,
        phi_f32=D.f32_sigmoid,
        dphi_f32=D.f32_sigmoid_grad,
    ),
    ActivationSpec(
        "relu",
        lambda x, p: torch.relu(x),
        lambda x, p: (x > 0).to(x.dtype),
        nn.ReLU,
        classes=(nn.ReLU,),
        functions=(torch.relu, F.relu, "relu"),
        kernel=2,
    ),
    ActivationSpec(
        "leaky_relu",
        lambda x, p: F.leaky_relu(x, p[0]),
        lambda x, p: torch.where(x > 0, torch.ones_like(x), p[0]),
        nn.LeakyReLU,
        defaults=(0.01,),
        classes=(nn.LeakyReLU,),
        params_of=lambda m: (float(m.negative_slope),),
        functions=(F.leaky_relu,),
        call_params=call_args(("negative_slope", 0.01)),
        kernel=3,
    ),
    ActivationSpec(
        "elu",
        lambda x, p: F.elu(x, p[0]),
        lambda x, p: torch.where(x > 0, torch.ones_like(x), p[0] * torch.exp(torch.clamp(x, max=0.0))),
        nn.ELU,
        defaults=(1.0,),
        classes=(nn.ELU,),
        params_of=lambda m: (float(m.alpha),),
        functions=(F.elu,),
        call_params=call_args(("alpha", 1.0)),
        kernel=4,
        dphi_f32=D.f32_elu_grad,
    ),
    ActivationSpec(
        "gelu",
        lambda x, p: F.gelu(x),
        D.gelu_grad,
        nn.GELU,
        classes=(nn.GELU, _TIMM + "GELU", _HF + "GELUActivation"),
        params_of=_gelu_params("none"),
        functions=(F.gelu, _TIMM + "gelu"),
        call_params=_gelu_call("none"),
    ),
    ActivationSpec(
        "gelu_tanh",
        lambda x, p: F.gelu(x, approximate="tanh"),
        D.gelu_tanh_grad,
        lambda: nn.GELU(approximate="tanh"),
        classes=(
            nn.GELU,
            _TIMM + "GELUTanh",
            _HF + "GELUTanh",
            _HF + "NewGELUActivation",
            _HF + "FastGELUActivation",
        ),
        params_of=_gelu_params("tanh"),
        functions=(F.gelu, _TIMM + "gelu_tanh"),
        call_params=_gelu_call("tanh"),
    ),
    ActivationSpec(
        "quick_gelu",
        lambda x, p: x * torch.sigmoid(D.QUICK_GELU_SCALE * x),
        D.quick_gelu_grad,
        QuickGELU,
        classes=(QuickGELU, _TIMM + "QuickGELU", _HF + "QuickGELUActivation"),
        functions=(_TIMM + "quick_gelu",),
    ),
    ActivationSpec(
        "silu",
        lambda x, p: F.silu(x),
        D.silu_grad,
        nn.SiLU,
        classes=(nn.SiLU, _TIMM + "Swish", _TIMM_ME + "SwishMe", _HF + "SiLUActivation"),
        functions=(F.silu, _TIMM + "swish"),
        kernel=5,
        phi_f32=D.f32_silu,
        dphi_f32=D.f32_silu_grad,
    ),
    ActivationSpec(
        "relu6",
        lambda x, p: F.hardtanh(x, 0.0, 6.0),
        lambda x, p: D.hardtanh_grad(x, (0.0, 6.0)),
        lambda *p: nn.ReLU6(),
        classes=(nn.ReLU6,),  # before hardtanh: ReLU6 is a Hardtanh subclass
        params_of=lambda m: (0.0, 6.0),
        functions=(F.relu6,),
        call_params=lambda args, kwargs: (0.0, 6.0),
        kernel=6,  # the hardtanh kernel with bounds (0, 6)
    ),
    ActivationSpec(
        "hardtanh",
        lambda x, p: F.hardtanh(x, p[0], p[1]),
        D.hardtanh_grad,
        nn.Hardtanh,
        defaults=(-1.0, 1.0),
        classes=(nn.Hardtanh,),
        params_of=lambda m: (float(m.min_val), float(m.max_val)),
        functions=(F.hardtanh,),
        call_params=call_args(("min_val", -1.0), ("max_val", 1.0)),
        default_shape="gauss",
        kernel=6,
    ),
    ActivationSpec(
        "softplus",
        lambda x, p: F.softplus(x, p[0], p[1]),
        D.softplus_grad,
        nn.Softplus,
        defaults=(1.0, 20.0),
        classes=(nn.Softplus,),
        params_of=lambda m: (float(m.beta), float(m.threshold)),
        functions=(F.softplus,),
        call_params=call_args(("beta", 1.0), ("threshold", 20.0)),
    ),
    ActivationSpec(
        "softsign",
        lambda x, p: x / (1.0 + x.abs()),
        D.softsign_grad,
        nn.Softsign,
        classes=(nn.Softsign,),
        functions=(F.softsign,),
        default_shape="gauss",
    ),
    ActivationSpec(
        "hardsigmoid",
        lambda x, p: F.hardsigmoid(x),
        lambda x, p: ((x > -3.0) & (x < 3.0)).to(x.dtype) / 6.0,
        nn.Hardsigmoid,
        classes=(nn.Hardsigmoid, _TIMM + "HardSigmoid"),
        functions=(F.hardsigmoid,),
        default_shape="gauss",
    ),
)

# Lookups go through CATALOG in this order: a more specific class before its base class.
install_builtin(_BUILTIN)


def markdown_table() -> str:
    """The catalogue as the Markdown table of ``docs/activations.md`` (kept in sync by a test)."""

    def show(ref: Any) -> str:
        if isinstance(ref, str):
            module, _, attr = ref.partition(":")
            return f"`{module.partition('.')[0]}:{attr}`" if attr else f"`x.{ref}()`"
        module = getattr(ref, "__module__", None) or ""
        prefixes = {"torch.nn.functional": "F.", "torch._C._nn": "F.", "torch": "torch."}
        prefix = "nn." if module.startswith("torch.nn.modules") else prefixes.get(module, "")
        if module.startswith("lightning_gaaf"):
            prefix = module + "."
        return f"`{prefix}{ref.__name__}`"

    lines = [
        "| name | classes | functional forms | default shape | native kernel |",
        "|---|---|---|---|---|",
    ]
    for spec in _BUILTIN:
        classes = ", ".join(show(c) for c in spec.classes)
        functions = ", ".join(show(f) for f in spec.functions)
        kernel = "—" if spec.kernel is None else f"row {spec.kernel}"
        lines.append(f"| `{spec.name}` | {classes} | {functions} | `{spec.default_shape}` | {kernel} |")
    return "\n".join(lines)
