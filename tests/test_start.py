"""Commands that need no training start without importing torch or Lightning (checked on the import graph)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

#: Runs one program's ``main`` with ``argv`` and prints its exit status and whether torch / Lightning got
#: imported; ``-X importtime`` is not needed: ``sys.modules`` is the import graph's result.
PROBE = """
import json, sys
from {module} import main
try:
    main({argv!r})
    code = 0
except SystemExit as exc:
    code = exc.code
sys.stdout.flush()
print(json.dumps({{"code": code, "torch": "torch" in sys.modules,
                   "lightning": "pytorch_lightning" in sys.modules}}))
"""


@pytest.mark.parametrize(
    ("module", "argv", "code"),
    [
        ("lightning_gaaf.cli.fit", ["--list-configs"], 0),
        ("lightning_gaaf.cli.fit", ["--config", "no_such_name"], 2),
        ("lightning_gaaf.cli.tune.main", ["--help"], 0),
        ("lightning_gaaf.cli.reproduce.main", ["--help"], 0),
    ],
)
def test_command_imports_neither_torch_nor_lightning(module: str, argv: list[str], code: int) -> None:
    proc = subprocess.run(
        [sys.executable, "-c", PROBE.format(module=module, argv=argv)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    assert report == {"code": code, "torch": False, "lightning": False}, proc.stderr[-2000:]
    if code == 2:  # the unknown config: one line that lists the bundled ones
        (line,) = proc.stderr.strip().splitlines()
        assert line.startswith("gaaf-fit: error: config 'no_such_name'") and "mnist_gaaf" in line
