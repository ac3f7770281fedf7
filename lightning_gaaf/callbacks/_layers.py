"""Finding the layers a monitor watches: weight layers and activation modules, by qualified name."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from fnmatch import fnmatchcase

from pytorch_lightning.utilities.rank_zero import rank_zero_warn
from torch import nn

from lightning_gaaf.activations import GAAF, activation_classes

#: Module types whose ``weight`` counts as a weight layer (paper Eq. 5, Table 2).
WEIGHT_LAYER_TYPES: tuple[type[nn.Module], ...] = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)


def weight_layers(model: nn.Module) -> dict[str, nn.Module]:
    """Linear and conv layers with a trainable weight, by qualified module name (registration order)."""
    return {
        name: m
        for name, m in model.named_modules()
        if isinstance(m, WEIGHT_LAYER_TYPES) and isinstance(getattr(m, "weight", None), nn.Parameter)
    }


def activation_modules(model: nn.Module, include: Sequence[str] | None = None) -> dict[str, nn.Module]:
    """Activation modules by qualified name.

    Without ``include``: every :class:`~lightning_gaaf.GAAF` module and every module of a supported
    activation type. With ``include``: every module whose qualified name matches one of the globs,
    whatever its type (for custom activations). The ``base`` inside a GAAF module is never listed
    separately: the GAAF module stands for it.
    """
    found: dict[str, nn.Module] = {}
    gaaf_prefixes: list[str] = []
    for name, module in model.named_modules():
        if not name or any(name.startswith(p) for p in gaaf_prefixes):
            continue
        if isinstance(module, GAAF):
            gaaf_prefixes.append(name + ".")
        if include is None:
            if isinstance(module, (GAAF, *activation_classes())):
                found[name] = module
        elif any(fnmatchcase(name, pattern) for pattern in include):
            found[name] = module
    return found


def plain_activation(module: nn.Module) -> nn.Module:
    """The plain activation behind a module: ``.base`` of a GAAF module, the module itself otherwise."""
    return module.base if isinstance(module, GAAF) else module


def has_gaaf(model: nn.Module) -> bool:
    """Whether any module of ``model`` is a GAAF module."""
    return any(isinstance(m, GAAF) for m in model.modules())


def require_layers(owner: str, layers: Mapping[str, nn.Module], what: str) -> None:
    """Warn (rank 0) when a monitor found nothing to watch."""
    if not layers:
        rank_zero_warn(f"{owner}: the model has no {what}; nothing will be recorded")
