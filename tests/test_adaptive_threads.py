"""The thread count that follows the load: the decision on synthetic step times and contention, the
callback in a real fit fed a contention signal and a clock of the test's own, and which runs get it."""

from __future__ import annotations

import csv
import os
from collections.abc import Iterator
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch
from _cli_helpers import fit_env, tiny
from _fit_helpers import fit_in_process
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from lightning_gaaf.run import threads as thread_module
from lightning_gaaf.run.adaptive_threads import (
    AdaptiveThreads,
    RunQueueWait,
    ThreadCountChooser,
    thread_levels,
)
from lightning_gaaf.run.adaptive_threads_callback import AdaptiveThreadsCallback, adaptive_threads_callbacks
from lightning_gaaf.run.threads import apply_thread_policy, choose_thread_policy


class Machine:
    """A simulated two-core machine: a step's seconds at each thread count while quiet and while busy,
    and the share of the time our threads waited for a CPU (None: unknown, as in some containers)."""

    QUIET = {1: 0.011, 2: 0.010}
    BUSY = {1: 0.015, 2: 0.045}  # two busy processes: the 2-thread team waits for a core

    def __init__(self, report_waiting: bool = True) -> None:
        self.busy = False
        self.report_waiting = report_waiting
        self.now = 0.0

    def waiting(self) -> float | None:
        if not self.report_waiting:
            return None
        return 0.6 if self.busy else 0.02

    def run(self, chooser: ThreadCountChooser, seconds: float) -> list[int]:
        """Train for ``seconds`` of simulated time; the count of each step."""
        counts = []
        end = self.now + seconds
        while self.now < end:
            counts.append(chooser.count)
            step = (self.BUSY if self.busy else self.QUIET)[chooser.count]
            self.now += step
            chooser.observe(step, self.now)
        return counts


def chooser_on(machine: Machine, start: int = 2) -> ThreadCountChooser:
    waiting = machine.waiting if machine.report_waiting else None
    return ThreadCountChooser(thread_levels(2), start, waiting)


def test_levels_are_one_the_powers_of_two_the_start_and_the_top() -> None:
    assert thread_levels(1) == (1,)
    assert thread_levels(2) == (1, 2)
    assert thread_levels(6, start=3) == (1, 2, 3, 4, 6)
    with pytest.raises(ValueError, match="not among the levels"):
        ThreadCountChooser((1, 2), 3)


@pytest.mark.parametrize("report_waiting", [True, False], ids=["run-queue wait", "step time only"])
def test_contention_takes_fewer_threads_and_its_end_gives_them_back(report_waiting: bool) -> None:
    machine = Machine(report_waiting)
    chooser = chooser_on(machine)
    assert machine.run(chooser, 3.0)[-1] == 2
    machine.busy = True
    counts = machine.run(chooser, 3.0)
    assert counts[:5] == [2] * 5 and counts[-60:].count(1) > 50
    # found within a second, not at the next start: most of the busy time runs one thread
    assert counts.count(1) / len(counts) > 0.8
    machine.busy = False
    counts = machine.run(chooser, 10.0)
    assert counts[-100:].count(2) > 80
    assert counts.count(2) / len(counts) > 0.7


def test_a_free_cpu_keeps_the_start_count_without_probes() -> None:
    machine = Machine()
    chooser = chooser_on(machine)
    assert set(machine.run(chooser, 120.0)) == {2} and chooser.probes == 0


def test_without_a_contention_signal_the_start_count_stays_and_probes_get_rarer() -> None:
    machine = Machine(report_waiting=False)
    chooser = chooser_on(machine)
    counts = machine.run(chooser, 120.0)
    # hysteresis: one thread is 10 % slower here, within the margin, so each probe returns to two
    assert counts[-1] == 2 and counts.count(1) / len(counts) < 0.02
    # probes after 2, 4, 8, ... 64 s (doubling while they keep the count): a handful in two minutes
    assert 4 <= chooser.probes <= 8


def test_a_probe_of_more_threads_under_load_ends_within_three_steps() -> None:
    machine = Machine(report_waiting=False)
    chooser = chooser_on(machine, start=1)
    machine.busy = True
    counts = machine.run(chooser, 30.0)
    runs_of_two = "".join(map(str, counts)).split("1")
    assert chooser.probes >= 3  # the periodic probes of more threads, without a contention signal
    assert max(len(run) for run in runs_of_two) <= 3  # the switch's step and two more


def test_free_windows_now_and_then_under_load_try_more_threads_ever_less_often() -> None:
    # Our one thread sometimes has a core to itself while the busy processes share the other one:
    # such a window is free, but a second thread would wait.
    machine = Machine()
    shares = iter([0.6, 0.6, 0.02] * 10_000)
    chooser = ThreadCountChooser(thread_levels(2), 1, lambda: next(shares))
    machine.busy = True
    counts = machine.run(chooser, 30.0)
    assert chooser.probes <= 5  # free windows asked for in a row: 1, 2, 4, 8 after each wrong try
    assert counts.count(1) / len(counts) > 0.98


def test_the_run_queue_wait_of_this_process_is_a_share() -> None:
    waiting = RunQueueWait()
    first = waiting()
    sum(i * i for i in range(200_000))  # some time running
    second = waiting()
    if not Path("/proc/self/task").is_dir():
        assert first is None and second is None
        return
    assert first is None  # no starting point yet
    assert second is not None and 0.0 <= second <= 1.0
    assert RunQueueWait(Path("/nonexistent"))() is None


class TinyRegression(pl.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.layer = nn.Linear(4, 1)

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        x, y = batch
        return nn.functional.mse_loss(self.layer(x), y)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.01)


class SimulatedClock:
    """A clock of the test's own: each training step lasts what :class:`Machine` says for torch's
    current thread count; a step's start and its end are two readings."""

    def __init__(self, machine: Machine, busy_from_step: int) -> None:
        self.machine, self.busy_from_step = machine, busy_from_step
        self.readings = 0
        self.seen: list[int] = []

    def __call__(self) -> float:
        self.readings += 1
        if self.readings % 2 == 0:  # a step's end
            steps = self.readings // 2
            self.machine.busy = steps >= self.busy_from_step
            self.seen.append(torch.get_num_threads())
            self.machine.now += (Machine.BUSY if self.machine.busy else Machine.QUIET)[
                torch.get_num_threads()
            ]
        return self.machine.now


def fit(tmp_path: Path, callback: AdaptiveThreadsCallback, steps: int, fails_at: int | None = None) -> Path:
    class Failing(TinyRegression):
        def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
            if batch_idx == fails_at:
                raise RuntimeError("a failing step")
            return super().training_step(batch, batch_idx)

    data = TensorDataset(torch.randn(steps, 4), torch.randn(steps, 1))
    logger = pl.loggers.CSVLogger(tmp_path, name="csv", version=0)
    trainer = pl.Trainer(
        max_epochs=1, logger=logger, callbacks=[callback], enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, log_every_n_steps=1, default_root_dir=tmp_path,
    )  # fmt: skip
    trainer.fit(Failing(), DataLoader(data, batch_size=1))
    return tmp_path / "csv" / "version_0" / "metrics.csv"


def logged_threads(metrics: Path) -> list[tuple[int, int]]:
    with metrics.open() as fh:
        return [
            (int(row["step"]), int(float(row["threads"]))) for row in csv.DictReader(fh) if row.get("threads")
        ]


@pytest.fixture
def two_threads() -> Iterator[None]:
    """torch runs 2 threads during the test; the count before comes back afterwards."""
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(before)


SMALL_WINDOWS = {"window_steps": 4, "window_seconds": 0.0, "settle_seconds": 0.0}


@pytest.mark.usefixtures("two_threads")
def test_the_callback_follows_contention_in_a_fit_and_logs_each_change(tmp_path: Path) -> None:
    machine = Machine()
    clock = SimulatedClock(machine, busy_from_step=20)
    callback = AdaptiveThreadsCallback(top=2, clock=clock, waiting=machine.waiting, **SMALL_WINDOWS)
    metrics = fit(tmp_path, callback, steps=60)
    assert clock.seen[:20] == [2] * 20
    assert clock.seen[-1] == 1 and clock.seen[20:].count(1) > 25
    logged = logged_threads(metrics)
    assert logged[0] == (0, 2)  # the start count, when training starts
    assert logged[1][1] == 1 and 20 < logged[1][0] < 35  # once per change, at its step
    assert [count for _, count in logged] == [2, 1]
    assert torch.get_num_threads() == 2  # the start count is back after the fit


@pytest.mark.usefixtures("two_threads")
def test_the_callback_puts_the_count_back_after_a_failed_fit(tmp_path: Path) -> None:
    machine = Machine()
    clock = SimulatedClock(machine, busy_from_step=0)
    callback = AdaptiveThreadsCallback(top=2, clock=clock, waiting=machine.waiting, **SMALL_WINDOWS)
    with pytest.raises(RuntimeError, match="a failing step"):
        fit(tmp_path, callback, steps=60, fails_at=40)
    assert 1 in clock.seen
    assert torch.get_num_threads() == 2


def test_a_raw_loop_steps_and_closes(two_threads: None) -> None:
    machine = Machine()
    machine.busy = True
    adaptive = AdaptiveThreads(2, clock=lambda: machine.now, waiting=machine.waiting, **SMALL_WINDOWS)
    changes: list[int] = []
    adaptive.on_change = changes.append
    for _ in range(40):
        machine.now += Machine.BUSY[torch.get_num_threads()]
        adaptive.step()
    assert torch.get_num_threads() == adaptive.threads == 1 and changes[0] == 1
    adaptive.close()
    assert torch.get_num_threads() == 2


@pytest.fixture
def no_applied_policy(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """The test's policies are applied to a restored environment and forgotten afterwards."""
    monkeypatch.setattr(thread_module, "_APPLIED", None)
    for name in ("GAAF_THREADS", "OMP_NUM_THREADS", "GOMP_SPINCOUNT", "OMP_WAIT_POLICY"):
        monkeypatch.delenv(name, raising=False)
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


@pytest.mark.usefixtures("no_applied_policy")
@pytest.mark.parametrize(
    ("environ", "follows"),
    [({}, True), ({"GAAF_THREADS": "auto"}, True), ({"GAAF_THREADS": "off"}, False),
     ({"GAAF_THREADS": "2"}, False), ({"OMP_NUM_THREADS": "2"}, False)],
)  # fmt: skip
def test_only_an_automatic_policy_follows_the_load(environ: dict[str, str], follows: bool) -> None:
    os.environ.update(environ)
    assert adaptive_threads_callbacks() == []  # nothing applied yet
    policy = choose_thread_policy(cores=2, machine_cores=2, load=0.0)
    apply_thread_policy(policy)
    assert policy.follows_load is follows
    assert ("follows the load (1-2; " in policy.describe()) is follows
    callbacks = adaptive_threads_callbacks()
    assert len(callbacks) == int(follows)
    if follows:
        assert isinstance(callbacks[0], AdaptiveThreadsCallback) and callbacks[0].top == 2
        os.environ["GAAF_THREADS"] = "off"  # the environment no longer asks for it
        assert adaptive_threads_callbacks() == []


@pytest.mark.usefixtures("no_applied_policy")
def test_a_count_divided_by_the_program_is_the_most_it_tries() -> None:
    apply_thread_policy(choose_thread_policy(cores=4, machine_cores=4, load=0.0))
    assert adaptive_threads_callbacks()[0].top == 4
    torch.set_num_threads(2)  # e.g. gaaf-tune giving each of its two workers cores / workers
    assert adaptive_threads_callbacks()[0].top == 2
    torch.set_num_threads(1)
    assert adaptive_threads_callbacks() == []  # nothing left to follow
    assert adaptive_threads_callbacks([AdaptiveThreadsCallback()]) == []  # one is there already


@pytest.mark.usefixtures("no_applied_policy")
def test_gaaf_fit_follows_the_load_under_auto(tmp_path: Path, mnist_dir: Path) -> None:
    env = {**fit_env(mnist_dir), "GAAF_THREADS": "auto"}
    env.pop("OMP_NUM_THREADS", None)
    result = fit_in_process(
        "--config", "mnist_base", *tiny(1, 4), "--trainer.logger", "pytorch_lightning.loggers.CSVLogger",
        "--trainer.logger.save_dir", "csv", cwd=tmp_path, env=env,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    header = result.stdout.splitlines()[0]
    assert header.startswith("gaaf-fit: threads: ") and " at start, follows the load (1-" in header, header
    (metrics,) = (tmp_path / "csv").rglob("metrics.csv")
    assert logged_threads(metrics)[0][0] == 0  # the callback ran: the start count at step 0
