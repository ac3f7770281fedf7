"""The reproduction tables' layout and comparisons, on hand-computable numbers (no training)."""

import json
from pathlib import Path

import pytest

from lightning_gaaf.cli.reproduce import tables as rt
from lightning_gaaf.cli.reproduce.statistics import holm

RESULTS = Path(__file__).resolve().parents[1] / "docs" / "results"


def runs_of(values: dict[str, list[float]], key: str = "test_acc") -> dict[str, list[dict]]:
    return {m: [{"seed": s, key: v} for s, v in enumerate(vs)] for m, vs in values.items()}


def test_paired_comparisons_are_holm_adjusted_per_measure():
    runs = runs_of({"gaaf": [1.0, 2.0, 3.0], "dropout": [0.0, 0.0, 1.0], "base": [0.0, 0.5, 0.0]})
    rows = rt.paired_comparisons(runs, "test_acc")
    assert [(r["a"], r["b"]) for r in rows] == list(rt.PAIRS)
    assert rows[0]["p_value"] == pytest.approx(0.03775, abs=1e-4)  # differences 1, 2, 2: t = 5, 2 df
    assert [r["p_holm"] for r in rows] == holm([r["p_value"] for r in rows])
    text = rt.comparison_table(runs, [("test accuracy, points", "test_acc", 2)])
    line = next(x for x in text.splitlines() if x.startswith("| gaaf - dropout |"))
    assert "+1.67 (0.58)" in line and f"| {rows[0]['p_holm']:.2g} | 3 |" in line
    assert "over the 3 comparisons" in text and "seed-to-seed variation only" in text


def test_one_seed_shows_no_spread():
    one = {m: [{"seed": 0, "test_acc": 98.0, "epochs_to_converge": 12, "hit_cap": False}] for m in rt.MODELS}
    table = rt.table4("mnist", one)
    assert "| base | 98.00 | 12.0 | 1 | 0 | 98.23 | 82 |" in table
    assert "(0.00)" not in table and "| comparison |" not in table  # no pairs to compare with one seed


def test_published_tables_rebuild_from_their_results():
    """The tables in docs/results are what tables_from_results makes of the results beside them."""
    for study in ("mnist", "mnist_slow", "fashion_mnist", "mnist_tuned"):
        folder = RESULTS / study
        (path,) = folder.glob("results*.json")
        for name, text in rt.tables_from_results(json.loads(path.read_text())).items():
            assert (folder / name).read_text() == text, f"{study}/{name} is stale"


def test_paper_columns_and_the_unmeasured_last_layer():
    results = json.loads((RESULTS / "mnist_slow" / "results.json").read_text())
    tables = rt.tables_from_results(results)
    t2 = tables["table2.md"].splitlines()
    assert t2[0] == "| layer | base | dropout | gaaf | paper: base | paper: dropout | paper: gaaf † |"
    assert next(x for x in t2 if x.startswith("| backbone.fc3 |")).endswith(
        "| 9.35e-05 | 5.83e-04 | 1.78e-04 |"
    )
    assert "without saying which layer comes first" in tables["table2.md"]
    assert "| dropout | backbone.act3 | 256 | 176 (0.5 %) |" in tables["table1.md"]
    assert next(x for x in tables["table1.md"].splitlines() if "| dropout | backbone.act3 |" in x).endswith(
        "| 174 |"
    )
    t3 = tables["table3.md"]
    assert "| dropout | backbone.act2 | 0.2526 (0.0064) | 3 | 1.07 |" in t3
    assert "| dropout | last (output) layer | not measured | — | 1.97 |" in t3
    fashion = rt.tables_from_results(json.loads((RESULTS / "fashion_mnist" / "results.json").read_text()))
    assert "paper" not in fashion["table2.md"].splitlines()[0]  # the paper has no Fashion-MNIST numbers


def test_rebuild_command_writes_the_tables(tmp_path, capsys):
    rt.main([str(RESULTS / "mnist_tuned" / "results_tuned.json"), "--out", str(tmp_path)])
    assert capsys.readouterr().out.split() == [str(tmp_path / "table4_tuned.md")]
    table = (tmp_path / "table4_tuned.md").read_text()
    row = next(x for x in table.splitlines() if x.startswith("| gaaf - dropout | test accuracy"))
    assert "| +0.21 (0.15) | [+0.03, +0.40] | 0.032 | 0.097 | 5 |" in row
    with pytest.raises(SystemExit) as exc:
        rt.main([str(tmp_path / "missing.json")])
    assert exc.value.code == 2 and "is not a file" in capsys.readouterr().err
