"""Which libraries a command imports: run it in a fresh interpreter and read ``sys.modules`` at exit.

Used by the import-graph tests: they assert what a command loads (never how long it takes).
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

#: Runs ``argv[1:]`` as ``-c CODE``, ``-m MODULE ARGS`` or ``module:function ARGS`` (a console
#: script's target) and writes the sorted ``sys.modules`` to the file named in ``argv[1]`` at exit,
#: also when the program exits through SystemExit.
_WRAPPER = """\
import atexit, importlib, runpy, sys
out, kind, target, *args = sys.argv[1:]
def dump():
    with open(out, "w") as f:
        f.write("\\n".join(sorted(sys.modules)))
atexit.register(dump)
if kind == "-c":
    sys.argv = ["-c", *args]
    exec(compile(target, "<command>", "exec"), {"__name__": "__main__"})
elif kind == "-m":
    sys.argv = [target, *args]
    runpy.run_module(target, run_name="__main__", alter_sys=True)
else:
    module, _, function = target.partition(":")
    sys.argv = [kind, *args]
    sys.exit(getattr(importlib.import_module(module), function)())
"""


def console_script(name: str) -> str:
    """``module:function`` of a console script, from this checkout's pyproject.toml (not the install).

    Python 3.10 has no tomllib: there the installed entry point is used.
    """
    try:
        import tomllib
    except ImportError:
        from importlib.metadata import entry_points

        (script,) = entry_points(group="console_scripts", name=name)
        return script.value
    return tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"][name]


def imported_modules(
    command: Sequence[str],
    *,
    env: Mapping[str, str] | None = None,
    cwd: Path | str | None = None,
    returncode: int | None = 0,
    timeout: float = 300,
) -> set[str]:
    """Top-level names of every module imported by ``command`` in a fresh interpreter.

    ``command`` is what follows ``python``: ``["-c", CODE]``, ``["-m", MODULE, *args]``, or a console
    script ``["gaaf-report", *args]`` (its ``module:function`` read from pyproject.toml). The checkout
    of these tests comes first on ``PYTHONPATH``. ``returncode`` (None: any) is checked, with the
    output in the assertion message.
    """
    if command[0] in ("-c", "-m"):
        kind, target, args = command[0], command[1], list(command[2:])
    else:  # a console script: its name is argv[0]
        kind, target, args = command[0], console_script(command[0]), list(command[1:])
    environment = dict(os.environ if env is None else env)
    environment["PYTHONPATH"] = os.pathsep.join(
        [str(REPO), *filter(None, environment.get("PYTHONPATH", "").split(os.pathsep))]
    )
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "modules.txt"
        done = subprocess.run(
            [sys.executable, "-c", _WRAPPER, str(out), kind, target, *args],
            env=environment,
            cwd=cwd,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        message = (
            f"{' '.join(command)} exited {done.returncode}:\n{done.stdout[-2000:]}\n{done.stderr[-4000:]}"
        )
        assert returncode is None or done.returncode == returncode, message
        assert out.is_file(), message
        names = out.read_text().split()
    return {name.partition(".")[0] for name in names}
