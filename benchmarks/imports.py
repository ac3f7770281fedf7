"""Start-up cost of each entry point, against ``python -c "import torch"`` timed in the same run.

Every command runs in a fresh interpreter with ``PYTHONPATH=<checkout>`` (so the ``lightning_gaaf``
of that checkout is imported, whatever is installed); the console scripts run through their
``module:function`` read from that checkout's pyproject.toml. Rounds are interleaved (every command
of every checkout once per round), so a machine whose load drifts slows all of them alike; the
first round (``--warmup``) warms the file cache and is not counted. Printed per command: min and median wall time,
and the median's difference to and ratio over ``import torch`` of the same checkout; with several
``--checkout`` the last table compares each checkout's medians with the first one's.

``gaaf-report RUN_DIR`` draws a tiny run directory made here with the stats schema writer (a
3-epoch ``stats/metrics.json``). ``--importtime LABEL`` adds, per checkout, the top-level packages
that command imports ranked by their modules' import time (``python -X importtime``); with
``--repeats 0`` only that is printed.

Usage: ``python benchmarks/imports.py [--repeats 5] [--warmup 1] [--checkout DIR ...] [--only TEXT ...]
[--importtime "gaaf-report --help"]``
(``--checkout`` defaults to this script's checkout; give another checkout first to compare with it).
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parents[1]

#: Runs a console script's ``module:function`` (argv[1]) as the program named argv[2].
LAUNCH = (
    "import sys; from importlib import import_module; m, f = sys.argv[1].split(':'); "
    "sys.argv = sys.argv[2:]; sys.exit(getattr(import_module(m), f)())"
)
TORCH = "import torch"


def console_script(checkout: Path, name: str, *args: str) -> list[str]:
    """Python arguments running console script ``name`` as ``checkout``'s pyproject.toml declares it."""
    section = (checkout / "pyproject.toml").read_text().partition("[project.scripts]")[2]
    for line in section.partition("\n[")[0].splitlines():
        key, _, value = line.partition("=")
        if key.strip() == name:
            return ["-c", LAUNCH, value.strip().strip('"'), name, *args]
    raise SystemExit(f"{checkout}/pyproject.toml declares no console script {name!r}")


def commands(checkout: Path, run_dir: Path, out: Path) -> dict[str, list[str]]:
    """Label -> the Python arguments of each measured command."""
    return {
        TORCH: ["-c", "import torch"],
        "from lightning_gaaf import GAAF, apply_gaaf, strip_gaaf": [
            "-c",
            "from lightning_gaaf import GAAF, apply_gaaf, strip_gaaf",
        ],
        "import pytorch_lightning": ["-c", "import pytorch_lightning"],
        "gaaf-fit --list-configs": console_script(checkout, "gaaf-fit", "--list-configs"),
        "gaaf-fit --config no_such_name": console_script(checkout, "gaaf-fit", "--config", "no_such_name"),
        "gaaf-report --help": console_script(checkout, "gaaf-report", "--help"),
        "gaaf-tune --help": console_script(checkout, "gaaf-tune", "--help"),
        "gaaf-reproduce --help": console_script(checkout, "gaaf-reproduce", "--help"),
        "gaaf-report RUN_DIR --out DIR": console_script(
            checkout, "gaaf-report", str(run_dir), "--out", str(out)
        ),
    }


def make_run_dir(root: Path) -> Path:
    """A run directory holding only ``stats/metrics.json`` (3 epochs), written by the schema writer."""
    sys.path.insert(0, str(HERE))
    from lightning_gaaf.stats import write_stats  # imports neither torch nor Lightning

    run_dir = root / "tiny_run"
    epochs = [
        {"epoch": e, "step": 10 * (e + 1), "train/loss": 2.0 / (e + 1), "val/acc": 0.5 + 0.1 * e}
        for e in range(3)
    ]
    write_stats(run_dir / "stats", "metrics", {"epochs": epochs, "test": {"test/acc": 0.75}})
    return run_dir


def environment(checkout: Path) -> dict[str, str]:
    env = dict(os.environ, PYTHONPATH=str(checkout), WANDB_MODE="offline", WANDB_SILENT="true")
    env.setdefault("OMP_NUM_THREADS", "1")
    return env


def run_once(argv: list[str], checkout: Path, cwd: Path) -> tuple[float, int]:
    """Wall time and exit code of one fresh interpreter."""
    start = time.perf_counter()
    done = subprocess.run(
        [sys.executable, *argv], env=environment(checkout), cwd=cwd, capture_output=True, text=True
    )
    return time.perf_counter() - start, done.returncode


def importtime(argv: list[str], checkout: Path, cwd: Path, top: int = 12) -> list[tuple[str, float]]:
    """Top-level packages imported by ``argv``, by their modules' own import time summed (seconds).

    Self times, not cumulative ones: a library imported from inside ``lightning_gaaf`` is charged
    to itself, not to its importer.
    """
    done = subprocess.run(
        [sys.executable, "-X", "importtime", *argv],
        env=environment(checkout),
        cwd=cwd,
        capture_output=True,
        text=True,
    )
    totals: dict[str, float] = {}
    for line in done.stderr.splitlines():
        if not line.startswith("import time:") or line.count("|") != 2:
            continue
        own, _, name = line.removeprefix("import time:").split("|")
        if not own.strip().isdigit():
            continue  # the header line
        package = name.strip().partition(".")[0]
        totals[package] = totals.get(package, 0.0) + int(own) / 1e6
    return sorted(totals.items(), key=lambda kv: -kv[1])[:top]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=5, help="counted rounds (after one warm-up round)")
    parser.add_argument(
        "--checkout", type=Path, action="append", help="repository checkout to time (repeatable)"
    )
    parser.add_argument("--warmup", type=int, default=1, help="rounds run first and not counted")
    parser.add_argument(
        "--only",
        nargs="+",
        metavar="TEXT",
        help="time only the commands whose label contains one of these (import torch always)",
    )
    parser.add_argument("--importtime", metavar="LABEL", help="also rank the imports of this command")
    args = parser.parse_args()
    checkouts = [c.resolve() for c in (args.checkout or [HERE])]
    names = [c.name for c in checkouts]

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        run_dir = make_run_dir(root)
        plans = {c: commands(c, run_dir, root / f"report_{i}") for i, c in enumerate(checkouts)}
        labels = [
            label
            for label in plans[checkouts[0]]
            if label == TORCH or not args.only or any(text in label for text in args.only)
        ]
        for c in checkouts:
            where = subprocess.run(
                [sys.executable, "-c", "import lightning_gaaf; print(lightning_gaaf.__file__)"],
                env=environment(c),
                cwd=root,  # not this directory: ``-c`` puts the working directory first on sys.path
                capture_output=True,
                text=True,
            ).stdout.strip()
            print(f"{c.name}: lightning_gaaf from {where}")
        print(f"python {sys.version.split()[0]}, {os.cpu_count()} CPUs, load {os.getloadavg()[0]:.2f}")

        times: dict[tuple[str, Path], list[float]] = {}
        codes: dict[tuple[str, Path], int] = {}
        for round_ in range(args.warmup + args.repeats):
            for label in labels:
                for c in checkouts:
                    seconds, code = run_once(plans[c][label], c, root)
                    codes[label, c] = code
                    if round_ >= args.warmup:
                        times.setdefault((label, c), []).append(seconds)
            print(f"round {round_ + 1}/{args.warmup + args.repeats} done", file=sys.stderr, flush=True)

        print(
            f"\n{args.repeats} rounds (+{args.warmup} warm-up); seconds; Δ and × against `import torch` of the same checkout"
        )
        print(f"| command | checkout | min | median | Δ torch | × torch | exit |\n|{'---|' * 7}")
        for label in labels if args.repeats else []:
            for c in checkouts:
                runs = times[label, c]
                torch_median = statistics.median(times[TORCH, c])
                median = statistics.median(runs)
                print(
                    f"| `{label}` | {c.name} | {min(runs):.2f} | {median:.2f} | "
                    f"{median - torch_median:+.2f} | {median / torch_median:.2f} | {codes[label, c]} |"
                )
        if len(checkouts) > 1 and args.repeats:
            first = checkouts[0]
            print(f"\nmedian time relative to {first.name}")
            print(f"| command | {' | '.join(names[1:])} |\n|{'---|' * len(checkouts)}")
            for label in labels:
                base = statistics.median(times[label, first])
                ratios = [f"{statistics.median(times[label, c]) / base:.2f}" for c in checkouts[1:]]
                print(f"| `{label}` | {' | '.join(ratios)} |")
        if args.importtime:
            for c in checkouts:
                print(f"\n`{args.importtime}` on {c.name}: import time per top-level package (s)")
                for package, seconds in importtime(plans[c][args.importtime], c, root):
                    print(f"  {package:40s} {seconds:6.2f}")


if __name__ == "__main__":
    main()
