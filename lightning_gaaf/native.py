"""Old import path of the native kernels: see :mod:`lightning_gaaf.activations.backends.native`."""

from lightning_gaaf.activations.backends.native import (  # noqa: F401
    NativeKernels,
    cache_dir,
    cpuinfo_field,
    load_library,
    loaded_openmp_runtimes,
    native_enabled,
    set_native,
)
