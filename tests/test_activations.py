"""The GAAF math: gradients, forward bound, dtypes, special values, saved memory, errors."""

import math

import _native_helpers
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from lightning_gaaf import GAAF, gaaf
from lightning_gaaf.activations import (
    CATALOG,
    Gauss,
    ShiftedSigmoid,
    activation_from_name,
    make_shape,
    sawtooth,
    use_backend,
)
from lightning_gaaf.activations.backends import compiled as compiled_backend
from lightning_gaaf.activations.backends import native

K = 10_000.0

# The session's kernel build (tests/_native_helpers.py), for the tests that run the native kernels.
native_build = _native_helpers.native_build
native_library = _native_helpers.native_library

BASES = {
    "tanh": lambda: nn.Tanh(),
    "sigmoid": lambda: nn.Sigmoid(),
    "relu": lambda: nn.ReLU(),
    "leaky_relu": lambda: nn.LeakyReLU(0.2),
    "elu": lambda: nn.ELU(0.7),
    "gelu": lambda: nn.GELU(),
    "gelu_tanh": lambda: nn.GELU(approximate="tanh"),
    "silu": lambda: nn.SiLU(),
    "hardtanh": lambda: nn.Hardtanh(-2.0, 1.5),
    "relu6": lambda: nn.ReLU6(),
    "softplus": lambda: nn.Softplus(beta=2.0, threshold=5.0),
    "softsign": lambda: nn.Softsign(),
    "hardsigmoid": lambda: nn.Hardsigmoid(),
    "quick_gelu": lambda: activation_from_name("quick_gelu"),
}
SHAPES = {
    "gauss": lambda: Gauss(c=2.0),
    "shifted_sigmoid": lambda: ShiftedSigmoid(a=2.0, b=0.5),
    "one": lambda: make_shape("one"),
    "callable": lambda: make_shape(lambda x: 1.0 / (1.0 + x * x)),
}


def tooth_centres(n: int = 48, lo: float = -4.0, hi: float = 4.0) -> torch.Tensor:
    """Points (m + 0.5)/K, far (in units of gradcheck's eps) from the sawtooth's jumps."""
    m = torch.linspace(lo * K, hi * K, n, dtype=torch.float64).round()
    return ((m + 0.5) / K).requires_grad_(True)


def naive(x: torch.Tensor, base: nn.Module, shape) -> torch.Tensor:
    """The paper's formula written with plain autograd ops."""
    g = (x * K - torch.floor(x * K) - 0.5) / K
    return base(x) + g * shape(x)


def test_every_catalogue_activation_is_checked_here():
    assert set(BASES) == set(CATALOG)


@pytest.mark.parametrize("shape_name", sorted(SHAPES))
@pytest.mark.parametrize("base_name", sorted(BASES))
def test_gradcheck_and_equal_to_naive_autograd(base_name, shape_name):
    base, shape = BASES[base_name](), SHAPES[shape_name]()
    module = GAAF(base, shape=shape, K=K)
    assert module.fused, "every listed base has an analytic derivative"
    x = tooth_centres()
    assert torch.autograd.gradcheck(module, (x,), eps=1e-7, atol=1e-6)
    (grad,) = torch.autograd.grad(module(x).sum(), x)
    (expected,) = torch.autograd.grad(naive(x, base, shape).sum(), x)
    # torch's own hardsigmoid backward multiplies by a float32 1/6 even in float64 (rel. 2e-8)
    tol = 5e-8 if base_name == "hardsigmoid" else 1e-9
    torch.testing.assert_close(grad, expected, rtol=tol, atol=tol)
    torch.testing.assert_close(module(x), naive(x, base, shape), rtol=0, atol=1e-12)


@pytest.mark.parametrize("shape_name", ["gauss", "callable"])
def test_generic_path_for_other_elementwise_modules(shape_name):
    base, shape = nn.Mish(), SHAPES[shape_name]()  # not in the catalogue
    module = GAAF(base, shape=shape)
    assert not module.fused
    x = tooth_centres()
    assert torch.autograd.gradcheck(module, (x,), eps=1e-7, atol=1e-6)
    (grad,) = torch.autograd.grad(module(x).sum(), x)
    (expected,) = torch.autograd.grad(naive(x, base, shape).sum(), x)
    torch.testing.assert_close(grad, expected)


def test_backward_adds_shape_to_base_derivative():
    x = torch.tensor([-3.0, -1.0, 0.0, 0.3, 2.0, 6.0], dtype=torch.float64, requires_grad=True)
    (grad,) = torch.autograd.grad(GAAF(nn.Tanh())(x).sum(), x)
    xd = x.detach()
    phi_prime = 1 - torch.tanh(xd) ** 2
    s = torch.exp(-(xd**2) / 3.0)
    # g*s' is below 0.5/K * max|s'| ~ 4e-5: the extra gradient is s itself.
    torch.testing.assert_close(grad, phi_prime + s, rtol=0, atol=5e-5)
    assert grad[0] > 5 * phi_prime[0], "in saturation (tanh'(-3) ~ 0.01) the GAAF term dominates"


def test_exact_mode_forward_is_bit_identical_and_backward_is_phi_prime_plus_s():
    x = torch.randn(1000, dtype=torch.float32) * 4
    x.requires_grad_(True)
    for base, s_fn, d_fn in [
        (nn.Tanh(), lambda t: torch.exp(-t * t / 3), lambda t: 1 - torch.tanh(t) ** 2),
        (nn.ReLU(), lambda t: torch.sigmoid(t + 1), lambda t: (t > 0).float()),
    ]:
        module = GAAF(base, K=None)
        y = module(x)
        assert torch.equal(y, base(x))
        (grad,) = torch.autograd.grad(y.sum(), x)
        torch.testing.assert_close(grad, d_fn(x.detach()) + s_fn(x.detach()))


def test_sawtooth_bound_for_all_finite_inputs():
    x = torch.cat(
        [
            torch.randn(100_000) * 10,
            torch.tensor([1e6, -1e6, 1e-12, -1e-12, 0.0, 3.4e30, -3.4e30, 1e38, -1e38]),
            torch.linspace(-1e6, 1e6, 10_001),
        ]
    )
    for dtype in (torch.float32, torch.float64, torch.float16, torch.bfloat16):
        g = sawtooth(x.to(dtype), K)
        assert g.dtype == torch.promote_types(dtype, torch.float32)
        assert torch.isfinite(g).all()
        assert g.abs().max().item() <= 0.5 / K, dtype
    # Not a constant: the tooth really rises with slope 1 inside one period.
    xs = torch.tensor([0.10001, 0.100015, 0.10002], dtype=torch.float64)
    g = sawtooth(xs, K)
    torch.testing.assert_close(g[1] - g[0], xs[1] - xs[0], rtol=1e-6, atol=0)


@pytest.mark.parametrize("base_name", ["tanh", "relu", "sigmoid", "gelu"])
def test_forward_moves_by_at_most_half_over_k_times_shape(base_name):
    """The eager reference path; the native kernels' bound (phi in float32 polynomials): test_native.py."""
    base = BASES[base_name]()
    module = GAAF(base)
    x = torch.randn(50_000, generator=torch.Generator().manual_seed(0)) * 5
    phi = base(x)
    with use_backend("eager"):
        diff = (module(x) - phi).abs()
    # per element: the GAAF term plus float32 rounding of phi (two ulps)
    bound = 0.5 / K * module.shape(x).abs() + 2 * torch.finfo(torch.float32).eps * phi.abs().clamp(min=1e-3)
    assert diff.max() > 0
    assert (diff <= bound).all()


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_inputs(dtype):
    x = (torch.randn(4096) * 3).to(dtype).requires_grad_(True)
    module = GAAF(nn.Tanh())
    y = module(x)
    assert y.dtype == dtype
    phi = torch.tanh(x.detach())
    rounding = torch.finfo(dtype).eps  # |tanh| <= 1: one ulp of phi
    assert (y.detach().float() - phi.float()).abs().max().item() <= 0.5 / K + rounding
    (grad,) = torch.autograd.grad(y.float().sum(), x)
    assert grad.dtype == dtype and torch.isfinite(grad).all()
    xf = x.detach().float()
    expected = 1 - torch.tanh(xf) ** 2 + torch.exp(-xf * xf / 3)
    torch.testing.assert_close(grad.float(), expected, rtol=2e-2, atol=2e-2)


def test_autocast_bf16_on_cpu_keeps_gradients_finite():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(32, 64), GAAF(nn.Tanh()), nn.Linear(64, 10), GAAF(nn.ReLU()))
    x = torch.randn(16, 32)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(x)
        loss = out.float().square().mean()
    assert out.dtype == torch.bfloat16
    loss.backward()
    for p in model.parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all()
        assert p.grad.abs().sum() > 0


def test_nan_propagates_and_infinities_give_what_phi_gives():
    x = torch.tensor([float("nan"), float("inf"), float("-inf"), 1e36, -1e36, 0.5])
    for base in (nn.Tanh(), nn.ReLU(), nn.Sigmoid(), nn.ELU(), nn.Softplus()):
        y = GAAF(base)(x)
        ref = base(x)
        assert torch.isnan(y[0]), base
        torch.testing.assert_close(y[1:5], ref[1:5], rtol=0, atol=0)
        assert abs(y[5] - ref[5]) <= 0.5 / K
    xg = x[1:].clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(GAAF(nn.Tanh())(xg).sum(), xg)
    assert torch.isfinite(grad).all()
    torch.testing.assert_close(grad[:4], torch.zeros(4))


def test_never_in_place_even_for_inplace_relu():
    base = nn.ReLU(inplace=True)
    module = GAAF(base)
    x = torch.randn(100)
    before = x.clone()
    y = module(x)
    assert torch.equal(x, before)
    assert (y < 0).any() or (y >= 0).all()  # a new tensor with GAAF values
    assert y.data_ptr() != x.data_ptr()
    assert module.base is base and base.inplace, "the original module is kept for strip_gaaf"


def _saved_bytes(fn, x: torch.Tensor) -> int:
    total = 0

    def pack(t):
        nonlocal total
        total += t.nelement() * t.element_size()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn(x)
    return total


@pytest.mark.parametrize("native_kernels", [False, True])
@pytest.mark.parametrize("base_name", ["tanh", "relu", "gelu", "softplus"])
def test_fused_function_saves_only_its_input(base_name, native_kernels, request):
    if native_kernels:
        request.getfixturevalue("native_library")
    base = BASES[base_name]()
    x = torch.randn(256, 512, requires_grad=True)
    with use_backend("auto" if native_kernels else "eager"):  # auto: native C kernels for tanh and relu
        assert _saved_bytes(GAAF(base), x) == x.nbytes
    assert _saved_bytes(GAAF(base, K=None), x) == x.nbytes
    assert _saved_bytes(lambda t: naive(t, base, Gauss()), x) > 2 * x.nbytes


def test_no_graph_is_built_without_grad():
    x = torch.randn(10, requires_grad=True)
    with torch.no_grad():
        y = GAAF(nn.Tanh())(x)
    assert y.grad_fn is None
    assert _saved_bytes(GAAF(nn.Tanh()), torch.randn(10)) == 0


def test_functional_form_matches_module_form():
    x = torch.randn(1000)
    torch.testing.assert_close(gaaf(x, "tanh"), GAAF(nn.Tanh())(x), rtol=0, atol=0)
    torch.testing.assert_close(
        gaaf(x, nn.LeakyReLU(0.1), shape="shifted_sigmoid", a=3.0, b=0.0),
        GAAF(nn.LeakyReLU(0.1), shape=ShiftedSigmoid(a=3.0, b=0.0))(x),
        rtol=0,
        atol=0,
    )


def test_default_shapes_and_repr():
    assert repr(GAAF(nn.Tanh())) == "GAAF(Tanh, shape=gauss(c=3.0), K=10000)"
    assert repr(GAAF("relu", K=None)) == "GAAF(ReLU, shape=shifted_sigmoid(a=1.0, b=1.0), K=None)"
    assert repr(GAAF(nn.LeakyReLU(0.2), shape="gauss", c=2)).startswith(
        "GAAF(LeakyReLU(negative_slope=0.2), shape=gauss(c=2.0)"
    )
    tanh_like = {"tanh", "sigmoid", "hardtanh", "softsign", "hardsigmoid"}
    for name in CATALOG:
        module = GAAF(name)
        assert module.fused
        assert type(module.shape) is (Gauss if name in tanh_like else ShiftedSigmoid), name
    assert type(GAAF(nn.Mish()).shape) is ShiftedSigmoid  # not in the catalogue
    # Shape values the docs promise.
    assert Gauss()(torch.tensor(0.0)) == 1 and math.isclose(
        Gauss()(torch.tensor(3.0)).item(), math.exp(-3.0), rel_tol=1e-6
    )
    assert math.isclose(ShiftedSigmoid()(torch.tensor(-1.0)).item(), 0.5)


def test_clear_errors():
    with pytest.raises(ValueError, match="K must be a positive"):
        GAAF(nn.Tanh(), K=0)
    with pytest.raises(ValueError, match="K must be a positive"):
        GAAF(nn.Tanh(), K=-5)
    with pytest.raises(ValueError, match="K must be a positive"):
        gaaf(torch.zeros(1), K=float("nan"))
    with pytest.raises(ValueError, match=r"unknown shape 'gaus'.*gauss, one, shifted_sigmoid"):
        GAAF(nn.Tanh(), shape="gaus")
    with pytest.raises(ValueError, match="bad parameters"):
        GAAF(nn.Tanh(), shape="gauss", width=2)
    with pytest.raises(ValueError, match="c must be > 0"):
        Gauss(c=0)
    with pytest.raises(ValueError, match=r"unknown activation 'tanhh'.*tanh"):
        activation_from_name("tanhh")
    with pytest.raises(ValueError, match="already a GAAF"):
        GAAF(GAAF(nn.Tanh()))


def test_base_parameters_keep_their_state_dict_keys():
    model = nn.Sequential(nn.Linear(3, 3), nn.PReLU(3))
    keys = list(model.state_dict())
    model[1] = GAAF(model[1], shape="gauss")
    assert list(model.state_dict()) == keys
    other = nn.Sequential(nn.Linear(3, 3), GAAF(nn.PReLU(3), shape="gauss"))
    other.load_state_dict(model.state_dict())
    torch.testing.assert_close(other[1].base.weight, model[1].base.weight)


COMPILED_CASES = ["tanh", "relu", "sigmoid", "silu", "gelu", "elu"]


@pytest.mark.parametrize("name", COMPILED_CASES)
def test_compiled_kernels_match_eager(name):
    """The torch.compile path computes what the eager path computes, specials included."""
    x = torch.cat(
        [torch.randn(3000) * 3, torch.tensor([float("nan"), float("inf"), -float("inf"), 1e30, -90.0])]
    )
    x.requires_grad_(True)
    weights = torch.linspace(0.5, 1.5, x.numel())
    results = {}
    specials = ~torch.isfinite(x.detach())
    for compiled in (False, True):  # torch.compile's kernels (the native ones: tests/test_native.py)
        with use_backend("compile" if compiled else "eager"):
            module = GAAF(name)
            y = module(x)
            (grad,) = torch.autograd.grad((y * weights).nan_to_num().sum(), x)
            base = torch.compile(module.base) if compiled else module.base
            results[compiled] = (y.detach(), grad, base(x.detach()))
    # At +-inf and NaN each path gives what phi gives in the same mode. torch's own phi may differ
    # between modes there (eager vectorised F.gelu(+inf) is NaN, compiled is +inf), so the two
    # paths are compared with each other only on finite inputs.
    for y, _, phi in results.values():
        torch.testing.assert_close(y[specials], phi[specials], rtol=0, atol=0, equal_nan=True)
    # On finite inputs the GAAF term y - phi (amplitude 0.5/K = 5e-5) agrees across modes to the
    # rounding of y and phi (|y| up to ~10, ulp ~1e-6: silu 9.5e-7 seen); phi itself may differ by
    # torch's own compiled-vs-eager rounding (erf in gelu: 1.2e-6 seen on AMD Zen 5).
    finite = ~specials
    (y_c, _, phi_c), (y_e, _, phi_e) = results[True], results[False]
    torch.testing.assert_close(phi_c[finite], phi_e[finite], rtol=1e-5, atol=5e-6)
    torch.testing.assert_close(y_c[finite] - phi_c[finite], y_e[finite] - phi_e[finite], rtol=0, atol=4e-6)
    torch.testing.assert_close(results[True][1], results[False][1], rtol=1e-5, atol=1e-5, equal_nan=True)


@pytest.mark.parametrize(
    ("device", "capability", "vendor", "user_simdlen", "expected"),
    [
        ("cpu", "AVX512", "GenuineIntel", None, {"cpp.simdlen": 256}),  # 512-bit builds ran slower there
        ("cpu", "AVX512", "AuthenticAMD", None, None),  # inductor's own 512: faster on Zen 5
        ("cpu", "AVX512", "GenuineIntel", 512, None),  # the user's setting wins
        ("cpu", "AVX2", "GenuineIntel", None, None),
        ("cuda", "AVX512", "GenuineIntel", None, None),
    ],
)
def test_inductor_vector_width_policy(monkeypatch, device, capability, vendor, user_simdlen, expected):
    from torch._inductor import config as inductor_config

    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: capability)
    monkeypatch.setattr(native, "cpuinfo_field", lambda key: vendor if key == "vendor_id" else "")
    # config.patch restores the entry on exit; monkeypatch.setattr deleted it on undo, and every later
    # torch.compile in the session then failed on the missing cpp.simdlen.
    with inductor_config.patch({"cpp.simdlen": user_simdlen}):
        assert compiled_backend.inductor_options(device) == expected
    assert hasattr(inductor_config.cpp, "simdlen")


def test_compile_failure_falls_back_to_eager(monkeypatch):
    def broken_compile(*args, **kwargs):
        def run(*a, **k):
            raise RuntimeError("no C++ compiler")

        return run

    monkeypatch.setattr(torch, "compile", broken_compile)
    with use_backend("compile"):  # the torch.compile path itself
        x = torch.randn(100, generator=torch.Generator().manual_seed(0))
        module = GAAF(nn.Tanh(), shape="gauss", c=1.2345)  # fresh kernel cache entry
        with pytest.warns(RuntimeWarning, match="torch.compile failed"):
            y = module(x)
        # float32 on both sides: x*K must round the same way, or g jumps by 1/K at a tooth's edge
        torch.testing.assert_close(y, naive(x, nn.Tanh(), Gauss(c=1.2345)))


def test_gaaf_changes_training_direction_only_slightly_in_forward():
    """F.tanh and GAAF(tanh) give the same predictions but different weight gradients."""
    torch.manual_seed(0)
    lin = nn.Linear(20, 20)
    with torch.no_grad():
        lin.weight.mul_(5)  # push nets into saturation
    x = torch.randn(64, 20)
    out_plain = torch.tanh(lin(x))
    out_gaaf = GAAF(nn.Tanh())(lin(x))
    assert (out_plain - out_gaaf).abs().max() <= 0.5 / K
    (g_plain,) = torch.autograd.grad(out_plain.sum(), lin.weight)
    (g_gaaf,) = torch.autograd.grad(out_gaaf.sum(), lin.weight)
    assert g_gaaf.abs().mean() > 1.2 * g_plain.abs().mean()
    assert F.cosine_similarity(g_plain.flatten(), g_gaaf.flatten(), dim=0) < 0.999


def test_docs_table_is_the_catalogue():
    """docs/activations.md shows the catalogue; regenerate it with catalog.markdown_table()."""
    from pathlib import Path

    from lightning_gaaf.activations.catalog import markdown_table

    docs = (Path(__file__).parents[1] / "docs" / "activations.md").read_text()
    assert markdown_table() in docs, "docs/activations.md: paste catalog.markdown_table() between its markers"


def test_activation_classes_are_the_catalogue_classes():
    from lightning_gaaf.activations import activation_classes
    from lightning_gaaf.activations.derivatives import QuickGELU

    classes = activation_classes()
    assert {nn.Tanh, nn.Sigmoid, nn.GELU, nn.ReLU6, nn.Hardtanh, QuickGELU} <= set(classes)
    # a subclass is listed before its base class, so a lookup finds the specific entry first
    assert classes.index(nn.ReLU6) < classes.index(nn.Hardtanh)
