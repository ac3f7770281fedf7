"""``--config`` arguments: bundled names resolved to files, ``defaults:`` includes expanded.

A config file may start with ``defaults: [a.yaml, b.yaml]``; those files (paths relative to the
including file, themselves allowed to have ``defaults``) are applied first, exactly as if given as
earlier ``--config`` options, then the rest of the file. A ``--config`` value that names no file
but a bundled config (``mnist_gaaf`` or ``mnist_gaaf.yaml``) stands for that bundled file.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

from lightning_gaaf.run.bundled import ConfigNotFoundError, resolve_config

DEFAULTS_KEY = "defaults"
CONFIG_FLAGS = ("-c", "--config")
#: A --config value that may be a file or bundled name (an inline YAML string has spaces, colons, braces...).
_NAME_LIKE = re.compile(r"[\w./~-]+")


class UsageError(Exception):
    """A mistake in the command line, config, data or checkpoint: the programs report it as one line."""


_UNION_NOISE = re.compile(
    r"^(Subtypes:|Errors:|Given value type:|Given value:|Expected a <class 'NoneType'>)"
)


def condense(message: str) -> str:
    """One line from a possibly multi-line message (jsonargparse explains union types over many lines).

    Keeps the parser key and the reasons, drops the lists of candidate types and the repeated value.
    """
    parts: list[str] = []
    for raw in str(message).strip().splitlines():
        line = raw.strip().removeprefix("- ")
        line = line.replace("Does not validate against any of the Union subtypes", "").strip()
        line = re.sub(r"\s*Got value:.*$", "", line)
        if line and not _UNION_NOISE.match(line):
            parts.append(line)
    text = "; ".join(parts).replace(":;", ":")
    return text if len(text) <= 2000 else text[:1997] + "..."


# --------------------------------------------------------------------------- config composition
def _load_yaml(path: Path) -> Any:
    try:
        return yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise UsageError(f"config {path}: not valid YAML ({str(exc).splitlines()[0]})") from None


def _expand_file(path: Path, chain: tuple[Path, ...]) -> list[str]:
    """``--config`` options equivalent to ``path`` with its ``defaults`` applied first."""
    resolved = path.resolve()
    if resolved in chain:
        cycle = " -> ".join(str(p) for p in (*chain, resolved))
        raise UsageError(f"config {path}: '{DEFAULTS_KEY}' includes form a cycle: {cycle}")
    content = _load_yaml(path)
    if not isinstance(content, dict) or DEFAULTS_KEY not in content:
        return ["--config", str(path)]
    includes = content.pop(DEFAULTS_KEY)
    if isinstance(includes, str):
        includes = [includes]
    if not isinstance(includes, list) or not all(isinstance(item, str) for item in includes):
        raise UsageError(f"config {path}: '{DEFAULTS_KEY}' must be a file path or a list of file paths")
    args: list[str] = []
    for include in includes:
        target = Path(os.path.normpath(path.parent / include))  # an absolute include stays as is
        if not target.is_file():
            raise UsageError(
                f"config {path}: '{DEFAULTS_KEY}' entry {include!r} not found (looked for {target})"
            )
        args += _expand_file(target, (*chain, resolved))
    if content:
        # The remaining keys go in as a YAML string, applied after (so on top of) the includes.
        args += ["--config", yaml.safe_dump(content, sort_keys=False)]
    return args


def config_path(value: str) -> Path | None:
    """The file a ``--config`` value stands for: a path that exists, else a bundled config of that name.

    ``None`` for an inline YAML string (jsonargparse parses those itself).

    Raises:
        UsageError: the value looks like a file name, but neither that file nor a bundled config exists.
    """
    path = Path(value).expanduser()
    if path.is_file():
        return path
    if not _NAME_LIKE.fullmatch(value):
        return None
    try:
        return resolve_config(value)
    except ConfigNotFoundError as exc:
        raise UsageError(str(exc)) from None


def _config_values(argv: Sequence[str]) -> list[tuple[int, int, str]]:
    """``(start, stop, value)`` of every ``--config VALUE`` / ``--config=VALUE`` in ``argv``."""
    found = []
    i = 0
    while i < len(argv):
        arg = argv[i]
        if arg in CONFIG_FLAGS and i + 1 < len(argv):
            found.append((i, i + 2, argv[i + 1]))
            i += 2
        elif arg.startswith("--config="):
            found.append((i, i + 1, arg.split("=", 1)[1]))
            i += 1
        else:
            i += 1
    return found


def expand_config_args(argv: Sequence[str]) -> list[str]:
    """Resolve every ``--config`` value to its file and expand the ``defaults`` of each file."""
    out: list[str] = []
    done = 0
    for start, stop, value in _config_values(argv):
        out += argv[done:start]
        path = config_path(value)
        out += _expand_file(path, ()) if path is not None else ["--config", value]
        done = stop
    return out + list(argv[done:])


def config_name(argv: Sequence[str], default: str = "gaaf-fit") -> str:
    """Stem of the last config file on the command line (the experiment's name), else ``default``.

    A run's saved ``<name>/version_N/config.yaml`` keeps the name ``<name>``.
    """
    name = default
    for _, _, value in _config_values(argv):
        try:
            path = config_path(value)
        except UsageError:
            continue
        if path is not None:
            path = path.absolute()
            name = path.stem
            if name == "config" and re.fullmatch(r"version_\d+", path.parent.name):
                name = path.parent.parent.name
    return name
