"""What the study tests share: the studies' process pool replaced by runs in the test process."""

from __future__ import annotations

from concurrent.futures import Executor, Future


class InProcessExecutor(Executor):
    """The study's pool, running each submitted run at once in this process (no spawned workers)."""

    def __init__(self, max_workers: int | None = None, mp_context: object = None) -> None:
        pass

    def submit(self, fn, /, *args, **kwargs) -> Future:
        future: Future = Future()
        future.set_result(fn(*args, **kwargs))
        return future
