"""How a run stops: SIGTERM / Ctrl-C during a fit, and the exit code that says so.

:class:`StopSignals` records SIGTERM / SIGINT during a fit and turns the first SIGINT (Ctrl-C) into the
same graceful stop as SIGTERM: Lightning finishes the current batch, the monitors and
:class:`~lightning_gaaf.run.checkpoints.LastCheckpoint` save what they have, and the run ends with
:func:`exit_code` (128 + signal number: 143 for SIGTERM, 130 for SIGINT). A second SIGINT stops at
once. Lightning's SLURM handlers (SIGUSR1 requeue) are left alone.
"""

from __future__ import annotations

import signal
from types import FrameType, TracebackType
from typing import Any

__all__ = ["StopSignals", "exit_code"]


class StopSignals:
    """Context manager: record SIGTERM / SIGINT; inside Lightning's fit, SIGINT stops like SIGTERM.

    Lightning installs its SIGTERM handler when ``fit`` / ``test`` start and calls the handler found
    before it too, so the recorder installed here still sees SIGTERM; Lightning's handler sets the flag
    its loops check between batches (and under DDP tells the other ranks). The first SIGINT is passed to
    that handler as a SIGTERM, so it stops just as gracefully (under DDP the launcher forwards SIGTERM to
    the worker processes). Outside Lightning's run, and for a second SIGINT, Python's
    ``KeyboardInterrupt`` is raised as usual; SIGTERM outside the run raises ``SystemExit(143)``.

    ``received`` is the first signal recorded (``None`` without one). The previous handlers are put back
    on exit.
    """

    def __init__(self) -> None:
        self.received: int | None = None
        self._sigints = 0
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> StopSignals:
        for signum, handler in ((signal.SIGTERM, self._on_sigterm), (signal.SIGINT, self._on_sigint)):
            self._previous[signum] = signal.getsignal(signum)
            signal.signal(signum, handler)
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous = {}

    def _record(self, signum: int) -> None:
        if self.received is None:
            self.received = signum

    def _on_sigterm(self, signum: int, frame: FrameType | None) -> None:
        self._record(signum)
        if signal.getsignal(signal.SIGTERM) == self._on_sigterm:  # not inside Lightning's fit / test
            raise SystemExit(128 + signal.SIGTERM)

    def _on_sigint(self, signum: int, frame: FrameType | None) -> None:
        self._record(signum)
        self._sigints += 1
        lightning = signal.getsignal(signal.SIGTERM)
        if self._sigints > 1 or lightning == self._on_sigterm or not callable(lightning):
            raise KeyboardInterrupt
        lightning(signal.SIGTERM, frame)


def exit_code(exception: BaseException, received: int | None) -> int | None:
    """Exit status for an exception that ended the run because of a signal, else ``None``.

    128 + the signal number (143 SIGTERM, 130 SIGINT), the shells' convention for a process stopped by a
    signal. Lightning raises ``SIGTERMException`` (a ``SystemExit`` with status 0) after a graceful stop,
    and ``SystemExit(1)`` after handling a ``KeyboardInterrupt``.
    """
    from pytorch_lightning.utilities.exceptions import SIGTERMException

    if isinstance(exception, SIGTERMException):
        return 128 + (received if received is not None else signal.SIGTERM)
    if received is not None and isinstance(exception, (KeyboardInterrupt, SystemExit)):
        return 128 + received
    return None
