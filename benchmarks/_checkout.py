"""Which ``lightning_gaaf`` a benchmark times.

Scripts run as ``python benchmarks/x.py`` import the installed package, and an editable install
points at whichever checkout last ran ``pip install -e .`` (a CI clone, say), not necessarily the
one the script lives in: edits here would then be silently left out of the measurement.
"""

from __future__ import annotations

import sys
from pathlib import Path

import lightning_gaaf


def check_checkout() -> None:
    """Print where ``lightning_gaaf`` comes from; warn when it is not this script's checkout."""
    package = Path(lightning_gaaf.__file__).resolve().parent
    here = Path(__file__).resolve().parents[1] / "lightning_gaaf"
    print(f"lightning_gaaf from {package}")
    if package != here:
        print(
            f"WARNING: timing {package}, not this checkout's {here}; run `pip install -e .` here "
            "to measure this checkout",
            file=sys.stderr,
        )
