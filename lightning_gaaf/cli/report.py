"""gaaf-report: draw the monitors' figures for finished runs side by side, from their saved stats.

``gaaf-report RUN_DIR [RUN_DIR ...] --out DIR [--labels A B ...]`` reads ``<run_dir>/stats/``
(the files of :data:`lightning_gaaf.stats.FILES`, whichever exist, also those of older versions)
and writes one PNG per statistic into ``DIR``, each with one line or bar per run. No W&B access
is needed. Neither torch nor Lightning is imported, and matplotlib only once there is something to
draw, so ``--help`` and user mistakes answer at once.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from lightning_gaaf.stats import FILES, StatsFileError, find_stats_file, read_stats

#: statistic -> (figure file, drawing function of :mod:`lightning_gaaf.stats.plots`); the eval
#: histogram's name follows its split.
FIGURES: dict[str, tuple[str, str]] = {
    "metrics": ("metrics.png", "plot_metrics"),
    "grad_info": ("grad_info.png", "plot_grad_info"),
    "grad_scale": ("grad_scale.png", "plot_grad_scale"),
    "saturation": ("saturation.png", "plot_saturation"),
    "net_var": ("net_var.png", "plot_net_var"),
    "weight_hist": ("weight_hist.png", "plot_weight_hist"),
    "node_correlation": ("node_correlation.png", "plot_node_correlation"),
}


class ReportError(Exception):
    """A user mistake gaaf-report explains in one line."""


def stats_dir_of(run_dir: Path) -> Path:
    """``RUN_DIR/stats`` (or RUN_DIR itself when it already is a stats directory)."""
    for candidate in (run_dir / "stats", run_dir):
        if candidate.is_dir() and any(find_stats_file(candidate, name) for name in FIGURES):
            return candidate
    if not run_dir.is_dir():
        raise ReportError(f"gaaf-report: {run_dir} is not a directory")
    raise ReportError(
        f"gaaf-report: {run_dir} has no statistics: expected {run_dir / 'stats'} with one of "
        f"{', '.join(FILES[name] for name in FIGURES)} (written by the lightning_gaaf.callbacks monitors)"
    )


def _load(path: Path) -> Any:
    try:
        return read_stats(path)
    except StatsFileError as err:
        raise ReportError(f"gaaf-report: {err}") from None


def run_labels(run_dirs: Sequence[Path], labels: Sequence[str] | None) -> list[str]:
    """The given labels, else the run directory names (with parents until they are unique)."""
    if labels is not None:
        if len(labels) != len(run_dirs):
            raise ReportError(
                f"gaaf-report: --labels needs one label per run ({len(run_dirs)}), got {len(labels)}"
            )
        return list(labels)
    parts = [Path(d).resolve().parts for d in run_dirs]
    for depth in range(1, max(len(p) for p in parts) + 1):
        names = ["/".join(p[-depth:]) for p in parts]
        if len(set(names)) == len(names):
            return names
    return [str(d) for d in run_dirs]


def _has_series(statistic: str, stats: Any) -> bool:
    """Whether a stats file holds anything to draw (a short run may end before the first record)."""
    if statistic == "node_correlation":
        return bool(stats.get("rows"))
    if statistic == "metrics":
        return bool(stats.get("epochs"))
    if statistic == "weight_hist":
        return bool(stats.get("layers"))
    return bool(stats.get("steps"))


def make_report(run_dirs: Sequence[Path], out: Path, labels: Sequence[str] | None = None) -> list[Path]:
    """Draw every figure that at least one run has statistics for; return the PNG paths."""
    if not run_dirs:
        raise ReportError("gaaf-report: give at least one RUN_DIR")
    dirs = [Path(d) for d in run_dirs]
    names = run_labels(dirs, labels)
    stats_dirs = [stats_dir_of(d) for d in dirs]
    from lightning_gaaf.stats import plots  # matplotlib: only once the arguments are good

    out.mkdir(parents=True, exist_ok=True)
    written = []
    for statistic, (figure, draw) in FIGURES.items():
        runs = [
            (label, _load(path))
            for label, sd in zip(names, stats_dirs, strict=True)
            if (path := find_stats_file(sd, statistic)) is not None
        ]
        if not runs:
            continue
        if any(_has_series(statistic, stats) for _, stats in runs):
            written.append(getattr(plots, draw)(runs, out / figure))
        if statistic == "saturation":
            with_eval = [(label, s) for label, s in runs if s.get("eval")]
            if with_eval:
                split = with_eval[0][1]["eval"]["split"]
                written.append(plots.plot_net_hist(with_eval, out / f"net_hist_{split}.png"))
    return written


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="gaaf-report",
        description="Draw training curves, gradient information, saturation, net histograms, net variance, "
        "node correlation and weight figures for one or more finished runs side by side, from <run_dir>/stats/.",
    )
    parser.add_argument(
        "run_dirs", nargs="+", type=Path, metavar="RUN_DIR", help="run directories of gaaf-fit"
    )
    parser.add_argument("--out", type=Path, required=True, metavar="DIR", help="directory for the PNG files")
    parser.add_argument(
        "--labels", nargs="+", metavar="LABEL", help="one legend label per run (default: dir names)"
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        paths = make_report(args.run_dirs, args.out, args.labels)
    except ReportError as err:
        print(err, file=sys.stderr)
        return 2
    for path in paths:
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
