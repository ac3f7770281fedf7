"""Epoch time of the paper MLP on a quiet and on a busy CPU, for each OpenMP thread policy.

Why: torch's OpenMP threads spin after every parallel region (GNU libgomp: 300 000 spins by
default), waiting for the next one. On an idle machine that saves a wake-up per region; when other
processes want the cores, a spinning thread burns the time slice its partner needs to finish the
region, and the epoch gets several times slower. This benchmark measures that, one run for all
candidate policies.

Each policy runs in a worker process of its own (the OpenMP runtime reads its environment once, at
load): the worker sets the policy's environment, imports torch, loads MNIST into memory, trains one
warm-up epoch, then times one epoch of ``benchmarks/parity.py``'s raw loop (784-512-256-256-10,
SGD lr 0.05 momentum 0.9, batch 128) each time it is asked. The parent asks every worker in turn,
``--rounds`` times, in a rotating order (so slow phases of a shared machine spread over all
policies): one epoch quiet, then one epoch while ``--busy`` CPU-bound processes run, which the
parent starts before and stops after that epoch (always, also on Ctrl-C or an error). Printed per
policy: the quiet and loaded medians with their ranges, loaded/quiet (median over rounds of each
round's ratio) and quiet/quiet of the default policy (medians).

    python benchmarks/threads.py [--data-dir DIR] [--rounds 3] [--busy N] [--model gaaf|tanh]
        [--policies default,passive,...] [--nice -20] [--settle SECONDS]

``--settle S`` trains S seconds untimed before each timed epoch, the busy processes already running
before a loaded one: the load is there when the epoch starts, as when a run starts on a busy machine
(default 0: the load arrives as the loaded epoch starts).

On a machine shared with other work, ``--nice -20`` (root) lets the measured processes (workers and
busy processes alike) outrank everything else, which comes close to an idle machine.

Data: ``--data-dir`` or ``$GAAF_DATA_DIR`` (torchvision layout); without either, a synthetic MNIST
of full size. ``policy`` is what :func:`lightning_gaaf.run.threads.choose_thread_policy` picks
when the worker starts (``GAAF_THREADS`` is read from this environment; the parent removes its own
OpenMP variables from the workers' environment), its count then kept; ``follow`` is the same
start, then :class:`lightning_gaaf.run.adaptive_threads.AdaptiveThreads` stepped after every batch
(as the programs' callback does), and ``follow idle`` the same started with all usable cores, as on
an idle machine. A following worker's lines show its count at the epoch's end and the changes in
it. The other rows run with ``GAAF_THREADS=off`` and their own variables only.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import platform
import re
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

# Variables that decide a worker's threads: removed from the inherited environment, so that each
# worker sees only its policy's.
THREAD_VARIABLES = (
    "OMP_NUM_THREADS",
    "OMP_WAIT_POLICY",
    "GOMP_SPINCOUNT",
    "KMP_BLOCKTIME",
    "MKL_NUM_THREADS",
)

POLICIES: dict[str, dict[str, str]] = {
    "default": {},
    "passive": {"OMP_WAIT_POLICY": "PASSIVE"},
    "1 thread": {"OMP_NUM_THREADS": "1"},
    "spin 1000": {"GOMP_SPINCOUNT": "1000"},
    "spin 3000": {"GOMP_SPINCOUNT": "3000"},
    "spin 10000": {"GOMP_SPINCOUNT": "10000"},
    "spin 30000": {"GOMP_SPINCOUNT": "30000"},
    "spin 100000": {"GOMP_SPINCOUNT": "100000"},
    "policy": {},  # lightning_gaaf.run.threads.choose_thread_policy(), as the programs apply it
    # ... and then follows the load, as in the programs: AdaptiveThreads.step() after every batch
    "follow": {},
    # the same, started as on an idle machine: all usable cores (the load at start not counted)
    "follow idle": {},
    # ... and with libgomp's default spin count (300 000) instead of the policy's 30 000
    "follow 300k": {"GOMP_SPINCOUNT": "300000"},
}
# Candidates whose thread count follows the load while they train (lightning_gaaf.run.adaptive_threads).
FOLLOWING = ("follow", "follow idle", "follow 300k")

# A CPU-bound loop that ends by itself once its parent is gone (checked every ~50 ms).
BUSY_LOOP = "import os\nparent = os.getppid()\nwhile os.getppid() == parent:\n    for _ in range(1_000_000):\n        pass\n"


def worker(args: argparse.Namespace) -> None:
    """Answer each line read on stdin: ``epoch`` times one raw epoch and prints its seconds;
    ``train S`` trains for S seconds, untimed, and prints ``ok``. Ends at end of input."""
    import _thread_policy  # first: parity imports torch, whose OpenMP runtime reads the policy at load
    import torch
    from parity import make_backbone, raw_epoch

    from lightning_gaaf.activations.backends.native import loaded_openmp_runtimes
    from lightning_gaaf.datamodules import MNISTDataModule
    from lightning_gaaf.run.adaptive_threads import AdaptiveThreads
    from lightning_gaaf.run.threads import usable_cores

    header = _thread_policy.POLICY.describe()
    if not args.follow:
        header = re.sub(
            r" at start, follows the load \(1-\d+; ", " (kept: the start-time policy alone; ", header
        )
    adaptive = None
    if args.follow:
        if args.follow == "idle":
            torch.set_num_threads(usable_cores())
            header = f"started with {usable_cores()} (as on an idle machine); {header}"
        adaptive = AdaptiveThreads(top=usable_cores())
    root = args.data_dir
    if root is None:
        import tempfile

        from lightning_gaaf.datamodules.synthetic import write_mnist

        root = write_mnist(tempfile.mkdtemp(prefix="gaaf-threads-"), n_train=60_000, n_test=100)
    dm = MNISTDataModule(root=str(root), batch_size=128, download=False)
    dm.setup("fit")
    images, labels = dm.train_dataset.images, dm.train_dataset.labels
    backbone = make_backbone(args.model == "gaaf")

    def step() -> bool:
        if adaptive is not None:
            adaptive.step()
        return deadline is not None and time.perf_counter() >= deadline

    deadline: float | None = None
    raw_epoch(backbone, images, labels, step)  # warm-up: allocator, native kernels
    runtimes = ",".join(os.path.basename(p) for p in loaded_openmp_runtimes()) or "none"
    print(
        f"ready {header} | runtime {runtimes} | torch.get_num_threads() {torch.get_num_threads()}", flush=True
    )
    try:
        for line in sys.stdin:
            if adaptive is not None:
                adaptive.pause()  # the wait for this request was no training step
            changes = adaptive.changes if adaptive is not None else 0
            start = time.perf_counter()
            if line.startswith("train "):
                deadline = start + float(line.split()[1])
                while time.perf_counter() < deadline:
                    raw_epoch(backbone, images, labels, step)
                deadline = None
                print("ok", flush=True)
                continue
            raw_epoch(backbone, images, labels, step)
            seconds = time.perf_counter() - start
            end = f" {torch.get_num_threads()} {adaptive.changes - changes}" if adaptive is not None else ""
            print(f"{seconds:.4f}{end}", flush=True)
    except BrokenPipeError:  # the parent is gone: nothing left to answer
        pass


class Worker:
    """One policy's worker process and the request/answer exchange with it."""

    def __init__(self, name: str, args: argparse.Namespace) -> None:
        env = {k: v for k, v in os.environ.items() if k not in THREAD_VARIABLES}
        # GAAF_THREADS=off: the thread policy sets nothing, torch's defaults rule
        if name not in ("policy", *FOLLOWING):
            env.update(POLICIES[name], GAAF_THREADS="off")
        cmd = [sys.executable, os.path.abspath(__file__), "--worker", "--model", args.model]
        if name in FOLLOWING:
            env.update(POLICIES[name])
            cmd += ["--follow", "policy" if name == "follow" else "idle"]
        if args.data_dir:
            cmd += ["--data-dir", args.data_dir]
        self.name = name
        # A session of its own: Ctrl-C reaches the parent only, which then ends every child.
        self.proc = subprocess.Popen(
            cmd, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, start_new_session=True
        )
        self.header = ""
        prioritise(self.proc.pid, args.nice)

    def wait_ready(self) -> None:
        line = self.proc.stdout.readline()
        if not line.startswith("ready "):
            raise RuntimeError(f"worker {self.name!r} failed to start (exit code {self.proc.wait()})")
        self.header = line[len("ready ") :].strip()

    def epoch(self) -> float:
        """Seconds of one epoch; a following worker's last count and changes are kept in ``self.after``."""
        answer = self._ask("epoch").split()
        self.after = f" [{answer[1]} thr, {answer[2]} chg]" if len(answer) == 3 else ""
        return float(answer[0])

    def train(self, seconds: float) -> None:
        """Train ``seconds`` untimed (the load settles in before the timed epoch)."""
        if seconds > 0:
            self._ask(f"train {seconds}")

    def _ask(self, request: str) -> str:
        self.proc.stdin.write(request + "\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"worker {self.name!r} ended (exit code {self.proc.wait()})")
        return line

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()


class BusyProcesses:
    """``n`` CPU-bound processes while the ``with`` block runs; stopped however it ends."""

    def __init__(self, n: int, nice: int = 0) -> None:
        self.n, self.nice = n, nice
        self.procs: list[subprocess.Popen] = []

    def __enter__(self) -> BusyProcesses:
        try:
            for _ in range(self.n):
                self.procs.append(subprocess.Popen([sys.executable, "-c", BUSY_LOOP], start_new_session=True))
                prioritise(self.procs[-1].pid, self.nice)
            time.sleep(0.2)  # let them start spinning before the clock does
        except BaseException:
            self.__exit__()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.kill()
        for proc in self.procs:
            proc.wait()
        self.procs.clear()


def prioritise(pid: int, nice: int) -> None:
    """Give ``pid``, the first process of a session of its own, the priority ``nice``.

    Where the kernel groups each session for scheduling (``sched_autogroup``), a process's own nice
    only ranks it inside its session; the session's rank is the autogroup's nice.
    """
    if not nice:
        return
    os.setpriority(os.PRIO_PROCESS, pid, nice)
    with contextlib.suppress(OSError):
        Path(f"/proc/{pid}/autogroup").write_text(str(nice))


def loadavg() -> str:
    with open("/proc/loadavg") as f:
        return " ".join(f.read().split()[:4])


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def span(values: list[float]) -> str:
    return f"{statistics.median(values):6.2f} [{min(values):5.2f}-{max(values):5.2f}]"


def measure(args: argparse.Namespace, names: list[str]) -> None:
    workers: list[Worker] = []
    quiet: dict[str, list[float]] = {name: [] for name in names}
    loaded: dict[str, list[float]] = {name: [] for name in names}
    try:
        for name in names:
            workers.append(Worker(name, args))
        for w in workers:
            w.wait_ready()
        print(f"command: python benchmarks/threads.py {' '.join(sys.argv[1:])}")
        print(
            f"cpu: {cpu_model()}, {len(os.sched_getaffinity(0))} CPUs usable, python {platform.python_version()}"
        )
        print(f"model: MLP 784-512-256-256-10 {args.model}, raw loop, 60000 images, batch 128")
        settle = (
            f"{args.settle:g} s before the epoch (untimed training)" if args.settle else "as the epoch starts"
        )
        print(
            f"loaded = {args.busy} busy processes, started {settle}; nice {args.nice}; "
            f"load average before: {loadavg()}"
        )
        for w in workers:
            print(f"  {w.name:12s} {w.header}")
        for r in range(args.rounds):
            order = workers[r % len(workers) :] + workers[: r % len(workers)]
            for w in order:
                w.train(args.settle)
                q = w.epoch()
                q_after = w.after
                with BusyProcesses(args.busy, args.nice):
                    w.train(args.settle)
                    lo = w.epoch()
                quiet[w.name].append(q)
                loaded[w.name].append(lo)
                print(
                    f"round {r + 1} {w.name:12s} quiet {q:6.2f} s{q_after}  loaded {lo:6.2f} s{w.after}"
                    f"  (load {loadavg()})",
                    flush=True,
                )
    except (KeyboardInterrupt, SystemExit):
        print("interrupted: the table below holds the rounds measured so far")
        summarise(names, quiet, loaded)
        raise
    finally:
        # A second Ctrl-C / SIGTERM must not cut the clean-up short.
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM})
        for w in workers:
            w.stop()
    summarise(names, quiet, loaded)


def summarise(names: list[str], quiet: dict[str, list[float]], loaded: dict[str, list[float]]) -> None:
    names = [name for name in names if quiet[name]]
    if not names:
        return
    print(f"load average after: {loadavg()}")
    base = statistics.median(quiet[names[0]])
    print(
        f"{'policy':12s} {'quiet s/epoch [range]':>22s} {'loaded s/epoch [range]':>23s}  loaded/quiet  quiet/{names[0]}"
    )
    for name in names:
        ratio = statistics.median(lo / q for lo, q in zip(loaded[name], quiet[name], strict=True))
        print(
            f"{name:12s} {span(quiet[name]):>22s} {span(loaded[name]):>23s}  {ratio:12.2f}  "
            f"{statistics.median(quiet[name]) / base:9.2f}"
        )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", default=os.environ.get("GAAF_DATA_DIR"))
    parser.add_argument("--rounds", type=int, default=3, help="quiet+loaded epochs per policy")
    parser.add_argument(
        "--busy", type=int, default=len(os.sched_getaffinity(0)), help="busy processes when loaded"
    )
    parser.add_argument("--model", choices=("gaaf", "tanh"), default="gaaf")
    parser.add_argument(
        "--policies", default=",".join(POLICIES), help="comma-separated, the first is the baseline"
    )
    parser.add_argument(
        "--nice",
        type=int,
        default=0,
        help="priority of every measured process; below 0 (root only) it outranks the machine's other work",
    )
    parser.add_argument(
        "--settle",
        type=float,
        default=0.0,
        help="seconds of untimed training before each timed epoch, the busy processes already running "
        "before a loaded one (default 0: the load arrives as the loaded epoch starts)",
    )
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--follow", choices=("policy", "idle"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        worker(args)
        return
    names = args.policies.split(",")
    unknown = [n for n in names if n not in POLICIES]
    if unknown:
        parser.error(f"unknown policies {unknown}; known: {', '.join(POLICIES)}")
    # SIGTERM ends the run like Ctrl-C does: through the finally blocks that stop every child.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    signal.signal(signal.SIGINT, signal.default_int_handler)  # also when started with Ctrl-C ignored
    measure(args, names)


if __name__ == "__main__":
    main()
