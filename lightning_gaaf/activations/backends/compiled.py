"""``torch.compile``'d forward/backward kernels: one fused elementwise kernel per pass.

Float32 CPU kernels use the inlineable polynomials of :mod:`~lightning_gaaf.activations.f32math`
(see there why); other dtypes and devices compile the reference math of
:mod:`~lightning_gaaf.activations.backends.eager`.
"""

from __future__ import annotations

import logging
import types
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from lightning_gaaf.activations.backends import native
from lightning_gaaf.activations.backends.eager import backward_math, forward_math
from lightning_gaaf.activations.sawtooth import times_sawtooth
from lightning_gaaf.activations.shapes import Shape
from lightning_gaaf.activations.spec import BoundActivation

__all__ = ["CompiledKernels", "inductor_options"]


class _NoCudaRuntimeNotice(logging.Filter):
    """Drops ``torch.utils.cpp_extension``'s import-time notice "No CUDA runtime is found, using
    CUDA_HOME=...": inductor imports that module to build these kernels for the CPU, and on a machine
    with a CUDA toolkit but no GPU the notice says nothing about the run. Its other messages pass."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith("No CUDA runtime is found")


_CPP_EXTENSION_LOG = logging.getLogger("torch.utils.cpp_extension")
if not any(type(f).__name__ == _NoCudaRuntimeNotice.__name__ for f in _CPP_EXTENSION_LOG.filters):
    _CPP_EXTENSION_LOG.addFilter(_NoCudaRuntimeNotice())


def inductor_options(device_type: str) -> dict[str, Any] | None:
    """256-bit vectors for CPU kernels on Intel AVX-512 CPUs, unless the user set ``cpp.simdlen``.

    These kernels are arithmetic-bound. Their AVX-512 builds ran 2-3x slower than AVX2 on the
    Xeon we measured, and 1.7-2x faster on a Zen 5 EPYC, so other vendors keep inductor's own
    choice (see ``benchmarks/activation.py``).
    """
    if device_type != "cpu" or torch.backends.cpu.get_cpu_capability() != "AVX512":
        return None
    from torch._inductor import config as inductor_config

    if inductor_config.cpp.simdlen is not None or native.cpuinfo_field("vendor_id") != "GenuineIntel":
        return None
    return {"cpp.simdlen": 256}


def _own_code(method: Callable) -> Callable:
    """The bound ``method`` with a code object of its own.

    Dynamo caches compiled graphs per code object (at most ``recompile_limit`` per code); every
    kernel instance getting its own keeps many (base, shape, K) combinations compiled.
    """
    func = method.__func__
    code = func.__code__.replace(co_name=f"{func.__name__}_{id(method.__self__):x}")
    copy = types.FunctionType(code, func.__globals__, code.co_name, func.__defaults__, func.__closure__)
    return types.MethodType(copy, method.__self__)


class CompiledKernels:
    """The compiled forward/backward of one (base, shape, K), built per (pass, device, fast) on demand."""

    def __init__(self, base: BoundActivation | None, shape: Shape, K: float, inv_k: dict) -> None:
        self.base, self.shape, self.K, self.inv_k = base, shape, K, inv_k
        self._compiled: dict[tuple[str, str, bool], Callable | None] = {}

    # The float32 CPU math, with inlineable exp/tanh.
    def _phi_f32(self, x: Tensor, grad: bool) -> Tensor:
        if self.base is None:
            return torch.zeros_like(x)
        return self.base.phi_f32(x, grad)

    def fast_forward(self, x: Tensor) -> Tensor:
        s, _ = self.shape.parts_f32(x)
        return self._phi_f32(x, grad=False) + times_sawtooth(x, s, self.K, self.inv_k[x.dtype])

    def fast_backward(self, x: Tensor, grad_out: Tensor) -> Tensor:
        s, ds = self.shape.parts_f32(x)
        d = self._phi_f32(x, grad=True) + s + times_sawtooth(x, ds, self.K, self.inv_k[x.dtype])
        return grad_out * d

    def forward(self, x: Tensor) -> Tensor:
        return forward_math(self.base, self.shape, self.K, self.inv_k[x.dtype], x)

    def backward(self, x: Tensor, grad_out: Tensor) -> Tensor:
        return backward_math(self.base, self.shape, self.K, self.inv_k[x.dtype], x, grad_out)

    def get(self, which: str, x: Tensor) -> Callable | None:
        """The compiled kernel for ``which`` on x's device/dtype (None: it failed before)."""
        fast = x.device.type == "cpu" and x.dtype == torch.float32
        key = (which, x.device.type, fast)
        if key not in self._compiled:
            if fast:
                math = self.fast_forward if which == "forward" else self.fast_backward
            else:
                math = self.forward if which == "forward" else self.backward
            self._compiled[key] = torch.compile(
                _own_code(math), fullgraph=True, options=inductor_options(x.device.type)
            )
        return self._compiled[key]

    def mark_failed(self, which: str, x: Tensor) -> None:
        fast = x.device.type == "cpu" and x.dtype == torch.float32
        self._compiled[(which, x.device.type, fast)] = None
