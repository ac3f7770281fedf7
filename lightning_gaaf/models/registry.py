"""Activation modules by name, so configs say ``activation: tanh`` and every layer gets its own module.

One module instance per layer matters: GAAF surgery and the monitors address activations by their
qualified module name, so a shared instance would merge all layers into one. The names are those of
:data:`lightning_gaaf.activations.ACTIVATIONS` (one registry for the whole package).
"""

from __future__ import annotations

from torch import nn

from lightning_gaaf.activations import ACTIVATIONS

__all__ = ["ACTIVATIONS", "check_activation", "make_activation"]


def check_activation(name: str, field: str = "activation") -> str:
    """Return ``name`` if it is a known activation, else raise one ValueError that lists the valid names."""
    if name not in ACTIVATIONS:
        valid = ", ".join(ACTIVATIONS)
        raise ValueError(f"{field}: unknown activation {name!r}; valid names: {valid}")
    return name


def make_activation(name: str) -> nn.Module:
    """Build a fresh, non-inplace activation module from its registry name (e.g. ``"tanh"``)."""
    return ACTIVATIONS[check_activation(name)]()
