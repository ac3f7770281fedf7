"""The experiment configs shipped with the package, found by name.

The repository keeps one copy of them in ``configs/`` at its top; the wheel installs that folder as
``lightning_gaaf/configs`` (a package-dir mapping in ``pyproject.toml``). :func:`configs_dir` finds
whichever of the two this installation has, so ``gaaf-fit --config mnist_gaaf`` works from any
directory, in a source checkout, an editable install or a wheel.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

_PACKAGE_DIR = Path(__file__).resolve().parent.parent  # lightning_gaaf/
#: Where a wheel installs the configs, then where a source checkout (or editable install) keeps them.
_CANDIDATES = (_PACKAGE_DIR / "configs", _PACKAGE_DIR.parent / "configs")
SUFFIX = ".yaml"


class ConfigNotFoundError(FileNotFoundError):
    """Neither a file nor a bundled config of that name exists."""


@dataclass(frozen=True)
class BundledConfig:
    """One shipped experiment: its name (file stem), path and the paper row its first comment names."""

    name: str
    path: Path
    description: str


def configs_dir() -> Path:
    """The folder of the bundled experiment configs (``defaults/`` inside it)."""
    for candidate in _CANDIDATES:
        if (candidate / "defaults").is_dir():
            return candidate
    looked = ", ".join(str(c) for c in _CANDIDATES)
    raise ConfigNotFoundError(f"the bundled configs are missing from this installation (looked in {looked})")


def _description(path: Path) -> str:
    """The file's first comment line, without ``#`` (the configs name their paper row there)."""
    for line in path.read_text().splitlines():
        stripped = line.strip()
        if stripped.startswith("#"):
            return stripped.lstrip("#").strip()
        if stripped:
            break
    return ""


def bundled_configs() -> list[BundledConfig]:
    """Every shipped experiment (not the ``defaults/`` pieces), sorted by name."""
    return [
        BundledConfig(path.stem, path, _description(path))
        for path in sorted(configs_dir().glob(f"*{SUFFIX}"))
    ]


def resolve_config(name: str) -> Path:
    """``name`` as a path if that file exists, else the bundled config ``name`` (``.yaml`` optional).

    Raises:
        ConfigNotFoundError: neither exists; the message lists the bundled names.
    """
    path = Path(name).expanduser()
    if path.is_file():
        return path
    stem = path.name.removesuffix(SUFFIX)
    if path.parent == Path(".") or path.parent == Path("configs"):
        bundled = configs_dir() / f"{stem}{SUFFIX}"
        if bundled.is_file():
            return bundled
    names = ", ".join(config.name for config in bundled_configs())
    raise ConfigNotFoundError(
        f"config {name!r}: no such file, and no bundled config of that name (bundled: {names})"
    )


def format_config_list() -> str:
    """The bundled configs as aligned ``name  description`` lines (``gaaf-fit --list-configs``)."""
    configs = bundled_configs()
    width = max((len(config.name) for config in configs), default=0)
    return "\n".join(f"{config.name:<{width}}  {config.description}" for config in configs)
