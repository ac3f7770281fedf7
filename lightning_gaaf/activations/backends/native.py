"""Native float32 CPU kernels for GAAF, compiled from C at first use and called through ctypes.

Why: ``torch.compile``'s kernels for GAAF pay dynamo's guards on every call (tens of microseconds,
twice per layer per step) and inductor's C++ for these exp/tanh-heavy loops ran 2x slower than a
plain C loop that the compiler vectorises itself. ``csrc/gaaf_kernels.c`` holds one forward and one
backward loop per (base, shape) pair; its rows are the catalogue's ``kernel`` ids
(:mod:`lightning_gaaf.activations.catalog`), its columns the shapes' ``kernel`` ids. It is compiled
once per machine with the system C compiler (``$CC``, else ``cc``/``gcc``/``clang``) as
``-O3 -march=native -fopenmp`` into a cache folder (``$GAAF_CACHE_DIR``, else
``$XDG_CACHE_HOME/lightning_gaaf``, else ``~/.cache/lightning_gaaf``; a temporary folder when that is
not writable), keyed by the source, the flags, the compiler and the CPU.

The build is safe to start from many processes at once (DDP ranks): a file lock lets one process
compile while the others wait and then load its result. A flag set that failed to compile is
remembered in the cache (``*.failed``), so new processes do not try it again. The kernels are used
by the ``auto`` and ``native`` backends (:mod:`lightning_gaaf.activations.backends`); where no
compiler works they warn once and GAAF uses ``torch.compile`` / eager kernels instead.
"""

from __future__ import annotations

import contextlib
import ctypes
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
import threading
import warnings
from collections.abc import Iterator
from importlib import resources
from pathlib import Path

import torch
from torch import Tensor

__all__ = [
    "NativeKernels",
    "cache_dir",
    "cpuinfo_field",
    "load_library",
    "loaded_openmp_runtimes",
    "native_enabled",
    "table_size",
]

_ABI_VERSION = 2
_SOURCE = "gaaf_kernels.c"
_LOCK = threading.Lock()
_LIBRARY: ctypes.CDLL | None = None
_LOAD_FAILED = False
_P = ctypes.c_void_p


def native_enabled() -> bool:
    """Whether the backend in force may use the native kernels (``auto`` or ``native``)."""
    from lightning_gaaf.activations.backends import get_backend

    return get_backend() in ("auto", "native")


def _writable(path: Path) -> bool:
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError:
        return False
    return os.access(path, os.W_OK | os.X_OK)


def _configured_cache_dir() -> Path:
    if os.environ.get("GAAF_CACHE_DIR"):
        return Path(os.environ["GAAF_CACHE_DIR"])
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "lightning_gaaf"


def cache_dir() -> Path:
    """Where the compiled library is kept (``GAAF_CACHE_DIR`` overrides).

    When that folder cannot be created or written, a per-user folder in the temporary directory is
    used instead (warned): the fast path is not lost to a read-only home.
    """
    wanted = _configured_cache_dir()
    if _writable(wanted):
        return wanted
    uid = os.getuid() if hasattr(os, "getuid") else None
    fallback = Path(tempfile.gettempdir()) / f"lightning_gaaf-{uid if uid is not None else 'user'}"
    fallback.mkdir(mode=0o700, exist_ok=True)
    if uid is not None and fallback.stat().st_uid != uid:  # never load a library someone else placed
        raise RuntimeError(f"cache folder {wanted} is not writable and {fallback} belongs to another user")
    warnings.warn(
        f"GAAF: cache folder {wanted} is not writable; building the native kernels in {fallback}",
        RuntimeWarning,
        stacklevel=3,
    )
    return fallback


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


@contextlib.contextmanager
def _file_lock(path: Path) -> Iterator[None]:
    """An exclusive lock on ``path`` across processes (POSIX ``flock``; a no-op elsewhere)."""
    try:
        import fcntl
    except ImportError:  # Windows: concurrent builds stay harmless thanks to the atomic rename
        yield
        return
    with open(path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _build(source: str, cc: list[str]) -> Path:
    """Compile ``source`` into the cache (once per source/flags/compiler/CPU) and return its path.

    One process compiles at a time (a file lock per build key); the others then find the result.
    A flag set that fails is remembered next to it (``.failed``, with the compiler's message) and
    not tried again by later processes.
    """
    machine = "\0".join([source, " ".join(cc), _compiler_version(cc), _cpu_signature()])
    folder = cache_dir()
    folder.mkdir(parents=True, exist_ok=True)
    errors = []
    for flags in _flag_sets():
        key = hashlib.sha256(f"{machine}\0{' '.join(flags)}".encode()).hexdigest()[:16]
        target = folder / f"gaaf_kernels_{key}.so"
        failed = target.with_suffix(".failed")
        if target.exists():
            return target
        if failed.exists():
            errors.append(f"{' '.join(flags)}: failed before ({failed})")
            continue
        with _file_lock(target.with_suffix(".lock")):
            if target.exists():  # another process built it while we waited
                return target
            if failed.exists():
                errors.append(f"{' '.join(flags)}: failed before ({failed})")
                continue
            with tempfile.TemporaryDirectory(dir=folder) as tmp:
                src = Path(tmp) / _SOURCE
                src.write_text(source)
                out = Path(tmp) / target.name
                proc = subprocess.run(
                    [*cc, *flags, str(src), "-o", str(out), "-lm"], capture_output=True, text=True
                )
                if proc.returncode == 0:
                    os.replace(out, target)  # atomic: readers never see a half-written library
                    return target
            message = proc.stderr.strip()[-300:]
            failed.write_text(f"{' '.join([*cc, *flags])}\n{message}\n")
            errors.append(f"{' '.join(flags)}: {message}")
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
            runtimes = loaded_openmp_runtimes()
            if len(runtimes) > 1:  # two OpenMP pools fight over the cores (or crash at exit)
                warnings.warn(
                    f"GAAF: {len(runtimes)} OpenMP runtimes are loaded ({', '.join(runtimes)}); "
                    "set CC to the compiler torch was built with, or GAAF_BACKEND=compile",
                    RuntimeWarning,
                    stacklevel=2,
                )
            _LIBRARY = lib
        except Exception as err:  # no compiler, foreign platform...
            _LOAD_FAILED = True
            warnings.warn(
                f"GAAF: native kernels unavailable ({type(err).__name__}: {str(err)[:300]}); "
                "using torch.compile / eager kernels instead (GAAF_BACKEND=compile skips this attempt)",
                RuntimeWarning,
                stacklevel=2,
            )
    return _LIBRARY


def table_size() -> tuple[int, int]:
    """(rows, columns) of the library's kernel table: catalogue kernel ids and shape kernel ids."""
    lib = load_library()
    if lib is None:
        return (0, 0)
    return (lib.gaaf_table_rows(), lib.gaaf_table_columns())


_OPENMP_NAMES = ("libgomp", "libiomp", "libomp")


def loaded_openmp_runtimes() -> list[str]:
    """Distinct OpenMP runtime files mapped into this process (Linux ``/proc/self/maps``).

    Two runtimes in one process (torch's and another) fight over threads or crash; the kernels are
    built with ``-fopenmp`` and must resolve to the runtime torch already loaded.
    """
    found: set[str] = set()
    try:
        with open("/proc/self/maps") as maps:
            for line in maps:
                path = line.split()[-1] if len(line.split()) >= 6 else ""
                if any(os.path.basename(path).startswith(n) for n in _OPENMP_NAMES):
                    found.add(os.path.realpath(path))
    except OSError:
        return []
    return sorted(found)


class NativeKernels:
    """Forward/backward of one (base, shape, K) through the compiled C loops.

    ``base_id`` / ``shape_id`` are the catalogue's and the shape's ``kernel`` ids; each passes the
    two floats its kernel reads (``kernel_params``).
    """

    def __init__(
        self,
        base_id: int,
        base_params: tuple[float, float],
        shape_id: int,
        shape_params: tuple[float, float],
        K: float,
        inv_k: float,
    ) -> None:
        self.base_id, self.shape_id = base_id, shape_id
        # Kept alive with the instance: the C side reads it on every call.
        self._params = torch.tensor([*base_params, *shape_params, K, inv_k, 0.0, 0.0], dtype=torch.float32)
        self._params_ptr = self._params.data_ptr()

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
