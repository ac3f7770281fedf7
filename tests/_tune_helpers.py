"""gaaf-tune and gaaf-reproduce inside the test process, and a stub fit for their bookkeeping.

Both programs run every fit through :func:`lightning_gaaf.run.fit_and_test` in their own process, so a
test can call their ``main`` directly: no 20-40 s of imports per program. :func:`run_program` gives the
exit status and output a program run would have and puts back what the programs change in their
process (working directory, environment, SIGINT/SIGTERM handlers, torch threads, Optuna's verbosity).
"""

from __future__ import annotations

import contextlib
import signal
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import _fit_helpers
import yaml
from _fit_helpers import FitResult

from lightning_gaaf.run.result import RunResult
from lightning_gaaf.stats import write_stats


@contextlib.contextmanager
def process_state() -> Iterator[None]:
    """Signal handlers, torch threads, Optuna's verbosity and the tune worker's signal record come back."""
    import optuna
    import torch

    from lightning_gaaf.cli.tune.trial import Signals

    handlers = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    threads, verbosity = torch.get_num_threads(), optuna.logging.get_verbosity()
    try:
        yield
    finally:
        for signum, handler in handlers.items():
            signal.signal(signum, handler)
        torch.set_num_threads(threads)
        optuna.logging.set_verbosity(verbosity)
        Signals.received = None


def run_program(
    main: Callable[[list[str]], Any], argv: Sequence[str], cwd: Path, env: dict[str, str]
) -> FitResult:
    """:func:`_fit_helpers.run_program`, and the process state the programs change comes back too."""
    with process_state():
        return _fit_helpers.run_program(main, argv, cwd, env)


def _option(args: Sequence[str], name: str, default: str | None = None) -> str | None:
    return args[args.index(name) + 1] if name in args else default


def stub_val_acc(lr: float) -> float:
    """The stub's objective: a smooth function of the learning rate with its best at 0.03."""
    return round(0.9 - abs(lr - 0.03), 6)


def stub_fit(args: Sequence[str], *, callbacks: Sequence[Any] = (), test: bool = True) -> RunResult:
    """A finished run without training: ``config.yaml`` and ``stats/metrics.json`` (the real stats
    writer) in the run directory, the matching :class:`RunResult`. Its val/acc comes from the learning
    rate of the last ``--config`` YAML override (a trial's values) or ``--model.optimizer.init_args.lr``,
    0.5 without one."""
    run_dir = Path(_option(args, "--run_dir")).absolute()
    overrides = [yaml.safe_load(a) for a in args[1:] if a.lstrip().startswith("{") or "\n" in a]
    values = overrides[-1] if overrides and isinstance(overrides[-1], dict) else {}
    lr = values.get("model", {}).get("optimizer", {}).get("init_args", {}).get("lr")
    if lr is None and "--model.optimizer.init_args.lr" in args:
        lr = float(_option(args, "--model.optimizer.init_args.lr"))
    acc = 0.5 if lr is None else stub_val_acc(lr)
    epochs = [
        {"epoch": e, "step": 4 * e, "val/acc": acc - 0.1 / e, "val/loss": 1.0 / e}
        for e in range(1, int(_option(args, "--trainer.max_epochs", "1")) + 1)
    ]
    tested = {"test/acc": acc, "test/loss": 0.5} if test else {}
    (run_dir / "stats").mkdir(parents=True, exist_ok=True)
    config = {"seed_everything": int(_option(args, "--seed_everything", "0")), "stub": values}
    (run_dir / "config.yaml").write_text(yaml.safe_dump(config))
    write_stats(run_dir / "stats", "metrics", {"epochs": epochs, "test": tested})
    return RunResult(exit_code=0, run_dir=run_dir, epochs=epochs, test=tested)
