"""A thread count that follows the load while a run trains.

Why: the thread policy (:mod:`lightning_gaaf.run.threads`) picks the count when the program
starts. Busy processes that arrive later make our OpenMP threads wait for a core: on two cores
with two busy processes, an epoch of the paper MLP took 4.4x its idle time with two threads, but
1.6x with one (docs/results/threads.md). So, while training, each window of steps is judged by
how long our threads waited on a run queue (the kernel's own account, :class:`RunQueueWait`) and
by its step time: when our threads start waiting, fewer threads are tried; when they stop, more;
a try is kept only when its steps are not slower. The step times decide, so a CPU quota or a
container changes nothing; without the run-queue account (not Linux), step times alone say when
to try.

* :class:`ThreadCountChooser` -- the decision, from numbers alone (no torch, no clock): testable.
* :class:`AdaptiveThreads` -- for a raw loop: ``step()`` once per batch sets torch's thread count.
* :class:`~lightning_gaaf.run.adaptive_threads_callback.AdaptiveThreadsCallback` -- the same in
  a Lightning fit; the programs add it when their thread policy is ``GAAF_THREADS=auto``.

A change of count changes float rounding (docs/results/threads.md): a seeded run repeats bit for
bit only with a fixed count (``GAAF_THREADS=N`` or ``off``).
"""

from __future__ import annotations

import os
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

__all__ = ["AdaptiveThreads", "RunQueueWait", "ThreadCountChooser", "thread_levels"]


def thread_levels(top: int, start: int | None = None) -> tuple[int, ...]:
    """The counts worth trying up to ``top``: 1, the powers of two, ``start`` and ``top`` itself."""
    top = max(1, top)
    levels = {1, top} | {2**k for k in range(top.bit_length()) if 2**k <= top}
    if start is not None:
        levels.add(min(max(1, start), top))
    return tuple(sorted(levels))


class ThreadCountChooser:
    """Which thread count the next step should run with, from step times and how long our threads
    waited for a CPU.

    :meth:`observe` takes each step's seconds and the time now. Steps are judged in windows of at
    least ``window_steps`` steps and ``window_seconds`` seconds: the window's median step time (a
    checkpoint or a logging step does not count) and, from ``waiting`` (called once a window), the
    share of the time our runnable threads waited for a CPU since its last call (None: unknown).
    A window is *busy* when that share is at least ``busy``, *free* at most ``free``, else as the
    one before. Without that measure, a median ``change`` times slower than the last judged one
    counts as busy, ``change`` times faster as free.

    A *probe* runs the neighbouring count for one window, after ``settle_steps`` steps and
    ``settle_seconds`` left out for the switch, and keeps it when it is not slower (fewer threads in
    a busy window), not slower by ``margin`` (more threads in a free one) or faster by ``margin``
    (the other way): ties go to more threads, the idle machine's best.
    Probes of fewer threads start one window after a window turns busy (that one may hold steps
    from before), and every ``reprobe`` seconds while busy, doubling up to ``max_reprobe`` while
    probes keep the count. Probes of more threads start at a free window, and end at once when
    ``abort_steps`` of their steps take ``abort`` times the median before (more threads under load
    are several times slower); after each such failure, one more free
    window in a row is asked for, doubling up to ``max_free_windows``. Without the waiting
    measure, ``reprobe`` tries more and fewer threads alternately.
    """

    def __init__(
        self,
        levels: tuple[int, ...],
        start: int,
        waiting: Callable[[], float | None] | None = None,
        *,
        window_steps: int = 6,
        window_seconds: float = 0.1,
        busy: float = 0.2,
        free: float = 0.1,
        change: float = 1.3,
        margin: float = 1.15,
        settle_steps: int = 1,
        settle_seconds: float = 0.05,
        abort_steps: int = 2,
        abort: float = 1.5,
        reprobe: float = 2.0,
        max_reprobe: float = 64.0,
        max_free_windows: int = 8,
    ) -> None:
        if start not in levels:
            raise ValueError(f"start count {start} is not among the levels {levels}")
        self.levels, self.count, self.waiting = levels, start, waiting
        self.window_steps, self.window_seconds = window_steps, window_seconds
        self.busy, self.free, self.change, self.margin = busy, free, change, margin
        self.settle_steps, self.settle_seconds = settle_steps, settle_seconds
        self.abort_steps, self.abort = abort_steps, abort
        self.reprobe, self.max_reprobe, self.max_free_windows = reprobe, max_reprobe, max_free_windows
        self.probes = 0
        self._interval = reprobe
        self._next_probe: float | None = None
        self._times: list[float] = []
        self._total = 0.0  # their sum
        self._skip: tuple[int, float] | None = None  # steps and seconds still left out after a switch
        self._reference: float | None = None  # the median of the last window judged at ``count``
        self._state = "free"  # busy / free, as the last window judged it
        self._judged = "free"  # the state the last decision was taken in
        self._probe: tuple[int, float, str] | None = None  # count before the probe, median, state
        self._up_next = False
        self._pending: str | None = None  # a state that turned up: probe after one more window
        self._slow = 0  # steps of a probe of more threads that took ``abort`` times the steps before
        self._free_run = 0  # free windows in a row
        self._free_needed = 1  # ... before more threads are tried (doubled by each wrong try)

    def observe(self, seconds: float, now: float) -> int:
        """Record one step of ``seconds`` ending at ``now``; return the count for the next step."""
        if self._probe is not None and self.count > self._probe[0]:
            # More threads under load: several times slower at once; end the probe then.
            self._slow += seconds > self.abort * self._probe[1]
            if self._slow >= self.abort_steps:
                self._end_probe(False, now)
                return self.count
        if self._skip is not None:
            self._skip = (self._skip[0] - 1, self._skip[1] - seconds)
            if self._skip[0] <= 0 and self._skip[1] <= 0:
                self._skip = None
            return self.count
        self._times.append(seconds)
        self._total += seconds
        if len(self._times) < self.window_steps or self._total < self.window_seconds:
            return self.count
        median = statistics.median(self._times)
        self._times.clear()
        self._total = 0.0
        self._state = self._window_state(median)
        if self._probe is not None and self._probe[2] != self._state:
            # The load changed during the probe: the windows are not comparable. The probed count's
            # window is the new starting point, and the count before is tried again from there.
            before = self._probe[0]
            self._probe = None
            self._try(1 if before > self.count else -1, median, now)
            return self.count
        if self._probe is not None:
            # Fewer threads in a busy window are kept unless slower, more threads in a free one
            # unless slower by ``margin``; the other way only when faster by ``margin``.
            before, up = self._probe[1], self.count > self._probe[0]
            if up == (self._state != "busy"):
                keep = median <= before * (self.margin if up else 1.0)
            else:
                keep = median * self.margin < before
            self._end_probe(keep, now, median)
            return self.count
        if self._reference is None:  # the first window; the start count assumed a free CPU
            self._reference, self._next_probe = median, now + self._interval
        self._free_run = self._free_run + 1 if self._state == "free" else 0
        if self._free_run >= self._free_needed and self.count < self.levels[-1]:
            # The load went (or our threads wait no more): more threads at once, a wrong try ends
            # within its first steps. After each wrong one, more free windows in a row are asked for.
            self._judged, self._free_run = self._state, 0
            self._try(+1, median, now)
        elif self._state != self._judged:
            # The load came: this window may hold steps from before, the next one is the baseline.
            self._judged = self._state
            self._pending = self._state if self._state == "busy" else None
        elif self._pending == self._state:
            self._pending = None
            self._try(-1, median, now)
        elif self._next_probe is not None and now >= self._next_probe:
            if self.waiting is None:  # no other sign: alternately more threads and fewer
                self._up_next = not self._up_next
                first = +1 if self._up_next else -1
                self._try(first, median, now) or self._try(-first, median, now)
            elif self._state == "busy":  # fewer threads while our threads wait for a CPU
                self._try(-1, median, now)
        return self.count

    def _window_state(self, median: float) -> str:
        share = self.waiting() if self.waiting is not None else None
        if share is not None:
            return "busy" if share >= self.busy else "free" if share <= self.free else self._state
        # No such measure: a step time ``change`` times the last judged one's says the load changed.
        if self._reference is None or self._probe is not None:
            return self._state
        if median > self._reference * self.change:
            return "busy"
        return "free" if median * self.change < self._reference else "steady"

    def _try(self, direction: int, median: float, now: float) -> bool:
        i = self.levels.index(self.count) + direction
        if not 0 <= i < len(self.levels):  # nothing to try that way: this is the new normal
            self._reference = median
            self._next_probe = now + self._interval
            return False
        self._probe = (self.count, median, self._state)
        self._slow = 0
        self.count = self.levels[i]
        self._skip = (self.settle_steps, self.settle_seconds)
        self.probes += 1
        return True

    def _end_probe(self, keep: bool, now: float, median: float | None = None) -> None:
        before, before_median, _ = self._probe or (self.count, 0.0, self._state)
        self._probe = None
        self._times.clear()
        self._total = 0.0
        if keep and median is not None:
            self._reference, self._interval = median, self.reprobe
            self._free_needed = 1
            if self.waiting is None:
                self._state = "steady"  # judged by step times: the new count's are the new normal
        else:
            if self.count > before and self.waiting is not None:
                self._free_needed = min(self._free_needed * 2, self.max_free_windows)
            self.count, self._reference = before, before_median
            self._interval = min(self._interval * 2, self.max_reprobe)
            self._skip = (self.settle_steps, self.settle_seconds)
        self._judged = self._state
        self._next_probe = now + self._interval


class RunQueueWait:
    """The share of the time this process's runnable threads waited for a CPU since the last call.

    Read from the kernel's per-thread scheduler statistics (``/proc/self/task/*/schedstat``: time
    run, time waited on a run queue), so it counts what our threads lost to other work, whatever
    its niceness, and nothing they did not want (sleeping threads, a CPU quota's unused share).
    None where the kernel does not provide them, and on the first call. About 0.1 ms a call.
    """

    def __init__(self, tasks: Path = Path("/proc/self/task")) -> None:
        self.tasks = tasks
        self._last: tuple[int, int] | None = None

    def _totals(self) -> tuple[int, int] | None:
        run = wait = 0
        try:
            names = os.listdir(self.tasks)
        except OSError:
            return None
        for name in names:
            try:
                fields = (self.tasks / name / "schedstat").read_text().split()
            except OSError:  # a thread that ended meanwhile
                continue
            run, wait = run + int(fields[0]), wait + int(fields[1])
        return run, wait

    def __call__(self) -> float | None:
        totals, last = self._totals(), self._last
        self._last = totals
        if totals is None or last is None:
            return None
        run, wait = totals[0] - last[0], totals[1] - last[1]
        return wait / (run + wait) if run + wait > 0 else None


class AdaptiveThreads:
    """torch's intra-op thread count, following the step time of a raw training loop.

    Call :meth:`step` once per batch (it times the interval since the last call), :meth:`pause`
    before a gap that is no training step (evaluation, waiting), and :meth:`close` at the end,
    which puts back the count found at the start. ``top`` (default: the start count) is the most
    threads it tries; ``clock`` (default ``time.perf_counter``) can be any source of seconds, and
    ``waiting`` any measure of contention (default :class:`RunQueueWait`; None: step times only);
    ``on_change`` is called with each new count. Its cost: a clock reading and a list append per
    step, a median and a ``waiting()`` per window.
    """

    def __init__(
        self,
        top: int | None = None,
        *,
        clock: Callable[[], float] = time.perf_counter,
        waiting: Callable[[], float | None] | None | str = "kernel",
        on_change: Callable[[int], None] | None = None,
        **chooser_options: Any,
    ) -> None:
        import torch

        self._torch = torch
        self.initial = torch.get_num_threads()
        top = max(self.initial, top or self.initial)
        if waiting == "kernel":
            waiting = RunQueueWait()
            waiting()  # the starting point
        self.chooser = ThreadCountChooser(
            thread_levels(top, self.initial), self.initial, waiting, **chooser_options
        )
        self.clock, self.on_change = clock, on_change
        self.changes = 0
        self._last: float | None = None

    @property
    def threads(self) -> int:
        """The count the next step runs with."""
        return self.chooser.count

    def step(self, seconds: float | None = None, now: float | None = None) -> int:
        """One training step ended (``seconds`` long, default: since the last call) at ``now``
        (default: the clock's time); returns the count for the next one."""
        now = self.clock() if now is None else now
        if seconds is None:
            last, self._last = self._last, now
            if last is None:
                return self.chooser.count
            seconds = now - last
        before = self.chooser.count
        count = self.chooser.observe(seconds, now)
        if count != before:
            self._torch.set_num_threads(count)
            self.changes += 1
            if self.on_change is not None:
                self.on_change(count)
        return count

    def pause(self) -> None:
        """The time until the next :meth:`step` is no training step: it is not counted."""
        self._last = None

    def close(self) -> None:
        """Put back the thread count found at the start."""
        if self._torch.get_num_threads() != self.initial:
            self._torch.set_num_threads(self.initial)
