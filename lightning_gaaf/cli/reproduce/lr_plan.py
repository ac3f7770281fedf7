"""The learning-rate studies' plan: which runs exist, which one each model's selection picks, what is next.

:data:`PROTOCOLS` says what each protocol trains (configs, models, initial grid, whether the control
runs) and what its tables compare (comparisons, validation-accuracy targets per dataset). Pure
functions over the finished runs' records (no training, no files), so that a study can be planned
again from whatever has finished: after an interruption, or while runs are in flight.

Per dataset, protocol and model: one run (seed 0) at every point of a log grid of learning rates;
the rate whose run scores best on validation is selected (:func:`score`); when that rate is at an
edge of the grid, the grid grows by one step (factor :data:`GRID_FACTOR`) on that side, at most
``max_extensions`` times per side. Once the selection is final, seeds 1..N-1 run at the selected
rate, and, in the protocols that have it, the control (base with GAAF's per-layer gradient ratios
as learning-rate factors) runs seeds 0..N-1 at GAAF's selected rate: if GAAF's advantage is only a
bigger effective step, base with those per-layer steps trains like GAAF at the same nominal rate.
The test set is never read here.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

CONTROL = "base_lrscale"
GRID_FACTOR = 2.0
#: The paper's MLP (``base``, ``dropout`` 0.5, ``gaaf``) on MNIST and Fashion-MNIST.
MLP_MODELS = ("base", "dropout", "gaaf")
MLP_DATASETS = ("mnist", "fashion_mnist")
#: Validation accuracy targets (%) of the MLP, fixed before any run.
MLP_TARGETS = {"mnist": (97.0, 97.5, 98.0), "fashion_mnist": (86.0, 88.0, 89.0)}
MLP_COMPARISONS = (("gaaf", "base"), ("gaaf", "dropout"), ("dropout", "base"), (CONTROL, "gaaf"))
#: GAAF / base gradient information per layer, mean over 3 seeds (docs/results/mnist_slow/table2.md).
GAAF_GRAD_RATIO = {
    "backbone.fc1": round(2.631e-03 / 5.989e-04, 3),
    "backbone.fc2": round(1.622e-03 / 6.736e-04, 3),
    "backbone.fc3": round(5.023e-04 / 3.588e-04, 3),
    "backbone.out": round(1.290e-03 / 1.394e-03, 3),
}


@dataclass(frozen=True)
class Protocol:
    """What one protocol of the per-model learning-rate studies trains, and how its tables compare it."""

    #: stem prefix of the published configs it trains: ``<prefix>_<model>.yaml``
    prefix: str
    description: str
    models: tuple[str, ...]
    #: the initial grid (factor :data:`GRID_FACTOR` apart): wide enough that each model's best should lie inside
    grid: tuple[float, ...]
    #: the paired comparisons ``a - b`` of its tables, in their order
    comparisons: tuple[tuple[str, str], ...]
    #: whether the control (:data:`CONTROL`: base with GAAF's per-layer gradient ratios) runs
    control: bool
    #: validation accuracy targets (%) per dataset, fixed before any run
    targets: Mapping[str, tuple[float, ...]]
    datasets: tuple[str, ...]

    def config(self, model: str) -> str:
        """The published config a model trains (the control trains base's)."""
        return f"{self.prefix}_{'base' if model == CONTROL else model}.yaml"


#: Every protocol the studies know, by name.
PROTOCOLS = {
    "no_momentum": Protocol(
        prefix="mnist_slow",
        description="SGD without momentum",
        models=MLP_MODELS,
        grid=(0.025, 0.05, 0.1, 0.2, 0.4, 0.8),
        comparisons=MLP_COMPARISONS,
        control=True,
        targets=MLP_TARGETS,
        datasets=MLP_DATASETS,
    ),
    "momentum": Protocol(
        prefix="mnist",
        description="SGD with momentum 0.9",
        models=MLP_MODELS,
        grid=(0.00625, 0.0125, 0.025, 0.05, 0.1, 0.2),
        comparisons=MLP_COMPARISONS,
        control=True,
        targets=MLP_TARGETS,
        datasets=MLP_DATASETS,
    ),
    # Table 5's question on Fashion-MNIST: the SVHN SmallCNN on 28x28 grayscale, with and without
    # batch-norm and GAAF (configs/fashion_mnist_cnn_*.yaml).
    "small_cnn": Protocol(
        prefix="fashion_mnist_cnn",
        description="SmallCNN, SGD with momentum 0.9, weight decay 5e-4, cosine decay",
        models=("base", "bn", "gaaf", "bn_gaaf"),
        grid=(0.00625, 0.0125, 0.025, 0.05, 0.1),
        comparisons=(("gaaf", "base"), ("bn_gaaf", "bn"), ("bn", "base"), ("bn_gaaf", "base")),
        control=False,
        targets={"fashion_mnist": (88.0, 89.0, 90.0)},
        datasets=("fashion_mnist",),
    ),
}
#: The protocols of the paper's MLP (the learning-rate and size studies').
MLP_PROTOCOLS = ("no_momentum", "momentum")
SELECTION = (
    "seed-0 run with the highest val/acc at its lowest-val/loss epoch (the checkpoint that is tested); "
    "ties go to the lower val/loss; a run that diverged or whose val/loss is never finite scores lowest"
)


@dataclass(frozen=True, order=True)
class Run:
    """One training run of the study."""

    dataset: str
    protocol: str
    model: str
    lr: float
    seed: int
    #: training images (``None``: the whole training split); only the size study sets it
    train_size: int | None = None

    @property
    def name(self) -> str:
        return f"{self.model}_lr{lr_label(self.lr)}_seed{self.seed}"

    @property
    def config(self) -> str:
        """The published config the run trains (``<prefix>_<model>.yaml``; the control trains base's)."""
        return PROTOCOLS[self.protocol].config(self.model)


def lr_label(lr: float) -> str:
    """A learning rate as it appears in file names: ``0.0125``, ``0.00625``."""
    return f"{lr:.6g}"


def score(record: Mapping[str, Any]) -> tuple[float, float]:
    """Selection key of a finished run (larger is better): (val acc at best epoch, -best val loss).

    A run that diverged scores lowest even when epochs before the divergence scored well: a rate at
    which training blows up is not one to train the seeds at."""
    acc, loss = record.get("best_val_acc"), record.get("best_val_loss")
    if record.get("diverged") or loss is None or not math.isfinite(loss) or acc is None:
        return (-math.inf, -math.inf)
    return (acc, -loss)


@dataclass
class Selection:
    """The state of one model's learning-rate selection."""

    grid: list[float]
    best_lr: float | None
    final: bool
    at_edge: str | None  # "low" / "high" when the best rate is at an edge of the grid (so far)
    scores: dict[float, tuple[float, float] | None]


def select(
    grid: Sequence[float], finished: Mapping[float, Mapping[str, Any]], max_extensions: int = 2
) -> Selection:
    """The grid so far (initial ``grid`` plus extensions), the best rate among finished grid runs,
    and whether the choice is final (every grid run finished, best not at an edge or no extension left).

    ``finished`` maps learning rate -> record of its finished seed-0 run.
    """
    points = sorted(grid)
    lo_ext = hi_ext = 0
    while True:
        if not all(_has(finished, lr) for lr in points):
            best = _best(points, finished)
            return Selection(points, best, False, None, _scores(points, finished))
        best = _best(points, finished)
        edge = "low" if best == points[0] else "high" if best == points[-1] else None
        if edge == "low" and lo_ext < max_extensions:
            lo_ext += 1
            points.insert(0, points[0] / GRID_FACTOR)
            continue
        if edge == "high" and hi_ext < max_extensions:
            hi_ext += 1
            points.append(points[-1] * GRID_FACTOR)
            continue
        return Selection(points, best, True, edge, _scores(points, finished))


def _has(finished: Mapping[float, Any], lr: float) -> bool:
    return any(math.isclose(lr, k, rel_tol=1e-9) for k in finished)


def _get(finished: Mapping[float, Any], lr: float) -> Any:
    return next((v for k, v in finished.items() if math.isclose(lr, k, rel_tol=1e-9)), None)


def _best(points: Sequence[float], finished: Mapping[float, Mapping[str, Any]]) -> float | None:
    done = [lr for lr in points if _has(finished, lr)]
    return max(done, key=lambda lr: score(_get(finished, lr))) if done else None


def _scores(
    points: Sequence[float], finished: Mapping[float, Any]
) -> dict[float, tuple[float, float] | None]:
    return {lr: (score(_get(finished, lr)) if _has(finished, lr) else None) for lr in points}


def index(records: Iterable[Mapping[str, Any]]) -> dict[tuple[str, str, str, int], dict[float, Any]]:
    """Finished runs by (dataset, protocol, model, seed) -> {lr: record}."""
    out: dict[tuple[str, str, str, int], dict[float, Any]] = {}
    for r in records:
        out.setdefault((r["dataset"], r["protocol"], r["model"], r["seed"]), {})[r["lr"]] = r
    return out


def plan(
    studies: Sequence[tuple[str, str]],
    records: Iterable[Mapping[str, Any]],
    seeds: int,
    max_extensions: int = 2,
    control: bool = True,
    grids: Mapping[str, Sequence[float]] | None = None,
    models: Sequence[str] | None = None,
) -> list[Run]:
    """Runs that can start now and have not finished, in priority order (``studies`` order first).

    Per study the protocol's models (those of them in ``models``, when given), each on ``grids[protocol]``
    (default the protocol's grid). Grid runs come first within a study, then the seeds of models whose
    selection is final, then the control (when ``control`` and the protocol has one) once GAAF's
    selection is final.
    """
    done = index(records)
    todo: list[Run] = []
    for dataset, protocol in studies:
        grid_runs, seed_runs = [], []
        proto = PROTOCOLS[protocol]
        for model in [m for m in proto.models if models is None or m in models]:
            grid0 = done.get((dataset, protocol, model, 0), {})
            sel = select(initial_grid(protocol, grids), grid0, max_extensions)
            grid_runs += [Run(dataset, protocol, model, lr, 0) for lr in sel.grid if not _has(grid0, lr)]
            if not sel.final or sel.best_lr is None:
                continue
            seed_runs += [
                Run(dataset, protocol, model, sel.best_lr, s)
                for s in range(1, seeds)
                if not _has(done.get((dataset, protocol, model, s), {}), sel.best_lr)
            ]
            if control and proto.control and model == "gaaf":
                seed_runs += [
                    Run(dataset, protocol, CONTROL, sel.best_lr, s)
                    for s in range(seeds)
                    if not _has(done.get((dataset, protocol, CONTROL, s), {}), sel.best_lr)
                ]
        todo += grid_runs + seed_runs
    return todo


def selections(
    dataset: str,
    protocol: str,
    records: Iterable[Mapping[str, Any]],
    max_extensions: int = 2,
    grids: Mapping[str, Sequence[float]] | None = None,
) -> dict[str, Selection]:
    """Each of the protocol's models' selection from the finished runs (for the tables); models
    without runs left out."""
    done = index(records)
    return {
        m: select(initial_grid(protocol, grids), done[key], max_extensions)
        for m in PROTOCOLS[protocol].models
        if (key := (dataset, protocol, m, 0)) in done
    }


def initial_grid(protocol: str, grids: Mapping[str, Sequence[float]] | None = None) -> Sequence[float]:
    """``grids[protocol]`` when given (``--grid``), else the protocol's own grid."""
    return grids[protocol] if grids is not None and protocol in grids else PROTOCOLS[protocol].grid
