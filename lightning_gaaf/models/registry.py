"""Activation modules by name, so configs say ``activation: tanh`` and every layer gets its own module.

One module instance per layer matters: GAAF surgery and the monitors address activations by their
qualified module name, so a shared instance would merge all layers into one. The names are those of
the activation catalogue (:data:`lightning_gaaf.activations.CATALOG`); this module only adds the
config field name to its error.
"""

from __future__ import annotations

from torch import nn

from lightning_gaaf.activations import activation_from_name
from lightning_gaaf.activations.registry import spec_by_name

__all__ = ["check_activation", "make_activation"]


def check_activation(name: str, field: str = "activation") -> str:
    """Return ``name`` if it is a catalogue activation, else one ValueError that lists the valid names."""
    try:
        spec_by_name(name)
    except ValueError as err:
        raise ValueError(f"{field}: {err}") from None
    return name


def make_activation(name: str) -> nn.Module:
    """Build a fresh, non-inplace activation module from its catalogue name (e.g. ``"tanh"``)."""
    return activation_from_name(check_activation(name))
