"""The report figures are readable: tick labels apart, axes named, values on the panel they belong to."""

import math

import matplotlib.image as mpimg
import optuna
import pytest
from optuna.distributions import FloatDistribution
from optuna.trial import TrialState, create_trial

from lightning_gaaf.cli.tune.outputs import plot_history
from lightning_gaaf.stats import plots


def visible(fig):
    return [ax for ax in fig.axes if ax.get_visible()]


def shown_tick_labels(ax):
    """The x tick labels inside the axis range, after drawing (what a reader sees)."""
    ax.figure.canvas.draw()
    low, high = sorted(ax.get_xlim())
    return [t for t in ax.get_xticklabels() if t.get_text() and low <= t.get_position()[0] <= high]


def assert_apart(labels):
    boxes = [t.get_window_extent() for t in labels]
    for left, right in zip(boxes, boxes[1:], strict=False):
        assert left.x1 < right.x0, f"tick labels overlap: {[t.get_text() for t in labels]}"


def test_long_step_axes_have_few_separate_thousands_labels():
    steps = list(range(0, 80_000, 100))
    stats = {
        "steps": steps,
        "layers": {f"fc{i}": [1e-3 + 1e-6 * j for j in range(len(steps))] for i in range(4)},
    }
    fig = plots._lines(
        [("base", stats), ("gaaf", stats)],
        "gradient information per layer",
        "mean |dE/dW|",
        lambda s, n: s["layers"][n],
        log=True,
    )
    for ax in visible(fig):
        labels = shown_tick_labels(ax)
        texts = [t.get_text() for t in labels]
        assert 3 <= len(texts) <= 6 and all(t == "0" or t.endswith("k") for t in texts), texts
        assert_apart(labels)
        assert ax.get_xlabel() == "step" and ax.get_ylabel() == "mean |dE/dW|"
    assert (
        plots._count_label(20_000) == "20k"
        and plots._count_label(2_500) == "2.5k"
        and plots._count_label(500) == "500"
    )


def test_metrics_panels_name_their_axes_and_test_values_sit_on_validation_panels():
    epochs = [
        {
            "epoch": e,
            "step": 390 * e,
            "train/loss": 1 / e,
            "val/loss": 0.5 / e,
            "train/acc": 0.9,
            "val/acc": 0.95,
            "lr-SGD": 0.05,
        }
        for e in range(1, 26)
    ]
    runs = [
        ("base", {"epochs": epochs, "test": {"test/acc": 0.982, "test/loss": 0.0717}}),
        ("GAAF", {"epochs": epochs, "test": {"test/acc": 0.9735, "test/loss": 0.0914}}),
    ]
    fig = plots.metrics_figure(runs)
    axes = {ax.get_title(): ax for ax in visible(fig)}
    assert list(axes) == [
        "train/loss",
        "val/loss",
        "train/acc",
        "val/acc",
        "lr-SGD",
    ]  # no "(test: ...)" in titles
    assert {t: ax.get_ylabel() for t, ax in axes.items()} == {
        "train/loss": "loss",
        "val/loss": "loss",
        "train/acc": "accuracy",
        "val/acc": "accuracy",
        "lr-SGD": "learning rate",
    }
    notes = {t: [x.get_text() for x in ax.texts] for t, ax in axes.items()}
    assert notes["val/acc"] == ["test/acc: 0.982 (base)", "test/acc: 0.9735 (GAAF)"]
    assert notes["val/loss"] == ["test/loss: 0.0717 (base)", "test/loss: 0.0914 (GAAF)"]
    assert notes["train/loss"] == notes["train/acc"] == notes["lr-SGD"] == []
    for ax in axes.values():
        assert ax.get_xlabel() == "epoch"
        texts = [t.get_text() for t in shown_tick_labels(ax)]
        assert texts and all(float(t).is_integer() for t in texts)


def test_test_metric_without_a_validation_panel_goes_under_the_title():
    stats = {"epochs": [{"epoch": 1, "step": 1, "train/loss": 0.3}], "test": {"test/acc": 0.9}}
    fig = plots.metrics_figure([("", stats)])
    assert fig.get_suptitle() == "training curves\ntest/acc: 0.9"
    (ax,) = visible(fig)
    assert list(ax.texts) == [] and ax.get_title() == "train/loss"


@pytest.fixture
def study():
    study = optuna.create_study(study_name="mnist_gaaf", direction="maximize")
    space = {"lr": FloatDistribution(1e-3, 1.0, log=True)}
    for n in range(20):
        state = TrialState.COMPLETE if n < 5 or n == 12 else TrialState.PRUNED
        study.add_trial(
            create_trial(state=state, value=0.9 + 0.003 * (n % 7), params={"lr": 0.01}, distributions=space)
        )
    return study


def test_tuning_history_has_integer_trial_ticks(study, tmp_path):
    trials = [(t.number, t.state.name.lower(), t.value) for t in study.trials]
    fig = plots.history_figure(trials, "mnist_gaaf", "val/acc", maximize=True)
    (ax,) = visible(fig)
    labels = shown_tick_labels(ax)
    texts = [t.get_text() for t in labels]
    assert len(texts) >= 5 and [int(t) for t in texts] == list(
        range(0, 20, int(texts[1]))
    )  # 0.2, 0.4... before
    assert_apart(labels)
    assert ax.get_title() == "mnist_gaaf: optimisation history"
    assert (ax.get_xlabel(), ax.get_ylabel()) == ("trial", "best val/acc of the run")
    best_line = ax.get_lines()[0]
    assert list(best_line.get_ydata()) == [
        pytest.approx(v) for v in (0.9, 0.903, 0.906, 0.909, 0.912, 0.915, 0.915)
    ]

    path = plot_history(study, tmp_path / "history.png", "val/acc")
    image = mpimg.imread(path)
    assert image.shape[0] > 300 and image.shape[1] > 600 and not math.isnan(image.std())
