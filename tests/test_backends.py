"""The GAAF custom ops and the backend switch: opcheck, zero graph breaks, export, GAAF_BACKEND."""

from __future__ import annotations

import _native_helpers
import pytest
import torch
from torch import nn
from torch._dynamo.testing import CompileCounterWithBackend

from lightning_gaaf import GAAF
from lightning_gaaf.activations import backends, get_backend, set_backend, use_backend
from lightning_gaaf.activations.backends import native
from lightning_gaaf.activations.function import gaaf_backward, gaaf_forward

BACKENDS = ["eager", "compile", "native", "auto"]
# The model below has one layer per case: its compiled kernels are the ones opcheck compiled.
OP_CASES = [
    ("leaky_relu", [0.2], "shifted_sigmoid", [2.0, 0.5], 1e4),  # native kernel with parameters
    ("gelu", [], "one", [], 1e4),  # no native kernel: compile / eager
    ("", [], "gauss", [2.0], 1e4),  # the GAAF term alone (generic path)
]

# The session's kernel build (tests/_native_helpers.py): the native and auto backends load it.
native_library = _native_helpers.native_library
native_build = _native_helpers.native_build
pytestmark = pytest.mark.usefixtures("native_library")


@pytest.fixture(autouse=True, scope="module")
def _fresh_dynamo():
    """Dynamo starts and ends this file empty; in between the tests share the compiled kernels
    (each (base, shape, K) is compiled once per pass, whichever test runs it first)."""
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


@pytest.mark.parametrize("backend", ["eager", "compile", "native"])  # auto: native, else compile
@pytest.mark.parametrize("case", OP_CASES, ids=lambda c: c[0] or "term")
def test_opcheck_passes_for_every_backend(backend, case):
    x = torch.randn(4, 33, requires_grad=True)
    grad = torch.randn(4, 33)
    with use_backend(backend):
        torch.library.opcheck(gaaf_forward, (x, *case))
        torch.library.opcheck(gaaf_backward, (x.detach(), grad, *case))


def test_opcheck_exact_mode_and_float64():
    x = torch.randn(5, 7, dtype=torch.float64, requires_grad=True)
    torch.library.opcheck(gaaf_forward, (x, "relu", [], "shifted_sigmoid", [1.0, 1.0], None))
    torch.library.opcheck(gaaf_forward, (x, "tanh", [], "gauss", [3.0], 1e4))


def test_ops_agree_with_the_module_across_backends():
    x = torch.randn(1000) * 3
    reference = None
    for backend in BACKENDS:
        with use_backend(backend):
            y = gaaf_forward(x, "tanh", [], "gauss", [3.0], 1e4)
        if reference is None:
            reference = y
        torch.testing.assert_close(y, reference, rtol=4e-6, atol=1e-6)
    with use_backend("eager"):
        torch.testing.assert_close(GAAF(nn.Tanh())(x), reference, rtol=0, atol=0)


def _model() -> nn.Module:
    """One GAAF layer per OP_CASES entry, in the same (base, shape, K): the kernels are shared."""
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Linear(16, 32),
        GAAF(nn.LeakyReLU(0.2), shape="shifted_sigmoid", a=2.0, b=0.5),  # native kernel with parameters
        nn.Linear(32, 32),
        GAAF(nn.GELU(), shape="one"),  # no native kernel
        nn.Linear(32, 32),
        GAAF(nn.Mish(), shape="gauss", c=2.0),  # not in the catalogue: torch's Mish + the GAAF term op
        nn.Linear(32, 4),
    )


@pytest.mark.parametrize("backend", BACKENDS)
def test_torch_compile_has_no_graph_breaks_and_matches_eager(backend):
    """fullgraph=True fails on any graph break; the counter sees how many graphs dynamo made."""
    model = _model()
    x = torch.randn(8, 16)
    with use_backend(backend):
        graphs = CompileCounterWithBackend("inductor")
        compiled = torch.compile(model, backend=graphs, fullgraph=True)
        out = compiled(x)
        assert graphs.frame_count == 1
        out.square().sum().backward()
        grads = [p.grad.clone() for p in model.parameters()]
        model.zero_grad()
        expected = model(x)
        expected.square().sum().backward()
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-6)
    for g, p in zip(grads, model.parameters(), strict=True):
        torch.testing.assert_close(g, p.grad, rtol=1e-4, atol=1e-6)


def test_compiled_graphs_call_the_native_kernels(monkeypatch):
    """Inside torch.compile the op runs the backend in force: the native C loops for float32 CPU."""
    calls = []
    original_forward, original_backward = native.NativeKernels.forward, native.NativeKernels.backward
    monkeypatch.setattr(
        native.NativeKernels, "forward", lambda s, x: calls.append("f") or original_forward(s, x)
    )
    monkeypatch.setattr(
        native.NativeKernels, "backward", lambda s, x, g: calls.append("b") or original_backward(s, x, g)
    )
    model = nn.Sequential(nn.Linear(8, 8), GAAF(nn.Tanh()), nn.Linear(8, 2))
    with use_backend("auto"):
        assert native.load_library() is not None
        compiled = torch.compile(model, fullgraph=True)
        compiled(torch.randn(4, 8)).sum().backward()
    assert calls == ["f", "b"]


def test_torch_export_keeps_the_gaaf_op():
    model = nn.Sequential(nn.Linear(8, 8), GAAF(nn.Tanh()), nn.Linear(8, 2))
    exported = torch.export.export(model, (torch.randn(4, 8),))
    targets = {str(node.target) for node in exported.graph.nodes if node.op == "call_function"}
    assert "lightning_gaaf.gaaf_forward.default" in targets
    x = torch.randn(4, 8)  # export specialises on the example's batch size
    torch.testing.assert_close(exported.module()(x), model(x))


@pytest.fixture
def fresh_env(monkeypatch):
    """Environment switches are read once per process: re-read them inside the test, restore after."""
    monkeypatch.delenv("GAAF_BACKEND", raising=False)
    backends._env_backend.cache_clear()
    previous = backends._OVERRIDE
    set_backend(None)
    yield monkeypatch
    backends._OVERRIDE = previous
    backends._env_backend.cache_clear()


def test_gaaf_backend_environment_variable(fresh_env):
    assert get_backend() == "auto"
    for value in ("native", "compile", "eager", " Eager "):
        fresh_env.setenv("GAAF_BACKEND", value)
        backends._env_backend.cache_clear()
        assert get_backend() == value.strip().lower()
    fresh_env.setenv("GAAF_BACKEND", "fast")
    backends._env_backend.cache_clear()
    with pytest.raises(ValueError, match="GAAF_BACKEND: unknown GAAF backend 'fast'; choose one of auto"):
        get_backend()


def test_set_backend_and_use_backend(fresh_env):
    set_backend("eager")
    assert get_backend() == "eager"
    with use_backend("native"):
        assert get_backend() == "native"
    assert get_backend() == "eager"
    with pytest.raises(ValueError, match="set_backend: unknown GAAF backend 'gpu'"):
        set_backend("gpu")
    set_backend(None)  # back to GAAF_BACKEND
    fresh_env.setenv("GAAF_BACKEND", "compile")
    backends._env_backend.cache_clear()
    assert get_backend() == "compile"
