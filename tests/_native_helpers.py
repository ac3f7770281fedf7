"""The native kernels built once per test session, into one cache folder every test reuses.

A cold build of the real kernel source costs tens of seconds on a loaded machine; the session pays
it once (``native_build``), and the process loads the library from that cache (``native_library``)
unless an earlier test already loaded it. Import the fixtures into a test module to use them.
"""

from __future__ import annotations

import ctypes
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import pytest

from lightning_gaaf.activations.backends import native


@dataclass(frozen=True)
class NativeBuild:
    """The session's cold build: its cache folder, the library file and what was in the folder before."""

    cache: Path
    library: Path
    files_before: tuple[str, ...]
    source: str
    compiler: tuple[str, ...]


def kernel_source() -> str:
    """The C source the package ships (what ``load_library`` compiles)."""
    return resources.files("lightning_gaaf").joinpath("csrc", native._SOURCE).read_text()


@pytest.fixture(scope="session")
def native_build(tmp_path_factory: pytest.TempPathFactory) -> NativeBuild:
    """The real kernels compiled into a fresh session cache folder (the session's only cold build)."""
    cache = tmp_path_factory.mktemp("gaaf_cache")
    files_before = tuple(sorted(p.name for p in cache.iterdir()))
    cc = native._compiler()
    if cc is None:
        pytest.fail("no C compiler found (a C compiler is part of the test machine)")
    source = kernel_source()
    with pytest.MonkeyPatch.context() as env:
        env.setenv("GAAF_CACHE_DIR", str(cache))
        library = native._build(source, cc)
    return NativeBuild(cache, library, files_before, source, tuple(cc))


@pytest.fixture(scope="session")
def native_library(native_build: NativeBuild) -> ctypes.CDLL:
    """The kernels loaded in this process, from the session cache unless a test loaded them already."""
    with pytest.MonkeyPatch.context() as env:
        env.setenv("GAAF_CACHE_DIR", str(native_build.cache))
        library = native.load_library()
    if library is None:
        pytest.fail("the native kernels did not load (a C compiler is part of the test machine)")
    return library
