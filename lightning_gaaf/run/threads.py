"""The thread policy of a run: how many intra-op threads, and how long idle OpenMP threads spin.

Why: torch's OpenMP threads (GNU libgomp in the Linux wheels) spin for 300 000 iterations after
each parallel region before they sleep. On an idle machine that saves a wake-up per region; on a
busy one a spinning thread burns the time slice its partner needs, and one epoch of the paper MLP
took 9x longer with two busy processes on two cores (docs/results/threads.md). So the policy
(1) leaves out the cores that other work already fills when the program starts (1-minute load
average), and (2) spins 30 000 times: as fast as the default on an idle machine, half the
default's epoch time when busy processes arrive later. Shorter spins, down to none (passive),
cost 1.6-1.9x on an idle machine, because waking a sleeping thread is slow (on a VM above all).
(3) Under ``auto`` the count then follows the load while the run trains, between 1 and the usable
cores (:mod:`lightning_gaaf.run.adaptive_threads`; the programs add its callback): load that
arrives after the start costs about 2x the idle epoch instead of 4.4x.

The runtime reads its environment once, when torch is imported, so a program calls
``apply_thread_policy(choose_thread_policy())`` first thing in ``main()``, before importing torch.
Called later, only the thread count can still change (``torch.set_num_threads``);
:meth:`ThreadPolicy.describe` then says so. This module imports nothing but the standard library.

Overrides, all from the environment; a user's explicit setting always wins:

* ``GAAF_THREADS=auto`` (default), ``N`` or ``off``: the intra-op thread count; ``off`` leaves
  everything to torch's own defaults (the policy sets nothing). ``auto`` honours
  ``OMP_NUM_THREADS`` when set, else takes the physical cores this process may use (its CPU
  affinity and cgroup CPU quota) minus those the load average fills. When that is torch's own
  default (all the machine's cores), ``OMP_NUM_THREADS`` stays unset, so that Lightning's DDP and
  torchrun still share the cores among their processes; otherwise it is exported. Only ``auto``
  without the user's ``OMP_NUM_THREADS`` changes the count during a run
  (:attr:`ThreadPolicy.follows_load`); ``N`` and ``off`` keep it fixed, and with it a seeded run's
  bit-for-bit repeatability.
* ``GOMP_SPINCOUNT`` / ``OMP_WAIT_POLICY``: when either is set, the spin count is left to them.
"""

from __future__ import annotations

import importlib.util
import math
import os
import sys
from collections.abc import Iterable, Mapping, MutableMapping
from dataclasses import dataclass, field
from pathlib import Path

__all__ = [
    "DEFAULT_SPIN_COUNT",
    "ENV_VAR",
    "ThreadPolicy",
    "applied_thread_policy",
    "apply_thread_policy",
    "choose_thread_policy",
    "openmp_runtime",
    "threads_for_load",
    "usable_cores",
]

ENV_VAR = "GAAF_THREADS"
# GNU libgomp spins for this many iterations before sleeping (its default: 300 000). Chosen from
# benchmarks/threads.py: the idle epoch as fast as the default's, the busy one half as long; 10 000
# is no faster busy, 1000-3000 and passive cost the idle epoch 1.6-1.9x (docs/results/threads.md).
DEFAULT_SPIN_COUNT = 30_000
_SPIN_VARIABLES = ("GOMP_SPINCOUNT", "OMP_WAIT_POLICY")


@dataclass(frozen=True)
class ThreadPolicy:
    """The chosen values and where they come from.

    ``environ`` holds only the variables the policy sets (never one the user set); ``user`` names
    the variables the user set that decided a value; ``torch_loaded`` is true when torch was
    already imported, so that environment no longer reaches its OpenMP runtime.
    """

    threads: int | None
    spin_count: int | None
    setting: str
    runtime: str | None
    environ: Mapping[str, str] = field(default_factory=dict)
    user: tuple[str, ...] = ()
    torch_loaded: bool = False
    load: float | None = None
    cores: int | None = None

    @property
    def follows_load(self) -> bool:
        """Whether a run changes the count while it trains (``auto`` without the user's
        ``OMP_NUM_THREADS``; :mod:`lightning_gaaf.run.adaptive_threads`)."""
        return self.setting == "auto" and self.threads is not None and "OMP_NUM_THREADS" not in self.user

    def describe(self) -> str:
        """One line for a run's header, e.g. ``threads: 2 at start, follows the load (1-2; OpenMP spin
        30000, GAAF_THREADS=auto, load 0.2 on 2 cores)``."""
        if self.threads is None:
            return f"threads: torch's defaults ({ENV_VAR}=off)"
        if self.spin_count is not None:
            wait = f"OpenMP spin {self.spin_count}"
        else:
            user_wait = [f"{name} set" for name in self.user if name in _SPIN_VARIABLES]
            wait = ", ".join(user_wait) or f"OpenMP wait: {self.runtime or 'no OpenMP runtime found'} default"
        parts = [wait, f"{ENV_VAR}={self.setting}"]
        if self.load is not None and self.cores is not None:
            parts.append(f"load {self.load:.1f} on {self.cores} cores")
        if "OMP_NUM_THREADS" in self.user:
            parts.append("OMP_NUM_THREADS set")
        if self.torch_loaded:
            parts.append("torch already imported: only the thread count applies")
        if self.follows_load:
            top = max(self.threads, self.cores or self.threads)
            return f"threads: {self.threads} at start, follows the load (1-{top}; {', '.join(parts)})"
        return f"threads: {self.threads} ({', '.join(parts)})"


def _parse_count(value: str, name: str) -> int:
    try:
        count = int(value)
    except ValueError:
        count = 0
    if count < 1:
        raise ValueError(f"{name} must be 'auto', 'off' or a positive integer, got {value!r}")
    return count


def usable_cores(
    affinity: Iterable[int] | None = None,
    core_of: Mapping[int, str] | None = None,
    quota: float | None = None,
) -> int:
    """Physical cores among the CPUs this process may run on, capped by its cgroup CPU quota.

    ``affinity`` (CPU ids, default ``os.sched_getaffinity(0)``), ``core_of`` (CPU id -> its core,
    default read from sysfs; a CPU it lacks counts as a core of its own) and ``quota`` (CPUs'
    worth of time, default read from cgroup v2 ``cpu.max``; ``math.inf`` = unlimited) can be given.
    """
    cpus = sorted(os.sched_getaffinity(0) if affinity is None else affinity)
    if core_of is None:
        core_of = _sysfs_cores(cpus)
    cores = len({core_of.get(cpu, f"cpu{cpu}") for cpu in cpus})
    if quota is None:
        quota = _cgroup_quota()
    if quota is not None and quota != math.inf:
        cores = min(cores, math.ceil(quota))
    return max(1, cores)


def _sysfs_cores(cpus: Iterable[int]) -> dict[int, str]:
    found: dict[int, str] = {}
    for cpu in cpus:
        topology = Path(f"/sys/devices/system/cpu/cpu{cpu}/topology")
        try:
            package = (topology / "physical_package_id").read_text().strip()
            found[cpu] = package + ":" + (topology / "core_id").read_text().strip()
        except OSError:
            pass
    return found


def _cgroup_quota() -> float | None:
    try:
        quota, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()[:2]
    except (OSError, ValueError):
        return None
    return None if quota == "max" else int(quota) / int(period)


def openmp_runtime() -> str | None:
    """File name of the OpenMP runtime torch loads (``libgomp...``, ``libiomp5...``, ``libomp...``).

    Read from this process's mapped libraries when torch is imported, else from the files next to
    torch's own libraries (without importing torch); None when neither shows one.
    """
    names = ("libgomp", "libiomp", "libomp")
    if "torch" in sys.modules:
        try:
            with open("/proc/self/maps") as maps:
                for line in maps:
                    base = os.path.basename(line.split()[-1]) if len(line.split()) >= 6 else ""
                    if base.startswith(names):
                        return base
        except OSError:
            pass
    try:
        spec = importlib.util.find_spec("torch")
    except (ImportError, ValueError):
        spec = None
    if spec is not None and spec.origin:
        lib = Path(spec.origin).parent / "lib"
        if lib.is_dir():
            for path in sorted(lib.iterdir()):
                if path.name.startswith(names):
                    return path.name
    return None


def choose_thread_policy(
    environ: Mapping[str, str] = os.environ,
    *,
    cores: int | None = None,
    machine_cores: int | None = None,
    load: float | None = None,
    runtime: str | None = "detect",
    torch_loaded: bool | None = None,
) -> ThreadPolicy:
    """The policy for this process, from ``environ`` and the machine.

    ``cores`` (default :func:`usable_cores`), ``machine_cores`` (the machine's physical cores),
    ``load`` (default: the 1-minute load average),
    ``runtime`` (default :func:`openmp_runtime`) and
    ``torch_loaded`` (default: whether ``torch`` is in ``sys.modules``) can be given, for tests.
    Raises ValueError on a malformed ``GAAF_THREADS``.
    """
    setting = environ.get(ENV_VAR, "").strip() or "auto"
    user: list[str] = []
    updates: dict[str, str] = {}
    if runtime == "detect":
        runtime = openmp_runtime()
    if torch_loaded is None:
        torch_loaded = "torch" in sys.modules

    user_threads = _omp_num_threads(environ.get("OMP_NUM_THREADS", ""))
    if setting == "off":
        return ThreadPolicy(None, None, setting, runtime, {}, (), torch_loaded)
    if setting != "auto":
        threads = _parse_count(setting, ENV_VAR)
        updates["OMP_NUM_THREADS"] = str(threads)
    elif user_threads is not None:
        threads = user_threads
        user.append("OMP_NUM_THREADS")
    else:
        cores = usable_cores() if cores is None else cores
        load = os.getloadavg()[0] if load is None else load
        threads = threads_for_load(cores, load)
        if machine_cores is None:
            machine_cores = usable_cores(affinity=range(os.cpu_count() or 1), quota=math.inf)
        # Left unset when torch's own default (the machine's cores) is this count already, so that
        # Lightning's DDP and torchrun still divide the cores among the processes they start.
        if threads < machine_cores:
            updates["OMP_NUM_THREADS"] = str(threads)

    spin_count: int | None = None
    user_spin = [name for name in _SPIN_VARIABLES if environ.get(name, "").strip()]
    if user_spin:
        user += user_spin
    elif runtime is not None and runtime.startswith("libgomp"):
        spin_count = DEFAULT_SPIN_COUNT
        updates["GOMP_SPINCOUNT"] = str(spin_count)
    if setting != "auto" or "OMP_NUM_THREADS" in user:
        load = cores = None  # neither decided the count
    return ThreadPolicy(
        threads, spin_count, setting, runtime, updates, tuple(user), torch_loaded, load, cores
    )


def threads_for_load(cores: int, load: float) -> int:
    """The cores that other work leaves free (``load``: runnable processes, e.g. the load average),
    at least one.

    Why: a team of OpenMP threads is as slow as its slowest member; on a core that another busy
    process wants, a member gets half the time and the rest of the team waits. One thread per free
    core keeps the team off those (two busy processes on two cores: one thread, 4-6 s an epoch
    instead of 12-15 s with two; docs/results/threads.md). The load average counts every runnable
    process alike, low-priority (niced) ones included.
    """
    return max(1, min(cores, cores - math.floor(load)))


def _omp_num_threads(value: str) -> int | None:
    """The outer level of ``OMP_NUM_THREADS`` (``"4"`` or ``"4,2"``), None when unset or malformed."""
    try:
        count = int(value.split(",")[0])
    except ValueError:
        return None
    return count if count > 0 else None


_APPLIED: ThreadPolicy | None = None  # the policy this process applied to os.environ


def apply_thread_policy(policy: ThreadPolicy, environ: MutableMapping[str, str] = os.environ) -> None:
    """Put ``policy`` into effect: its variables into ``environ`` (also for child processes), and
    the thread count into torch when torch is already imported (the spin count then stays)."""
    global _APPLIED
    environ.update(policy.environ)
    if environ is os.environ:
        _APPLIED = policy
    torch = sys.modules.get("torch")
    if torch is not None and policy.threads is not None and torch.get_num_threads() != policy.threads:
        torch.set_num_threads(policy.threads)


def applied_thread_policy() -> ThreadPolicy | None:
    """The policy this process applied (:func:`apply_thread_policy` on ``os.environ``), while the
    environment still asks for it (its ``GAAF_THREADS`` setting); None otherwise.

    Child processes do not inherit it: a program that divides the cores among worker processes gives
    each a fixed count.
    """
    if _APPLIED is None or (os.environ.get(ENV_VAR, "").strip() or "auto") != _APPLIED.setting:
        return None
    return _APPLIED


def oversubscription(processes: int, threads: int, cores: int) -> str | None:
    """A one-line warning when ``processes`` × ``threads`` exceed the ``cores`` a run may use, else None.

    More runnable threads than cores make each wait for the others (and spin, under OpenMP): a CPU
    run with ``--trainer.devices 3`` on two cores is slower than one with two, not faster.
    """
    if processes * threads <= cores:
        return None
    fewer = (
        f"--trainer.devices {cores}" if processes > cores else f"GAAF_THREADS={max(1, cores // processes)}"
    )
    return (
        f"{processes} process(es) x {threads} thread(s) on {cores} usable core(s): they will compete for "
        f"the CPU; use {fewer}"
    )
