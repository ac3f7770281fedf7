"""The thread policy: what it chooses for given CPUs and environment, that the user's settings win,
that its environment reaches torch in a new process, and that a seeded training repeats bit for bit."""

from __future__ import annotations

import math
import os
import subprocess
import sys
import textwrap
import warnings
from pathlib import Path

import pytest
import torch

from lightning_gaaf.run.threads import (
    DEFAULT_SPIN_COUNT,
    apply_thread_policy,
    choose_thread_policy,
    openmp_runtime,
    threads_for_load,
    usable_cores,
)

REPO = Path(__file__).resolve().parents[1]
GOMP = "libgomp.so.1"
THREAD_VARIABLES = ("GAAF_THREADS", "OMP_NUM_THREADS", "OMP_WAIT_POLICY", "GOMP_SPINCOUNT", "KMP_BLOCKTIME")


def choose(
    environ: dict[str, str],
    cores: int = 2,
    machine_cores: int | None = None,
    load: float = 0.0,
    runtime: str | None = GOMP,
    torch_loaded: bool = False,
):
    return choose_thread_policy(
        environ,
        cores=cores,
        machine_cores=machine_cores or cores,
        load=load,
        runtime=runtime,
        torch_loaded=torch_loaded,
    )


def test_auto_takes_the_usable_cores_and_a_short_spin() -> None:
    policy = choose({}, cores=3)
    assert (policy.threads, policy.spin_count, policy.user) == (3, DEFAULT_SPIN_COUNT, ())
    # torch's own default already is the machine's cores: OMP_NUM_THREADS stays unset for DDP's sake
    assert dict(policy.environ) == {"GOMP_SPINCOUNT": str(DEFAULT_SPIN_COUNT)}
    assert (
        policy.describe()
        == f"threads: 3 at start, follows the load (1-3; OpenMP spin {DEFAULT_SPIN_COUNT}, GAAF_THREADS=auto, "
        "load 0.0 on 3 cores)"
    )


@pytest.mark.parametrize(
    "cores, load, threads", [(2, 0.0, 2), (2, 0.99, 2), (2, 1.0, 1), (2, 2.3, 1), (2, 40.0, 1), (8, 2.5, 6)]
)
def test_auto_leaves_the_cores_that_other_work_fills(cores: int, load: float, threads: int) -> None:
    assert threads_for_load(cores, load) == threads
    policy = choose({}, cores=cores, machine_cores=cores, load=load)
    assert policy.threads == threads
    # fewer threads than torch's default: exported, so that torch starts with that many
    assert policy.environ.get("OMP_NUM_THREADS") == (str(threads) if threads < cores else None)
    assert policy.describe().endswith(f"GAAF_THREADS=auto, load {load:.1f} on {cores} cores)")


def test_auto_exports_the_count_under_a_narrower_affinity_or_quota() -> None:
    policy = choose({}, cores=2, machine_cores=64)
    assert policy.threads == 2
    assert dict(policy.environ) == {"OMP_NUM_THREADS": "2", "GOMP_SPINCOUNT": str(DEFAULT_SPIN_COUNT)}


def test_gaaf_threads_sets_the_count() -> None:
    policy = choose({"GAAF_THREADS": " 4 "}, cores=2, load=5.0)  # the load does not count
    assert policy.threads == 4
    assert policy.environ["OMP_NUM_THREADS"] == "4"
    assert policy.describe() == f"threads: 4 (OpenMP spin {DEFAULT_SPIN_COUNT}, GAAF_THREADS=4)"


def test_a_user_omp_num_threads_wins_over_auto() -> None:
    policy = choose({"OMP_NUM_THREADS": "1", "GAAF_THREADS": "auto"}, cores=8, load=3.0)
    assert policy.threads == 1
    assert "OMP_NUM_THREADS" not in policy.environ
    assert policy.user == ("OMP_NUM_THREADS",)
    assert "OMP_NUM_THREADS set" in policy.describe()
    assert choose({"OMP_NUM_THREADS": "3,1"}, cores=8).threads == 3  # nested levels: the outer one


@pytest.mark.parametrize("name, value", [("GOMP_SPINCOUNT", "0"), ("OMP_WAIT_POLICY", "ACTIVE")])
def test_a_user_wait_setting_wins_over_the_spin_count(name: str, value: str) -> None:
    policy = choose({name: value})
    assert policy.spin_count is None
    assert "GOMP_SPINCOUNT" not in policy.environ
    assert policy.user == (name,)
    assert policy.describe() == (
        f"threads: 2 at start, follows the load (1-2; {name} set, GAAF_THREADS=auto, load 0.0 on 2 cores)"
    )


def test_no_spin_count_for_other_runtimes() -> None:
    policy = choose({}, runtime="libiomp5.so")
    assert policy.spin_count is None and dict(policy.environ) == {}
    assert (
        policy.describe()
        == "threads: 2 at start, follows the load (1-2; OpenMP wait: libiomp5.so default, GAAF_THREADS=auto, "
        "load 0.0 on 2 cores)"
    )


def test_off_sets_nothing() -> None:
    policy = choose({"GAAF_THREADS": "off"})
    assert (policy.threads, policy.spin_count, dict(policy.environ)) == (None, None, {})
    assert policy.describe() == "threads: torch's defaults (GAAF_THREADS=off)"
    environ: dict[str, str] = {}
    apply_thread_policy(policy, environ)
    assert environ == {}


@pytest.mark.parametrize("value", ["0", "-1", "two", "1.5"])
def test_a_malformed_gaaf_threads_is_one_clear_error(value: str) -> None:
    with pytest.raises(
        ValueError, match=rf"^GAAF_THREADS must be 'auto', 'off' or a positive integer, got '{value}'$"
    ):
        choose({"GAAF_THREADS": value})


def test_usable_cores_counts_physical_cores_in_the_affinity_under_the_quota() -> None:
    siblings = {0: "0:0", 1: "0:1", 2: "0:0", 3: "0:1", 4: "0:2"}  # 4 and its sibling 5 are not ours
    assert usable_cores(affinity={0, 1, 2, 3, 4}, core_of=siblings, quota=math.inf) == 3
    assert usable_cores(affinity={0, 2}, core_of=siblings, quota=math.inf) == 1
    assert usable_cores(affinity={0, 1, 2, 3, 4}, core_of=siblings, quota=1.5) == 2
    assert usable_cores(affinity={0, 1, 2, 3, 4}, core_of=siblings, quota=0.2) == 1
    assert usable_cores(affinity={7, 8}, core_of={}, quota=math.inf) == 2  # no topology: one core per CPU


def test_torch_already_imported_changes_only_the_thread_count() -> None:
    before = torch.get_num_threads()
    target = 1 if before != 1 else 2
    environ: dict[str, str] = {}
    policy = choose({"GAAF_THREADS": str(target)}, torch_loaded=True)
    assert policy.describe().endswith("torch already imported: only the thread count applies)")
    try:
        apply_thread_policy(policy, environ)
        assert torch.get_num_threads() == target
        assert environ == {"OMP_NUM_THREADS": str(target), "GOMP_SPINCOUNT": str(DEFAULT_SPIN_COUNT)}
    finally:
        torch.set_num_threads(before)


def test_the_runtime_torch_loads_is_found() -> None:
    assert openmp_runtime() is not None and openmp_runtime().startswith(("libgomp", "libiomp", "libomp"))


def _python(code: str, **env: str) -> str:
    """Run ``code`` in a new interpreter whose thread variables are only ``env``."""
    environ = {k: v for k, v in os.environ.items() if k not in THREAD_VARIABLES}
    environ.update(env, PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]))
    result = subprocess.run(
        [sys.executable, "-c", code],
        env=environ,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout.strip()


APPLY_FIRST = textwrap.dedent("""
    import os, sys
    from lightning_gaaf.run.threads import apply_thread_policy, choose_thread_policy
    assert "torch" not in sys.modules, "the policy module imported torch"
    policy = choose_thread_policy()
    apply_thread_policy(policy)
    import torch
""")


@pytest.mark.parametrize("setting", ["1", "2", "auto"])
def test_the_policy_reaches_torch_in_a_new_process(setting: str) -> None:
    out = _python(
        APPLY_FIRST
        + 'print(torch.get_num_threads(), os.environ["GOMP_SPINCOUNT"], policy.threads, policy.describe())',
        GAAF_THREADS=setting,
    )
    threads, spin, chosen, describe = out.split(" ", 3)
    assert (int(threads), spin) == (int(chosen), str(DEFAULT_SPIN_COUNT))
    if setting == "auto":  # the machine's load at that moment decides within the usable cores
        assert 1 <= int(chosen) <= usable_cores()
        assert describe.startswith(
            f"threads: {chosen} at start, follows the load (1-{usable_cores()}; OpenMP spin "
            f"{DEFAULT_SPIN_COUNT}, GAAF_THREADS=auto, load "
        )
    else:
        assert int(chosen) == int(setting)
        assert describe == f"threads: {setting} (OpenMP spin {DEFAULT_SPIN_COUNT}, GAAF_THREADS={setting})"


def test_a_user_omp_num_threads_reaches_torch_untouched() -> None:
    out = _python(
        APPLY_FIRST + "print(torch.get_num_threads(), os.environ['OMP_NUM_THREADS'])", OMP_NUM_THREADS="1"
    )
    assert out == "1 1"


SEEDED_TRAINING = textwrap.dedent("""
    import hashlib
    import torch.nn.functional as F
    from lightning_gaaf import apply_gaaf
    from lightning_gaaf.models import MLP

    torch.manual_seed(0)
    model = MLP(hidden=(256, 128), activation="tanh")
    apply_gaaf(model)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    x, y = torch.randn(512, 784), torch.randint(0, 10, (512,))
    for step in range(5):
        loss = F.cross_entropy(model(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    digest = hashlib.sha256()
    for p in model.parameters():
        digest.update(p.detach().numpy().tobytes())
    print(torch.get_num_threads(), digest.hexdigest())
""")


def test_a_seeded_training_repeats_bit_for_bit_with_the_same_thread_count() -> None:
    first = _python(APPLY_FIRST + SEEDED_TRAINING, GAAF_THREADS="2")
    second = _python(APPLY_FIRST + SEEDED_TRAINING, GAAF_THREADS="2")
    assert first.startswith("2 ") and len(first.split()[1]) == 64
    assert first == second


def test_oversubscription_names_the_fix() -> None:
    from lightning_gaaf.run.threads import oversubscription

    assert oversubscription(2, 1, 2) is None
    assert oversubscription(1, 2, 2) is None
    three = oversubscription(3, 1, 2)
    assert three == (
        "3 process(es) x 1 thread(s) on 2 usable core(s): they will compete for the CPU; use --trainer.devices 2"
    )
    assert oversubscription(2, 2, 2).endswith("use GAAF_THREADS=1")


def test_a_cpu_run_with_more_processes_than_cores_warns(monkeypatch: pytest.MonkeyPatch) -> None:
    import pytorch_lightning as pl

    from lightning_gaaf.run import fit as run_fit

    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(run_fit, "usable_cores", lambda: 2)
    monkeypatch.setattr(os, "cpu_count", lambda: 2)
    trainer = pl.Trainer(
        accelerator="cpu", devices=3, strategy="ddp", logger=False, enable_checkpointing=False
    )
    with pytest.warns(UserWarning, match=r"3 process\(es\) x 1 thread\(s\) on 2 usable core\(s\)"):
        run_fit._warn_oversubscription(trainer)
    two = pl.Trainer(accelerator="cpu", devices=2, strategy="ddp", logger=False, enable_checkpointing=False)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        run_fit._warn_oversubscription(two)
