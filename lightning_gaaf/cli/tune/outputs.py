"""What ``gaaf-tune`` writes from a study: best config, trials table, optimisation history, summary.

Everything is drawn from the study's storage and the trials' run directories, so
``gaaf-tune CONFIG --report-only`` rewrites it at any time, also while workers are running.
"""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

import optuna
import yaml

from lightning_gaaf.cli.tune.trial import STORED_PRUNING

if TYPE_CHECKING:
    from lightning_gaaf.cli.tune.settings import TuneSettings


def _short(key: str) -> str:
    return key.removeprefix("model.").replace("init_args.", "")


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return "" if value is None else str(value)


def trial_rows(study: optuna.Study) -> list[dict[str, Any]]:
    """One row per trial: number, state, value, best epoch, epochs trained, wall time, parameters."""
    rows = []
    for t in study.get_trials(deepcopy=False):
        rows.append(
            {
                "number": t.number,
                "state": t.state.name.lower(),
                "value": t.value if t.values else None,
                "best_epoch": t.user_attrs.get("best_epoch"),
                "epochs_trained": t.user_attrs.get("epochs_trained"),
                "wall_time_s": t.user_attrs.get("wall_time_s"),
                **{f"param:{k}": v for k, v in t.params.items()},
                "run_dir": t.user_attrs.get("run_dir"),
            }
        )
    return rows


def write_trials_table(rows: list[dict[str, Any]], csv_path: Path, md_path: Path, metric: str) -> None:
    """``trials.csv`` (every column) and ``trials.md`` (without run directories)."""
    columns: list[str] = []
    for row in rows:
        columns += [c for c in row if c not in columns]
    with csv_path.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)
    shown = [c for c in columns if c != "run_dir"]
    header = [
        metric if c == "value" else (_short(c.removeprefix("param:")) if c.startswith("param:") else c)
        for c in shown
    ]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(shown)]
    lines += ["| " + " | ".join(_fmt(row.get(c)) for c in shown) + " |" for row in rows]
    md_path.write_text("\n".join(lines) + "\n")


def plot_history(study: optuna.Study, path: Path, metric: str) -> Path:
    """Each finished trial's value (complete: filled; pruned: hollow, its last reported value) and the
    best complete value so far, on integer trial ticks."""
    from lightning_gaaf.stats import plots

    trials = [
        (t.number, t.state.name.lower(), t.value)
        for t in study.get_trials(deepcopy=False)
        if t.values and math.isfinite(t.value)
    ]
    maximize = study.direction == optuna.study.StudyDirection.MAXIMIZE
    return plots.plot_tuning_history(trials, path, study.study_name, metric, maximize)


def user_value(fit_args: list[str], key: str) -> str | None:
    """The last value given to ``--key`` in ``fit_args`` (``--key VALUE`` or ``--key=VALUE``), else None."""
    value = None
    for i, arg in enumerate(fit_args):
        if arg == f"--{key}" and i + 1 < len(fit_args):
            value = fit_args[i + 1]
        elif arg.startswith(f"--{key}="):
            value = arg.split("=", 1)[1]
    return value


def best_config(run_dir: Path, header: str, limit_test_batches: str | None = None) -> str:
    """The best trial's saved ``config.yaml`` without gaaf-tune's own additions (a ``--subprocess`` trial's
    pruning callback and skipped test set), so that ``gaaf-fit --config best.yaml`` trains and tests it
    like any config (offline unless ``WANDB_MODE`` is set, as every saved config).

    ``limit_test_batches``: what the user's own arguments set (the trials themselves ran no test batch).
    """
    config = yaml.safe_load((run_dir / "config.yaml").read_text())
    trainer = config.get("trainer") or {}
    callbacks = trainer.get("callbacks")
    if isinstance(callbacks, list):
        trainer["callbacks"] = [
            c for c in callbacks if not (isinstance(c, dict) and c.get("class_path") == STORED_PRUNING)
        ]
    if limit_test_batches is None:
        trainer.pop("limit_test_batches", None)
    else:
        trainer["limit_test_batches"] = yaml.safe_load(limit_test_batches)
    comment = "".join(f"# {line}\n" for line in header.splitlines())
    return comment + yaml.safe_dump(config, sort_keys=False)


def write_outputs(study: optuna.Study, settings: TuneSettings) -> optuna.Study:
    """Write ``best.yaml``, ``trials.csv``, ``trials.md``, ``history.png`` and ``study.json`` into ``settings.out``."""
    out, metric = settings.out, settings.space.metric
    rows = trial_rows(study)
    write_trials_table(rows, out / "trials.csv", out / "trials.md", metric)
    plot_history(study, out / "history.png", metric)
    counts: dict[str, int] = {}
    for row in rows:
        counts[row["state"]] = counts.get(row["state"], 0) + 1
    summary: dict[str, Any] = {
        "study_name": study.study_name,
        "storage": settings.storage,
        "config": str(settings.config),
        "search_space": str(settings.space.path) if settings.space.path else None,
        "metric": metric,
        "direction": settings.space.direction,
        "fit_args": settings.fit_args,
        "trials": counts,
        "wall_time_s": study.user_attrs.get("wall_time_s"),
        "trial_time_s": round(sum(r["wall_time_s"] or 0.0 for r in rows), 1),
        "best": None,
    }
    try:
        best = study.best_trial
    except ValueError:  # no complete trial yet
        best = None
    if best is not None and best.user_attrs.get("run_dir"):
        run_dir = Path(best.user_attrs["run_dir"])
        summary["best"] = {
            "number": best.number,
            "value": best.value,
            "params": best.params,
            "run_dir": str(run_dir),
        }
        header = (
            f"Best trial of the gaaf-tune study {study.study_name!r}: trial {best.number}, "
            f"{metric} = {best.value:.4f} (epoch {best.user_attrs.get('best_epoch')}).\n"
            + "".join(f"{k} = {v!r}\n" for k, v in best.params.items())
            + "Run it with: gaaf-fit --config best.yaml"
        )
        limit = user_value(settings.fit_args, "trainer.limit_test_batches")
        (out / "best.yaml").write_text(best_config(run_dir, header, limit))
    (out / "study.json").write_text(json.dumps(summary, indent=1, default=str))
    return study
