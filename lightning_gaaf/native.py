"""Native float32 CPU kernels for GAAF, compiled from C at first use and called through ctypes.

Why: ``torch.compile``'s kernels for GAAF pay dynamo's guards on every call (tens of microseconds,
twice per layer per step) and inductor's C++ for these exp/tanh-heavy loops ran 2x slower than a
plain C loop that the compiler vectorises itself. ``csrc/gaaf_kernels.c`` holds one forward and one
backward loop per (base, shape) pair; it is compiled once per machine with the system C compiler
(``$CC``, else ``cc``/``gcc``/``clang``) as ``-O3 -march=native -fopenmp`` into a cache folder
(``$GAAF_CACHE_DIR``, else ``$XDG_CACHE_HOME/lightning_gaaf``, else ``~/.cache/lightning_gaaf``),
keyed by the source, the flags, the compiler and the CPU.

Used for float32 tensors on the CPU whose base is one of :data:`NATIVE_BASES` and whose shape is
one of :data:`NATIVE_SHAPES` (the defaults for every supported ReLU- and tanh-family activation
except GELU and Softplus), unless switched off: ``GAAF_NATIVE=0`` or :func:`set_native` (False)
keeps ``torch.compile`` for those too, and ``GAAF_COMPILE=0`` turns off every compiled kernel.
Where no compiler works the kernels warn once and GAAF uses ``torch.compile`` / eager instead.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
import threading
import warnings
from importlib import resources
from pathlib import Path

import torch
from torch import Tensor

from lightning_gaaf._env import env_switch

__all__ = [
    "NATIVE_BASES",
    "NATIVE_SHAPES",
    "NativeKernels",
    "cache_dir",
    "load_library",
    "native_enabled",
    "set_native",
]

#: Base activations with native kernels; the order is the C table's (``GAAF_TABLE``).
NATIVE_BASES: tuple[str, ...] = ("tanh", "sigmoid", "relu", "leaky_relu", "elu", "silu", "hardtanh")
#: Shapes with native kernels; the order is the C table's (``GAAF_ROW``).
NATIVE_SHAPES: tuple[str, ...] = ("gauss", "shifted_sigmoid", "one")

_ABI_VERSION = 1
_SOURCE = "gaaf_kernels.c"
_NATIVE_OVERRIDE: bool | None = None
_LOCK = threading.Lock()
_LIBRARY: ctypes.CDLL | None = None
_LOAD_FAILED = False
_P = ctypes.c_void_p


def set_native(enabled: bool | None) -> None:
    """Turn the native kernels on/off for this process (None: use ``GAAF_NATIVE``)."""
    global _NATIVE_OVERRIDE
    _NATIVE_OVERRIDE = enabled


def native_enabled() -> bool:
    """Whether the native kernels may be used (default on; ``GAAF_NATIVE=0``, read once, = off)."""
    if _NATIVE_OVERRIDE is not None:
        return _NATIVE_OVERRIDE
    return env_switch("GAAF_NATIVE")


def cache_dir() -> Path:
    """Where the compiled library is kept (``GAAF_CACHE_DIR`` overrides)."""
    if os.environ.get("GAAF_CACHE_DIR"):
        return Path(os.environ["GAAF_CACHE_DIR"])
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "lightning_gaaf"


def _compiler() -> list[str] | None:
    if os.environ.get("CC"):
        return os.environ["CC"].split()
    for name in ("cc", "gcc", "clang"):
        path = shutil.which(name)
        if path:
            return [path]
    return None


def _flag_sets() -> list[list[str]]:
    """Compiler flags, best first: each later set drops what an older or foreign compiler may refuse."""
    base = ["-O3", "-std=c11", "-fPIC", "-shared", "-fno-math-errno", "-fno-trapping-math"]
    base.append("-ffp-contract=off")  # the sawtooth must not be contracted into an fma
    native = ["-march=native"]
    if platform.machine().lower() in ("x86_64", "amd64", "i686", "x86"):
        # gcc's tunings for AVX-512 CPUs prefer 256-bit vectors; these arithmetic-bound loops ran
        # 1.6-1.8x faster with 512 on a Zen 5 EPYC. CPUs without AVX-512 keep their widest (AVX2).
        native.append("-mprefer-vector-width=512")
    return [base + native + ["-fopenmp"], base + ["-fopenmp"], base + native, base]


def cpuinfo_field(key: str) -> str:
    """The first ``key`` value of /proc/cpuinfo (``vendor_id``, ``model name``), "" where unreadable."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.split(":", 1)[0].strip() == key:
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return ""


def _cpu_signature() -> str:
    """What ``-march=native`` depends on: the CPU model and its feature flags."""
    try:
        with open("/proc/cpuinfo") as f:
            lines = [ln for ln in f if ln.startswith(("model name", "flags", "Features", "CPU part"))]
        return "".join(sorted(set(lines)))
    except OSError:
        return platform.processor() + platform.machine()


def _compiler_version(cc: list[str]) -> str:
    try:
        out = subprocess.run([*cc, "--version"], capture_output=True, text=True, timeout=30)
        return out.stdout.splitlines()[0] if out.stdout else ""
    except (OSError, subprocess.SubprocessError):
        return ""


def _build(source: str, cc: list[str]) -> Path:
    """Compile ``source`` into the cache (once per source/flags/compiler/CPU) and return its path."""
    machine = "\0".join([source, " ".join(cc), _compiler_version(cc), _cpu_signature()])
    errors = []
    for flags in _flag_sets():
        key = hashlib.sha256(f"{machine}\0{' '.join(flags)}".encode()).hexdigest()[:16]
        target = cache_dir() / f"gaaf_kernels_{key}.so"
        if target.exists():
            return target
        target.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
            src = Path(tmp) / _SOURCE
            src.write_text(source)
            out = Path(tmp) / target.name
            proc = subprocess.run(
                [*cc, *flags, str(src), "-o", str(out), "-lm"], capture_output=True, text=True
            )
            if proc.returncode == 0:
                os.replace(out, target)  # atomic: concurrent builds (DDP ranks) are harmless
                return target
            errors.append(f"{' '.join(flags)}: {proc.stderr.strip()[-300:]}")
    raise RuntimeError("C compilation failed: " + " | ".join(errors))


def load_library() -> ctypes.CDLL | None:
    """The compiled kernel library, built on first call; None (warned once) where that fails."""
    global _LIBRARY, _LOAD_FAILED
    if _LIBRARY is not None or _LOAD_FAILED:
        return _LIBRARY
    with _LOCK:
        if _LIBRARY is not None or _LOAD_FAILED:
            return _LIBRARY
        try:
            cc = _compiler()
            if cc is None:
                raise RuntimeError("no C compiler found (set CC)")
            source = resources.files("lightning_gaaf").joinpath("csrc", _SOURCE).read_text()
            lib = ctypes.CDLL(str(_build(source, cc)))
            if lib.gaaf_abi_version() != _ABI_VERSION:
                raise RuntimeError(f"library ABI {lib.gaaf_abi_version()} != {_ABI_VERSION}")
            int_, i64 = ctypes.c_int, ctypes.c_int64
            lib.gaaf_forward.argtypes = [int_, int_, _P, _P, _P, i64, int_]
            lib.gaaf_backward.argtypes = [int_, int_, _P, _P, _P, _P, i64, int_]
            lib.gaaf_forward.restype = lib.gaaf_backward.restype = int_
            _LIBRARY = lib
        except Exception as err:  # no compiler, read-only cache, foreign platform...
            _LOAD_FAILED = True
            warnings.warn(
                f"GAAF: native kernels unavailable ({type(err).__name__}: {str(err)[:300]}); "
                "using torch.compile / eager kernels instead (GAAF_NATIVE=0 skips this attempt)",
                RuntimeWarning,
                stacklevel=2,
            )
    return _LIBRARY


class NativeKernels:
    """Forward/backward of one (base, shape, K) through the compiled C loops."""

    def __init__(self, base: str, base_params: tuple, shape: str, shape_params: dict, K: float, inv_k: float):
        self.base_id = NATIVE_BASES.index(base)
        self.shape_id = NATIVE_SHAPES.index(shape)
        b = list(base_params) + [0.0] * (2 - len(base_params))
        if shape == "gauss":
            s = [-1.0 / shape_params["c"], 0.0]
        elif shape == "shifted_sigmoid":
            s = [shape_params["a"], shape_params["b"]]
        else:
            s = [0.0, 0.0]
        # Kept alive with the instance: the C side reads it on every call.
        self._params = torch.tensor([*b, *s, K, inv_k, 0.0, 0.0], dtype=torch.float32)
        self._params_ptr = self._params.data_ptr()

    @staticmethod
    def supports(base: str, shape: str) -> bool:
        return base in NATIVE_BASES and shape in NATIVE_SHAPES

    def _launch(self, which: str, *inputs: Tensor) -> Tensor:
        """One C loop over float32, CPU, contiguous ``inputs`` of one shape, into a new tensor."""
        out = torch.empty_like(inputs[0])
        fn = _LIBRARY.gaaf_forward if which == "forward" else _LIBRARY.gaaf_backward
        pointers = [t.data_ptr() for t in inputs]
        rc = fn(
            self.base_id,
            self.shape_id,
            self._params_ptr,
            *pointers,
            out.data_ptr(),
            out.numel(),
            torch.get_num_threads(),
        )
        if rc != 0:
            raise RuntimeError(f"GAAF native {which} failed ({rc})")
        return out

    def forward(self, x: Tensor) -> Tensor:
        """``phi(x) + g(x) s(x)``."""
        return self._launch("forward", x)

    def backward(self, x: Tensor, grad_out: Tensor) -> Tensor:
        """``grad_out * (phi'(x) + s(x) + g(x) s'(x))``."""
        return self._launch("backward", x, grad_out)
