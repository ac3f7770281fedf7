"""The native C kernels: same values and gradients as the eager reference, specials, threads, fallback."""

import ctypes
import math
import multiprocessing
import os
import subprocess
import tempfile
import warnings
from pathlib import Path

import _native_helpers
import pytest
import torch
from torch import nn

from lightning_gaaf import GAAF
from lightning_gaaf.activations import CATALOG, SHAPES, Gauss, One, ShiftedSigmoid, sawtooth, use_backend
from lightning_gaaf.activations.backends import native

K = 10_000.0

KERNEL_BASES = {
    "tanh": lambda: nn.Tanh(),
    "sigmoid": lambda: nn.Sigmoid(),
    "relu": lambda: nn.ReLU(),
    "leaky_relu": lambda: nn.LeakyReLU(0.2),
    "elu": lambda: nn.ELU(0.7),
    "silu": lambda: nn.SiLU(),
    "hardtanh": lambda: nn.Hardtanh(-2.0, 1.5),
    "relu6": lambda: nn.ReLU6(),
}
KERNEL_SHAPES = {
    "gauss": lambda: Gauss(c=2.0),
    "shifted_sigmoid": lambda: ShiftedSigmoid(a=2.0, b=0.5),
    "one": lambda: One(),
}
# The session's kernel build, shared with the other files that run the native kernels.
native_build = _native_helpers.native_build
native_library = _native_helpers.native_library

SPECIALS = [float("nan"), float("inf"), -float("inf"), 1e30, -1e30, 1e6, -90.0, 0.0, -0.0, 1e-30]


@pytest.fixture
def use_native(native_library):
    """The native backend, with the session's library (built once per session). Seeded."""
    torch.manual_seed(0)
    with use_backend("native"):
        assert native.load_library() is native_library
        yield


def test_cold_build_compiles_the_kernels_into_the_cache(native_build, monkeypatch):
    """The session's one cold build: an empty cache folder gets one library; the next build reuses it."""
    assert native_build.files_before == ()
    assert native_build.library.parent == native_build.cache
    assert sorted(native_build.cache.glob("*.so")) == [native_build.library]
    lib = ctypes.CDLL(str(native_build.library))
    assert lib.gaaf_abi_version() == native._ABI_VERSION
    assert (lib.gaaf_table_rows(), lib.gaaf_table_columns()) == native.table_size()
    compiles = []
    real_run = native.subprocess.run

    def counting_run(cmd, *args, **kwargs):
        if "--version" not in cmd:
            compiles.append(cmd)
        return real_run(cmd, *args, **kwargs)

    monkeypatch.setattr(native.subprocess, "run", counting_run)
    monkeypatch.setenv("GAAF_CACHE_DIR", str(native_build.cache))
    assert native._build(native_build.source, list(native_build.compiler)) == native_build.library
    assert compiles == []


def _eager(module, x, weights):
    with use_backend("eager"):
        return _values_and_grad(module, x, weights)


def _values_and_grad(module, x, weights):
    x = x.detach().requires_grad_(True)
    y = module(x)
    (grad,) = torch.autograd.grad((y * weights).nan_to_num().sum(), x)
    return y.detach(), grad


def test_catalogue_kernel_ids_fill_the_library_table(use_native):
    """Every C row is some catalogue entry's kernel, every column some shape's: no stale ids."""
    rows, columns = native.table_size()
    with_kernel = {name for name, spec in CATALOG.items() if spec.kernel is not None}
    assert with_kernel == set(KERNEL_BASES)
    assert {CATALOG[name].kernel for name in with_kernel} == set(range(rows))
    assert {cls.kernel for cls in SHAPES.values() if cls.kernel is not None} == set(range(columns))
    assert set(KERNEL_SHAPES) == {name for name, cls in SHAPES.items() if cls.kernel is not None}


@pytest.mark.parametrize("shape_name", list(KERNEL_SHAPES))
@pytest.mark.parametrize("base_name", list(KERNEL_BASES))
def test_native_matches_eager(use_native, base_name, shape_name, monkeypatch):
    """Values and gradients as the eager torch math, NaN/inf/huge inputs and odd lengths included."""
    calls = []
    original = native.NativeKernels.forward
    monkeypatch.setattr(native.NativeKernels, "forward", lambda self, x: calls.append(1) or original(self, x))
    x = torch.cat([torch.randn(3001) * 4, torch.tensor(SPECIALS)])  # not a multiple of the vector width
    weights = torch.linspace(0.5, 1.5, x.numel())
    module = GAAF(KERNEL_BASES[base_name](), shape=KERNEL_SHAPES[shape_name]())
    y, grad = _values_and_grad(module, x, weights)
    assert calls, "the native kernel was not used"
    y_ref, grad_ref = _eager(module, x, weights)
    torch.testing.assert_close(y, y_ref, rtol=4e-6, atol=1e-6, equal_nan=True)
    torch.testing.assert_close(grad, grad_ref, rtol=1e-5, atol=1e-5, equal_nan=True)
    # NaN in gives NaN out (values and gradients), never masked
    nan_at = torch.isnan(x)
    assert torch.isnan(y[nan_at]).all() and torch.isnan(y_ref[nan_at]).all()


@pytest.mark.parametrize("shape_name", list(KERNEL_SHAPES))
@pytest.mark.parametrize("base_name", list(KERNEL_BASES))
def test_native_gradcheck_inside_teeth(use_native, base_name, shape_name):
    """gradcheck of the native Function itself (float32, so a coarse K = 10 and eps = 1e-3).

    Points sit inside teeth, (n + 0.5 + d)/K with |d| <= 0.35: at least 0.015 away from every jump
    of g and from the kinks of relu / leaky_relu / hardtanh (all on multiples of 1/K), so finite
    differences see the smooth function whose derivative the backward kernel returns. g is up to
    0.035 there, so the g(x) s'(x) term is checked too (it vanishes only at the tooth centres).
    """
    k = 10.0
    offsets = torch.tensor([-0.35, -0.1, 0.2, 0.35]).repeat(20)
    x = ((torch.arange(-40, 40) + 0.5 + offsets) / k).float().requires_grad_(True)
    module = GAAF(KERNEL_BASES[base_name](), shape=KERNEL_SHAPES[shape_name](), K=k)
    assert module(x).dtype == torch.float32
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "not a double precision" input
        assert torch.autograd.gradcheck(module, (x,), eps=1e-3, atol=2e-3, rtol=2e-3)


def test_native_tanh_is_within_three_ulp(use_native):
    """The float32 tanh polynomial (phi's own rounding in the native path) against float64 tanh."""
    x = torch.cat([torch.linspace(-10, 10, 200_001), torch.randn(100_000) * 0.05])
    y = GAAF(nn.Tanh(), shape="one", K=1e30)(x)  # |g| <= 5e-31: y is tanh(x) to float32 precision
    exact = torch.tanh(x.double())
    ulps = (y.double() - exact).abs() / (torch.finfo(torch.float32).eps * exact.abs().clamp(min=1e-30))
    assert ulps.max() <= 3.0, ulps.max()
    assert (y.abs() <= 1).all()
    torch.testing.assert_close(y[x.abs() > 8], torch.sign(x[x.abs() > 8]), rtol=0, atol=0)


@pytest.mark.parametrize("base_name", ["tanh", "relu"])
def test_native_forward_bound(use_native, base_name):
    """|phi_new - phi| <= 0.5/K * |s| plus phi's own float32 rounding (at most 3 ulp, see above)."""
    base = KERNEL_BASES[base_name]()
    module = GAAF(base)
    x = torch.cat([torch.randn(50_000) * 5, torch.arange(-2000, 2000) / K, torch.tensor([1e6, -1e6])])
    phi = base(x.double())
    diff = (module(x).double() - phi).abs()
    eps = torch.finfo(torch.float32).eps
    # s and the product g*s are float32 too: a few ulp of the term on top of 0.5/K * |s|
    bound = 0.5 / K * module.shape(x.double()).abs() * (1 + 4 * eps) + 3 * eps * phi.abs()
    assert (diff <= bound).all()
    assert (diff[x.abs() < 3] > 0).float().mean() > 0.9  # the term is really there


def test_native_sawtooth_is_the_definition(use_native):
    """With s = 1 and relu, the GAAF term is g(x) itself, |g| <= 0.5/K, also where x*K is an integer."""
    x = -torch.cat([torch.rand(20_000) * 4, torch.arange(0, 500) / K])  # relu(x) = 0: y is g exactly
    g = GAAF(nn.ReLU(), shape="one")(x)
    assert g.abs().max() <= 0.5 / K
    torch.testing.assert_close(g, sawtooth(x), rtol=0, atol=0)
    big = torch.tensor([1e6, -1e6, 3e38, -3e38])  # x*K overflows for the last two: the term is dropped
    y_big = GAAF(nn.ReLU(), shape="one")(big)
    assert ((y_big - torch.relu(big)).abs() <= 0.5 / K + 0.5 * 0.0625).all()  # 0.0625 = ulp(1e6)
    assert torch.equal(y_big[2:], torch.relu(big[2:]))


def test_native_threads_split_gives_identical_bits(use_native):
    """A tensor big enough for several threads gives the same bits as one thread."""
    x = torch.randn(200_003) * 3
    grad_out = torch.randn_like(x)
    module = GAAF(nn.Tanh())
    threads = torch.get_num_threads()
    results = []
    try:
        for n in (1, 2):
            torch.set_num_threads(n)
            xr = x.clone().requires_grad_(True)
            y = module(xr)
            y.backward(grad_out)
            results.append((y.detach(), xr.grad))
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(results[0][0], results[1][0]) and torch.equal(results[0][1], results[1][1])


def test_native_keeps_shape_dtype_and_handles_views(use_native):
    x = torch.randn(64, 33).t()
    for dtype in (torch.float32, torch.bfloat16, torch.float16):
        xd = x.to(dtype).clone().requires_grad_(True)
        assert not xd.is_contiguous()
        y = GAAF(nn.ReLU())(xd)
        assert y.shape == x.shape and y.dtype == dtype
        y.sum().backward()
        assert xd.grad.shape == x.shape and xd.grad.dtype == dtype and torch.isfinite(xd.grad).all()
    empty = torch.empty(0, 5, requires_grad=True)
    out = GAAF(nn.Tanh())(empty)
    assert out.shape == (0, 5)
    out.sum().backward()
    assert empty.grad.shape == (0, 5)


def test_native_not_used_for_float64_or_when_switched_off(use_native, monkeypatch):
    """The backend switch is read before any kernel runs: one element is enough to see it (and the
    compiled kernels leave single elements to eager math, so nothing is compiled here)."""
    calls = []
    original = native.NativeKernels.forward
    monkeypatch.setattr(native.NativeKernels, "forward", lambda self, x: calls.append(1) or original(self, x))
    GAAF(nn.Tanh())(torch.randn(1, dtype=torch.float64))
    for backend in ("compile", "eager"):
        with use_backend(backend):
            GAAF(nn.Tanh())(torch.randn(1))
    assert calls == []
    GAAF(nn.Tanh())(torch.randn(1))  # the same float32 call on the native backend does use them
    assert calls == [1]


def test_library_is_cached_per_source(tmp_path, monkeypatch):
    monkeypatch.setenv("GAAF_CACHE_DIR", str(tmp_path))
    source = "int gaaf_abi_version(void) { return 42; }\n"
    cc = native._compiler()
    first = native._build(source, cc)
    assert first.parent == tmp_path and first.exists()
    assert ctypes.CDLL(str(first)).gaaf_abi_version() == 42
    compiles = []
    real_run = native.subprocess.run

    def failing_compiler(cmd, *args, **kwargs):
        if "--version" in cmd:
            return real_run(cmd, *args, **kwargs)
        compiles.append(cmd)
        return subprocess.CompletedProcess(cmd, 1, "", "cc: fatal error: simulated")

    monkeypatch.setattr(native.subprocess, "run", failing_compiler)
    assert native._build(source, cc) == first and compiles == []  # cached: not compiled again
    with pytest.raises(RuntimeError, match="C compilation failed.*simulated"):
        native._build(source + "/* changed */\n", cc)
    assert len(compiles) == len(native._flag_sets())  # every flag set tried, best first
    assert "-O3" in compiles[0] and list(tmp_path.glob("*.so")) == [first]
    failed = sorted(tmp_path.glob("*.failed"))
    assert len(failed) == len(native._flag_sets()) and "simulated" in failed[0].read_text()
    # A failure is remembered per flag set: the next process does not run the compiler again.
    with pytest.raises(RuntimeError, match="failed before"):
        native._build(source + "/* changed */\n", cc)
    assert len(compiles) == len(native._flag_sets())


def test_unwritable_cache_dir_falls_back_to_a_temporary_folder(monkeypatch, tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    monkeypatch.setenv("GAAF_CACHE_DIR", str(blocker / "cache"))
    with pytest.warns(RuntimeWarning, match="not writable"):
        folder = native.cache_dir()
    assert folder.parent == Path(tempfile.gettempdir())
    assert folder.is_dir() and os.access(folder, os.W_OK)


def _build_in_rank(source: str, result: str) -> None:
    """One DDP rank's build (a forked process: no imports to pay), its library path written to ``result``."""
    Path(result).write_text(str(native._build(source, native._compiler())))


def test_concurrent_builds_run_the_compiler_once(tmp_path, monkeypatch):
    """Two processes build into one fresh cache at once (DDP ranks): one compiles, both load its file."""
    log = tmp_path / "compiles.log"
    wrapper = tmp_path / "cc-wrapper"
    real_cc = native._compiler()
    wrapper.write_text(
        f'#!/bin/sh\ncase "$*" in *--version*) ;; *) echo build >> {log}; sleep 1;; esac\nexec {" ".join(real_cc)} "$@"\n'
    )
    wrapper.chmod(0o755)
    monkeypatch.setenv("GAAF_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("CC", str(wrapper))
    source = "int gaaf_abi_version(void) { return 7; }\n"  # the lock is per build, whatever the source
    fork = multiprocessing.get_context("fork")
    results = [tmp_path / f"rank{rank}.txt" for rank in range(2)]
    ranks = [fork.Process(target=_build_in_rank, args=(source, str(result))) for result in results]
    for rank in ranks:
        rank.start()
    for rank in ranks:
        rank.join(timeout=300)
    assert [rank.exitcode for rank in ranks] == [0, 0]
    libraries = {result.read_text() for result in results}
    assert len(libraries) == 1, libraries  # the same library file
    assert ctypes.CDLL(libraries.pop()).gaaf_abi_version() == 7
    assert log.read_text().count("build") == 1


def test_only_one_openmp_runtime_is_loaded(use_native):
    """The -fopenmp kernels must share torch's OpenMP runtime, not load a second one."""
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        GAAF(nn.Tanh())(torch.randn(200_000))  # a parallel region of the kernels has run
    finally:
        torch.set_num_threads(threads)
    runtimes = native.loaded_openmp_runtimes()
    assert len(runtimes) == 1, runtimes


def test_missing_compiler_falls_back_with_one_warning(monkeypatch, tmp_path):
    monkeypatch.setenv("GAAF_CACHE_DIR", str(tmp_path))
    monkeypatch.setenv("CC", str(tmp_path / "no-such-cc"))
    monkeypatch.setattr(native, "_LIBRARY", None)
    monkeypatch.setattr(native, "_LOAD_FAILED", False)
    with use_backend("native"):
        x = torch.randn(100)
        module = GAAF(nn.Tanh(), shape="gauss", c=2.5)
        with pytest.warns(RuntimeWarning, match="native kernels unavailable"):
            y = module(x)
        assert native.load_library() is None  # decided once per process, not retried per call
    with use_backend("eager"):
        torch.testing.assert_close(y, module(x), rtol=4e-6, atol=1e-6)


def test_cache_dir_follows_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("GAAF_CACHE_DIR", str(tmp_path / "a"))
    assert native.cache_dir() == tmp_path / "a"
    monkeypatch.delenv("GAAF_CACHE_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert native.cache_dir() == tmp_path / "xdg" / "lightning_gaaf"


def test_exp_and_expm1_of_the_kernels_through_elu(use_native):
    """ELU's negative side is alpha * expm1(x): accurate near 0 (no cancellation) and -> -alpha."""
    x = -torch.logspace(-7, 2, 2000)
    y = GAAF(nn.ELU(1.0), shape="one", K=1e30)(x)
    exact = torch.expm1(x.double())
    rel = ((y.double() - exact).abs() / exact.abs()).max()
    assert rel <= 4 * torch.finfo(torch.float32).eps, rel
    assert math.isclose(float(y[-1]), -1.0, rel_tol=0, abs_tol=0)


def test_training_with_native_kernels_follows_the_eager_path(use_native):
    """Ten SGD steps of a tanh MLP with GAAF: native and eager kernels give the same trajectory."""
    from lightning_gaaf import apply_gaaf

    def train() -> list[float]:
        torch.manual_seed(0)
        model = nn.Sequential(nn.Linear(20, 64), nn.Tanh(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 3))
        apply_gaaf(model)
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        x, y = torch.randn(256, 20) * 3, torch.randint(0, 3, (256,))
        losses = []
        for _ in range(10):
            opt.zero_grad()
            loss = nn.functional.cross_entropy(model(x), y)
            loss.backward()
            opt.step()
            losses.append(loss.item())
        return losses

    native_losses = train()
    with use_backend("eager"):
        eager_losses = train()
    assert native_losses[-1] < native_losses[0]
    torch.testing.assert_close(native_losses, eager_losses, rtol=1e-4, atol=1e-5)
