"""Which kernels compute GAAF: one switch, ``GAAF_BACKEND`` / :func:`set_backend`.

* ``auto`` (default): the native C kernels where they apply (float32 CPU, a base and shape with a
  kernel row), else ``torch.compile``'d kernels (CPU and CUDA), else eager torch ops;
* ``native``: the native C kernels where they apply, eager torch ops elsewhere;
* ``compile``: ``torch.compile``'d kernels, eager torch ops where compilation is not possible;
* ``eager``: the reference math in plain torch ops only (no compiler involved).

``GAAF_BACKEND`` is read once per process, at the first GAAF call; :func:`set_backend` changes it
at run time and :func:`use_backend` for a ``with`` block.
"""

from __future__ import annotations

import contextlib
import functools
import os
import warnings
from collections.abc import Iterator

import torch
from torch import Tensor

from lightning_gaaf.activations.backends import native
from lightning_gaaf.activations.backends.compiled import CompiledKernels
from lightning_gaaf.activations.backends.eager import backward_math, forward_math
from lightning_gaaf.activations.sawtooth import compute_dtype, inverse_k
from lightning_gaaf.activations.shapes import CallableShape, Shape
from lightning_gaaf.activations.spec import BoundActivation

__all__ = ["BACKENDS", "Kernels", "get_backend", "kernels_for", "set_backend", "use_backend"]

BACKENDS: tuple[str, ...] = ("auto", "native", "compile", "eager")
_OVERRIDE: str | None = None


def _check(name: str, where: str) -> str:
    if name not in BACKENDS:
        raise ValueError(f"{where}: unknown GAAF backend {name!r}; choose one of {', '.join(BACKENDS)}")
    return name


def set_backend(name: str | None) -> None:
    """Choose the GAAF kernels for this process: ``auto``, ``native``, ``compile``, ``eager``.

    None goes back to ``GAAF_BACKEND`` (default ``auto``).
    """
    global _OVERRIDE
    _OVERRIDE = None if name is None else _check(name, "set_backend")


@contextlib.contextmanager
def use_backend(name: str | None) -> Iterator[None]:
    """``with use_backend("eager"): ...`` and the previous choice is back afterwards."""
    global _OVERRIDE
    previous = _OVERRIDE
    set_backend(name)
    try:
        yield
    finally:
        _OVERRIDE = previous


@functools.cache
def _env_backend() -> str:
    value = os.environ.get("GAAF_BACKEND", "").strip().lower()
    return _check(value, "GAAF_BACKEND") if value else "auto"


def get_backend() -> str:
    """The backend in force: :func:`set_backend`'s, else ``GAAF_BACKEND``'s, else ``auto``."""
    return _OVERRIDE if _OVERRIDE is not None else _env_backend()


def _as_dtype(t: Tensor, dtype: torch.dtype) -> Tensor:
    """``t.to(dtype)`` without the cost of a no-op call (it sits on every layer's hot path)."""
    return t if t.dtype is dtype else t.to(dtype)


def _in_compute_dtype(x: Tensor) -> Tensor:
    """``x`` in :func:`compute_dtype` (float32 and float64 as they are, without a promotion lookup)."""
    dtype = x.dtype
    if dtype is torch.float32 or dtype is torch.float64:
        return x
    return x.to(compute_dtype(dtype))


class Kernels:
    """Forward/backward of ``phi + g s`` for one (base, shape, K), on the backend in force.

    ``base=None`` is the GAAF term ``g s`` alone (the generic path around any other module).
    """

    def __init__(self, base: BoundActivation | None, shape: Shape, K: float | None) -> None:
        self.base, self.shape, self.K = base, shape, K
        # 1/K per compute dtype, fixed here so compiled kernels see a constant and no float input.
        self._inv_k = {} if K is None else {dt: inverse_k(K, dt) for dt in (torch.float32, torch.float64)}
        self._compiled = None if K is None else CompiledKernels(base, shape, K, self._inv_k)
        self._compilable = K is not None and not isinstance(shape, CallableShape)
        self._fallback_warned = False
        self._native = None
        if K is not None and base is not None and base.spec.kernel is not None and shape.kernel is not None:
            self._native = native.NativeKernels(
                base.spec.kernel,
                base.kernel_params(),
                shape.kernel,
                shape.kernel_params(),
                K,
                self._inv_k[torch.float32],
            )

    def _inv(self, x: Tensor) -> float:
        return self._inv_k.get(x.dtype, 0.0)

    def _use_native(self, backend: str, x: Tensor, grad_out: Tensor | None = None) -> bool:
        """Cheapest checks first: this runs twice per GAAF layer per training step.

        ``grad_out`` is already in ``x``'s dtype; only its device is checked.
        """
        return (
            self._native is not None
            and (backend == "auto" or backend == "native")
            and x.dtype is torch.float32
            and x.is_cpu
            and (grad_out is None or grad_out.is_cpu)
            and native.load_library() is not None
        )

    def _run(self, which: str, backend: str, *tensors: Tensor) -> Tensor:
        """The compiled kernel where the backend allows it, else the reference math (flat tensors)."""
        flat = [t.reshape(-1) for t in tensors]
        x = tensors[0]
        out = None
        if (
            backend in ("auto", "compile")
            and self._compilable
            and x.device.type in ("cpu", "cuda")
            and x.numel() >= 2  # sizes 0 and 1 would each be compiled separately
            and not torch.compiler.is_compiling()
        ):
            fn = self._compiled.get(which, x)
            if fn is not None:
                for t in flat:  # one kernel for all sizes; constants stay baked in
                    torch._dynamo.maybe_mark_dynamic(t, 0)
                try:
                    out = fn(*flat)
                except Exception as err:
                    # No C++ compiler, unsupported platform...: eager for good, once warned.
                    if not self._fallback_warned:
                        warnings.warn(
                            f"GAAF: torch.compile failed here ({type(err).__name__}: {str(err)[:200]}); "
                            "using the eager kernels (GAAF_BACKEND=eager skips compilation)",
                            RuntimeWarning,
                            stacklevel=5,
                        )
                        self._fallback_warned = True
                    self._compiled.mark_failed(which, x)
        if out is None:
            if which == "forward":
                out = forward_math(self.base, self.shape, self.K, self._inv(x), *flat)
            else:
                out = backward_math(self.base, self.shape, self.K, self._inv(x), *flat)
        return out.view(x.shape)

    def forward(self, x: Tensor) -> Tensor:
        """``phi(x) + g(x) s(x)`` in x's dtype, a new contiguous tensor."""
        if self.K is None:  # exact mode: bit-identical to phi
            out = torch.zeros_like(x) if self.base is None else self.base.phi(x)
            return out.contiguous()
        xc = _in_compute_dtype(x)
        backend = get_backend()
        if self._use_native(backend, xc):
            out = self._native.forward(xc.contiguous())
        else:
            out = self._run("forward", backend, xc)
        return _as_dtype(out, x.dtype)

    def backward(self, x: Tensor, grad_out: Tensor) -> Tensor:
        """``grad_out * (phi'(x) + s(x) + g(x) s'(x))`` in x's dtype."""
        xc = _in_compute_dtype(x)
        gc = _as_dtype(grad_out, xc.dtype)  # x's shape (autograd checks it), any strides (even expanded)
        backend = get_backend()
        if self.K is not None and self._use_native(backend, xc, gc):
            out = self._native.backward(xc.contiguous(), gc.contiguous())
        else:
            out = self._run("backward", backend if self.K is not None else "eager", xc, gc)
        return _as_dtype(out, x.dtype)


_KERNEL_CACHE: dict[tuple, Kernels] = {}


def kernels_for(base: BoundActivation | None, shape: Shape, K: float | None) -> Kernels:
    """The shared :class:`Kernels` of one (base, shape, K) (compiled kernels are built once)."""
    key = (base, shape, K)
    kernels = _KERNEL_CACHE.get(key)
    if kernels is None:
        kernels = _KERNEL_CACHE[key] = Kernels(base, shape, K)
    return kernels
