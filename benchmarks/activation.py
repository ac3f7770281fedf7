"""GAAF cost: fused activation vs plain activation vs the naive formula, and one MLP training step.

Measured in one process, repetitions interleaved (every round runs every variant once, in turn),
reported as the median over rounds of the per-round time ratio:

* ``(a)`` forward+backward of ``GAAF(nn.Tanh())`` / ``GAAF(nn.ReLU())`` vs the plain module on a
  256x4096 float32 tensor (goal: <= 1.5x);
* ``(b)`` the fused path vs the naive formula (autograd of ``phi(x) + g(x)*s(x)`` in plain torch ops);
* ``(c)`` one training step (forward, cross-entropy, backward, SGD step) of the paper's MNIST MLP
  (784-512-256-256-10, tanh, batch 128) with GAAF (``apply_gaaf``) vs without (goal: <= 1.05x);
* ``(d)`` the same step with ``torch.compile(model)``: compiled GAAF MLP vs compiled plain MLP (goal:
  <= 1.05x). GAAF is one custom op per pass inside the compiled graph, running the native kernels.

Each GAAF variant runs on one backend (``lightning_gaaf.activations.use_backend``): ``native`` (the
C kernels), ``compile`` (``torch.compile``'s kernels) and ``eager`` (plain torch ops);
building and compiling happen in the warm-up, before timing. ``gaaf_native_s1`` is the native kernel
with the shape ``one`` (no exp, no division): the price of the shape. torch keeps its default number
of threads. (a) is timed in a group of its own (plain, native, compiled, shape one): with the naive
formula and the eager path in the same rotation, their many allocations evict caches and fault in
fresh pages, which slows the plain activation more than GAAF and flatters the ratio (relu on Zen 5:
1.8-2.0x in one rotation, 2.1-2.5x in its own group, 256-bit kernels). (b) and the eager ratio
come from a second group.

Measured on 2 cores of an AMD EPYC Zen 5 (AVX-512), torch 2.14 CPU, 512-bit native kernels,
medians of four runs: (a) tanh 0.37-0.40x native (0.87-0.94x torch.compile, 6.2-6.6x eager),
below 1 because torch's own float32 tanh is slow on this CPU (1.4 ms forward); relu 1.26-1.56x
native (3.2-3.9x, 12-15x), relu with the shape ``one`` 0.94-1.05x; (b) native 0.10-0.14x of the
naive formula; (c) MLP step 1.00-1.01x native (1.21-1.25x, 1.5-1.6x). So (a) tanh and (c) meet
their goals; (a) relu is at the edge of its goal here, and missed it on a Zen 1 EPYC (AVX2 only:
2.3-2.4x; one rotation). Why relu: a plain ReLU is one memory-bound pass per direction, while
GAAF's shifted sigmoid needs an exp and a division per element in *both* passes because only
``x`` is saved; with the shape ``one`` GAAF's relu costs what torch's does. Those loops are
arithmetic-bound, so the 512-bit build runs them 1.6-1.8x faster than a 256-bit one on Zen 5.
Inductor's C++ for these loops moves the int->float bit cast of the exp through memory, and every
call pays dynamo's guards (~20 us, twice per layer per step): that is why the float32 CPU path is
plain C. The medians printed are only meaningful on an otherwise idle machine: under load,
two-thread kernels stall on descheduled threads, so ``best`` is printed next to them.

Usage: ``python benchmarks/activation.py [--rounds 60] [--mlp-rounds 150] [--quick]`` (~1-3 min).
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time
from collections.abc import Callable

import _thread_policy  # first: torch's OpenMP runtime reads the thread policy at load
import torch
import torch.nn.functional as F
from _checkout import check_checkout
from torch import nn

from lightning_gaaf import GAAF, apply_gaaf
from lightning_gaaf.activations import DEFAULT_K, default_shape_for, use_backend
from lightning_gaaf.activations.backends.native import cpuinfo_field
from lightning_gaaf.models.mlp import MLP

SHAPE = (256, 4096)
DEVICE = torch.device("cpu")  # --device cuda: the GPU check (no native kernels there)


def _kinds(kinds: tuple[str, ...]) -> tuple[str, ...]:
    """The kernel kinds that exist on DEVICE: the native C kernels are float32 CPU only."""
    return kinds if DEVICE.type == "cpu" else tuple(k for k in kinds if k != "native")


def _sync() -> None:
    if DEVICE.type == "cuda":
        torch.cuda.synchronize()


def _cpu_name() -> str:
    return cpuinfo_field("model name") or platform.processor() or platform.machine()


KERNELS = ("native", "compiled", "eager")
FUSED_KERNELS = ("native", "compiled")  # one kernel per pass for all the elementwise math
BACKEND = {"native": "native", "compiled": "compile", "eager": "eager"}


def _with_kernels(kind: str, fn: Callable[[], object]) -> Callable[[], object]:
    """Run ``fn`` with GAAF's native C kernels, torch.compile's kernels, or the eager torch ops."""

    def run() -> object:
        with use_backend(BACKEND[kind]):
            return fn()

    return run


def _interleaved(
    variants: dict[str, Callable[[], object]], rounds: int, warmup: int
) -> dict[str, list[float]]:
    """Seconds per call of every variant, one call of each per round (order rotates per round)."""
    for fn in variants.values():
        for _ in range(warmup):
            fn()
    names = list(variants)
    times: dict[str, list[float]] = {name: [] for name in names}
    for r in range(rounds):
        for name in names[r % len(names) :] + names[: r % len(names)]:
            start = time.perf_counter()
            variants[name]()
            _sync()
            times[name].append(time.perf_counter() - start)
    return times


def _ratio(times: dict[str, list[float]], num: str, den: str) -> float:
    return statistics.median(a / b for a, b in zip(times[num], times[den], strict=True))


def _best_ratio(times: dict[str, list[float]], num: str, den: str) -> float:
    """Ratio of the fastest calls: what an idle machine would show (the median is the headline)."""
    return min(times[num]) / min(times[den])


def _ms(times: dict[str, list[float]], name: str) -> str:
    return f"median {statistics.median(times[name]) * 1e3:8.3f} ms, best {min(times[name]) * 1e3:8.3f} ms"


def _naive(x: torch.Tensor, base: nn.Module, shape: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
    """The paper's formula in plain autograd ops: what GAAF costs without a fused kernel."""
    g = (x * DEFAULT_K - torch.floor(x * DEFAULT_K) - 0.5) / DEFAULT_K
    return base(x) + g * shape(x)


Row = tuple[str, dict[str, list[float]], str, str]  # label, times, numerator, denominator


def _timed_group(title: str, group: dict[str, Callable[[], object]], rounds: int) -> dict[str, list[float]]:
    """Time one interleaved group and print its per-variant times."""
    times = _interleaved(group, rounds, warmup=5)
    print(f"\n{title}: forward+backward on {SHAPE[0]}x{SHAPE[1]} float32, median of {rounds} rounds")
    for v in group:
        print(f"  {v:14s} {_ms(times, v)}")
    return times


def bench_activations(rounds: int) -> list[Row]:
    torch.manual_seed(0)
    x0 = torch.randn(SHAPE, device=DEVICE)
    grad = torch.randn(SHAPE, device=DEVICE)

    def fwd_bwd(module: Callable[[torch.Tensor], torch.Tensor]) -> Callable[[], None]:
        def run() -> None:
            x = x0.detach().requires_grad_(True)
            module(x).backward(grad)

        return run

    rows = []
    for name, plain in (("tanh", nn.Tanh()), ("relu", nn.ReLU())):
        gaaf = GAAF(plain)
        shape = default_shape_for(plain)
        fused = {f"gaaf_{kind}": _with_kernels(kind, fwd_bwd(gaaf)) for kind in _kinds(FUSED_KERNELS)}
        # (a) in a group of its own: the naive formula and the eager path allocate many tensors
        # per call, and with them in the rotation every 256x4096 pass runs on evicted caches and
        # fresh pages, which slows the plain activation more than GAAF's (relu on Zen 5, 256-bit
        # kernels: 2.5x in its own group, 1.55x beside the naive formula). The price of the shape: the same
        # native kernel with s = 1 (no exp, no division).
        group_a = {"plain": fwd_bwd(plain), **fused}
        if DEVICE.type == "cpu":
            group_a["gaaf_native_s1"] = _with_kernels("native", fwd_bwd(GAAF(plain, shape="one")))
        # (b) and eager: the fused paths beside the naive formula and the eager torch ops.
        group_b = {"plain": fwd_bwd(plain), **fused, "gaaf_eager": _with_kernels("eager", fwd_bwd(gaaf))}
        group_b["naive"] = fwd_bwd(lambda x, plain=plain, shape=shape: _naive(x, plain, shape))
        times_a = _timed_group(f"(a) {name}", group_a, rounds)
        times_b = _timed_group(f"(b) {name}", group_b, rounds)
        for kind in _kinds(FUSED_KERNELS):
            rows.append((f"(a) {name}: GAAF ({kind}) / plain", times_a, f"gaaf_{kind}", "plain"))
        if DEVICE.type == "cpu":
            rows.append((f"(a) {name}: GAAF (native, shape one) / plain", times_a, "gaaf_native_s1", "plain"))
        rows.append((f"(b) {name}: GAAF (eager) / plain", times_b, "gaaf_eager", "plain"))
        for kind in _kinds(KERNELS):
            rows.append((f"(b) {name}: fused ({kind}) / naive formula", times_b, f"gaaf_{kind}", "naive"))
    return rows


def bench_mlp(rounds: int) -> list[Row]:
    torch.manual_seed(0)
    plain = MLP(activation="tanh")
    gaaf = MLP(activation="tanh")
    gaaf.load_state_dict(plain.state_dict())
    apply_gaaf(gaaf)
    plain.to(DEVICE), gaaf.to(DEVICE)
    x = torch.randn(128, 1, 28, 28, device=DEVICE)
    y = torch.randint(0, 10, (128,), device=DEVICE)

    def step(model: nn.Module) -> Callable[[], None]:
        opt = torch.optim.SGD(model.parameters(), lr=1e-3)

        def run() -> None:
            opt.zero_grad(set_to_none=True)
            F.cross_entropy(model(x), y).backward()
            opt.step()

        return run

    variants = {"plain": step(plain)}
    variants |= {f"gaaf_{kind}": _with_kernels(kind, step(gaaf)) for kind in _kinds(KERNELS)}
    times = _interleaved(variants, rounds, warmup=10)
    print(f"\n(c) MNIST MLP 784-512-256-256-10 tanh, batch 128, SGD step, median of {rounds} rounds")
    for v in variants:
        print(f"  {v:14s} {_ms(times, v)}")
    return [
        (f"(c) MLP step: GAAF ({v.split('_')[1]}) / plain", times, v, "plain")
        for v in variants
        if v != "plain"
    ]


def _auto(fn: Callable[[], object]) -> object:
    with use_backend("auto"):
        return fn()


def bench_compiled_mlp(rounds: int) -> list[Row]:
    """(d) ``torch.compile(model)`` of the paper MLP, with and without GAAF (backend ``auto``)."""
    torch.manual_seed(0)
    plain = MLP(activation="tanh")
    gaaf = MLP(activation="tanh")
    gaaf.load_state_dict(plain.state_dict())
    apply_gaaf(gaaf)
    plain.to(DEVICE), gaaf.to(DEVICE)
    x = torch.randn(128, 1, 28, 28, device=DEVICE)
    y = torch.randint(0, 10, (128,), device=DEVICE)

    def step(model: nn.Module) -> Callable[[], None]:
        compiled = torch.compile(model)
        opt = torch.optim.SGD(model.parameters(), lr=1e-3)

        def run() -> None:
            opt.zero_grad(set_to_none=True)
            F.cross_entropy(compiled(x), y).backward()
            opt.step()

        return run

    gaaf_step = step(gaaf)
    variants = {"plain_compiled": step(plain), "gaaf_compiled": lambda: _auto(gaaf_step)}
    times = _interleaved(variants, rounds, warmup=10)
    print(f"\n(d) the same step under torch.compile(model), median of {rounds} rounds")
    for v in variants:
        print(f"  {v:14s} {_ms(times, v)}")
    return [("(d) compiled MLP step: GAAF / plain", times, "gaaf_compiled", "plain_compiled")]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=60, help="interleaved rounds for (a) and (b)")
    parser.add_argument("--mlp-rounds", type=int, default=150, help="interleaved rounds for (c)")
    parser.add_argument("--quick", action="store_true", help="few rounds (a smoke run, noisy numbers)")
    parser.add_argument("--device", default="cpu", help="cpu or cuda (benchmarks/gpu_check.sh)")
    args = parser.parse_args(argv)
    global DEVICE
    DEVICE = torch.device(args.device)
    check_checkout()
    if args.quick:
        args.rounds, args.mlp_rounds = 5, 5

    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"torch {torch.__version__}, {_thread_policy.POLICY.describe()}, CPU: {_cpu_name()}")
    print(f"CPU capability {torch.backends.cpu.get_cpu_capability()}, load average {load:.2f}")
    start = time.perf_counter()
    rows = bench_activations(args.rounds) + bench_mlp(args.mlp_rounds) + bench_compiled_mlp(args.mlp_rounds)
    print(f"\n  {'ratio (time / time)':48s} {'median':>7s} {'best':>7s}")
    for label, times, num, den in rows:
        print(f"  {label:48s} {_ratio(times, num, den):7.2f} {_best_ratio(times, num, den):7.2f}")
    print(f"\n({time.perf_counter() - start:.0f} s, including compilation)")


if __name__ == "__main__":
    main()
