"""The learning-rate study's tables from hand-made run records: paired comparisons, censoring, McNemar."""

import argparse
from pathlib import Path

import numpy as np
import pytest
from scipy import stats

from lightning_gaaf.cli.reproduce import grad_gain, lr_tables
from lightning_gaaf.cli.reproduce import lr_plan as lp
from lightning_gaaf.cli.reproduce.lr_tables import write_tables

CAP = 20
#: Whole table files the tests below must reproduce line for line (the output folder as ``<tmp>``).
EXPECTED = Path(__file__).parent / "expected"
GRID = (0.1, 0.2, 0.4)
STEPS = 100
N_IMAGES = 200


def curve(hits: dict[float, int], length: int) -> list[dict]:
    """Epoch records whose val accuracy first reaches each target at the given epoch."""
    epochs = []
    for e in range(1, length + 1):
        acc = max([90.0] + [t for t, at in hits.items() if e >= at])
        epochs.append({"epoch": e, "step": e * STEPS, "val_acc": acc, "val_loss": 1.0 / e, "time_s": 1.0})
    return epochs


def record(model, lr, seed, hits, test_acc, length=10, correct=None, folder=None, score=97.0):
    name = f"{model}_lr{lp.lr_label(lr)}_seed{seed}"
    if correct is not None:
        (folder / "predictions").mkdir(parents=True, exist_ok=True)
        label = np.arange(N_IMAGES, dtype=np.uint8) % 10
        pred = np.where(correct, label, (label + 1) % 10).astype(np.uint8)
        np.savez(folder / "predictions" / f"{name}.npz", pred=pred, label=label)
    return {
        "dataset": "mnist", "protocol": "no_momentum", "model": model, "lr": lr, "seed": seed,
        "max_epochs": CAP, "steps_per_epoch": STEPS, "epochs_trained": length, "hit_cap": length >= CAP,
        "best_epoch": length, "best_val_acc": score, "best_val_loss": 0.1, "test_acc": test_acc,
        "epochs": curve(hits, length), "predictions": None if correct is None else f"predictions/{name}.npz",
    }  # fmt: skip


@pytest.fixture
def tables(tmp_path: Path) -> str:
    folder = tmp_path / "out" / "mnist" / "no_momentum"
    records = []
    for model in lp.MLP_MODELS:  # the selection runs: 0.2 is best for every model, not at an edge
        records += [record(model, lr, 0, {}, 90.0, score=96.0) for lr in (0.1, 0.4)]
    rng = np.random.default_rng(0)
    base_correct = rng.random((3, N_IMAGES)) < 0.9
    gaaf_correct = base_correct.copy()
    gaaf_correct[:, :4] = True  # gaaf right where base may be wrong on the first 4 images of each seed
    gaaf_correct[:, 4] = False
    base_hits, gaaf_hits = (3, 4, 5), (2, 2, 3)  # gaaf - base at 97.0: -1, -2, -2 epochs
    for seed in range(3):
        records.append(record("base", 0.2, seed, {97.0: base_hits[seed], 98.0: 8}, 98.0 + 0.1 * seed,
                              correct=base_correct[seed], folder=folder))  # fmt: skip
        records.append(record("gaaf", 0.2, seed, {97.0: gaaf_hits[seed], 98.0: 6}, 98.2 + 0.1 * seed,
                              correct=gaaf_correct[seed], folder=folder))  # fmt: skip
        dropout_hits = {97.0: 6} if seed == 1 else {97.0: 6, 98.0: 9}  # seed 1 never reaches 98
        records.append(record("dropout", 0.2, seed, dropout_hits, 97.9, length=14 if seed == 1 else 10))
    records.append(record(lp.CONTROL, 0.2, 0, {97.0: 7}, 97.5))  # one seed only
    records = [r | {"best_val_acc": 97.0} if r["lr"] == 0.2 and r["seed"] == 0 else r for r in records]
    args = argparse.Namespace(
        studies=[("mnist", "no_momentum")], out=tmp_path / "out", max_extensions=0,
        grids={"no_momentum": GRID}, grid=None, max_epochs=CAP, patience=5,
        datasets=["mnist"], protocols=["no_momentum"],
    )  # fmt: skip
    written = write_tables(args, records)
    assert folder / "tables.md" in written
    return (folder / "tables.md").read_text()


def row(text: str, start: str) -> list[str]:
    line = next(x for x in text.splitlines() if x.startswith(start))
    return [c.strip() for c in line.strip("|").split("|")]


def test_time_to_target_is_paired_by_seed_and_holm_adjusted(tables):
    cells = row(tables, "| gaaf - base | 97.0 |")
    # differences -1, -2, -2: mean -5/3, sample std 1/sqrt(3), t = -5 with 2 df
    p = 2 * stats.t.cdf(-5, 2)
    assert cells[2] == "3 (0)" and cells[3].startswith("-1.7 (0.6) [")
    assert cells[4].startswith("-167 (58) [") and cells[5] == f"{p:.2g}"
    caption = tables.split("\n\n| comparison | target val acc %")[0].rsplit("\n\n", 1)[-1]
    assert "p (Holm): adjusted across the 12 comparisons of this table" in caption


def test_a_run_that_never_reaches_a_target_is_censored_where_it_stopped_not_at_the_cap(tables):
    """Early stopping ends most runs long before the cap: censoring at the cap would invent epochs."""
    assert row(tables, "| dropout | 0.2 | 98.0 |")[4] == "9.0 (0.0); not reached (1 run; stopped at epoch 14)"
    cells = row(tables, "| dropout - base | 98.0 |")
    # dropout 9, 14 (stopped early, censored), 9 against base 8, 8, 8: differences 1, 6, 1
    assert cells[2] == "3 (1)" and cells[3].startswith("+2.7 (2.9) [")
    assert cells[4].startswith(f"+{round(8 / 3 * STEPS)} (")  # steps: censored at the last epoch's step


def test_a_run_stopped_by_the_cap_says_so():
    runs = [record("dropout", 0.2, s, {}, 97.0, length=n) for s, n in ((0, CAP), (1, CAP))]
    assert lr_tables.not_reached_cell(runs) == f"not reached (2 runs; stopped at epoch {CAP} (the cap))"
    runs[1] = record("dropout", 0.2, 1, {}, 97.0, length=12)
    assert lr_tables.not_reached_cell(runs) == f"not reached (2 runs; stopped at epoch 12-{CAP})"


def test_one_seed_cells_show_no_spread_and_too_few_pairs_say_so(tables):
    assert row(tables, "| base_lrscale | 0.2 | 97.0 |")[4] == "7.0"
    cells = row(tables, "| base_lrscale - gaaf | 97.0 |")
    assert cells[2:7] == ["1 (0)", "n < 2", "n < 2", "n < 2", "n < 2"]
    assert row(tables, "| base_lrscale | 0.2 | 1 |")[3:] == ["10.0", "10.0", "0", "97.00", "97.50"]


def test_test_accuracy_gets_mcnemar_on_the_pooled_seeds_and_a_bootstrap(tables):
    rng = np.random.default_rng(0)
    base = rng.random((3, 200)) < 0.9
    gaaf_only = int(np.sum(~base[:, :4]))  # images gaaf gets right and base wrong
    base_only = int(np.sum(base[:, 4]))
    raw = stats.binomtest(gaaf_only, gaaf_only + base_only, 0.5).pvalue
    cells = row(tables, "| gaaf - base | 3 |")
    assert cells[2].startswith("+0.20 (0.00)") and cells[3] == "n/a"  # equal differences: no t-test
    assert cells[5] == f"{gaaf_only} / {base_only}"
    assert cells[6] == f"{raw:.2g} (raw {raw:.2g})"  # the only McNemar of the table: Holm leaves it
    low, high = (float(x) for x in cells[7].strip("[]").split(","))
    truth = 100 * (gaaf_only - base_only) / (3 * 200)
    assert low <= truth <= high
    assert row(tables, "| gaaf - dropout | 3 |")[5] == "no predictions"
    assert "p (Holm): adjusted across the 4 comparisons of this table" in tables


def test_the_rebuild_command_heads_the_tables(tables):
    head = tables.splitlines()[2]
    assert "by `gaaf-reproduce --lr-study --datasets mnist --protocols no_momentum --max-epochs 20" in head
    assert head.endswith("--tables-only`.")


def test_the_whole_table_text_is_unchanged(tables, tmp_path):
    """Every line of tables.md, against the file kept beside the tests: headings, captions, row and
    comparison order, number formats. Change that file only with a change meant to show in the tables."""
    expected = (EXPECTED / "lr_tables_mnist_no_momentum.md").read_text().splitlines()
    assert tables.replace(str(tmp_path), "<tmp>").splitlines() == expected


def test_the_gain_table_shows_gaaf_over_base_gradient_per_layer_at_shared_rates():
    """The check on the control's factors: measured GAAF / base ratios at every rate both trained."""
    layers = list(lp.GAAF_GRAD_RATIO)
    base = {layer: 1e-3 * (i + 1) for i, layer in enumerate(layers)}
    gaaf = {layer: v * (4.0 - i) for i, (layer, v) in enumerate(base.items())}
    recs = [{**record("base", lr, 0, {}, 90.0, score=98.0), "grad_info": base} for lr in (0.05, 0.1, 0.4)] + [
        {**record("gaaf", 0.05, 0, {}, 90.0, score=98.25), "grad_info": gaaf},
        {**record("gaaf", 0.1, 0, {}, 90.0, score=10.0), "grad_info": {**gaaf, layers[0]: float("nan")}},
        {**record("gaaf", 0.2, 0, {}, 90.0), "grad_info": gaaf},  # no base run at 0.2: no row
        {**record("gaaf", 0.4, 1, {}, 90.0), "grad_info": gaaf},  # not seed 0: no row
    ]
    lines = grad_gain.gain_table(recs, lp.PROTOCOLS["no_momentum"])
    assert lines[0].startswith(
        "Control `base_lrscale`: base at GAAF's rate with per-layer factors fc1 4.393, "
    )
    rows = [line for line in lines if line.startswith("| 0")]
    assert rows == [
        "| 0.05 | 4.00 | 3.00 | 2.00 | 1.00 | 98.00 / 98.25 |",
        "| 0.1 | n/a | 3.00 | 2.00 | 1.00 | 98.00 / 10.00 |",
    ]
    base_only = [r for r in recs if r["model"] == "base"]
    assert len(grad_gain.gain_table(base_only, lp.PROTOCOLS["no_momentum"])) == 2  # the factors alone
