"""Shared builders for the convolutional models: named conv stacks and fully-connected heads."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence

from torch import nn

from lightning_gaaf.models.registry import make_activation

POOL = "M"
"""Marker for a 2x2 max-pooling layer in a conv layer specification."""


def conv_stack(
    spec: Sequence[int | str], in_channels: int, activation: str, batch_norm: bool
) -> tuple[nn.Sequential, int, int]:
    """Build ``conv{i}`` (3x3, padding 1) [``bn{i}``] ``act{i}`` layers and ``pool{j}`` for each ``"M"``.

    Returns the stack, its output channels and how many times it halves the spatial size.
    """
    layers: OrderedDict[str, nn.Module] = OrderedDict()
    channels, n_conv, n_pool = in_channels, 0, 0
    for item in spec:
        if item == POOL:
            n_pool += 1
            layers[f"pool{n_pool}"] = nn.MaxPool2d(kernel_size=2, stride=2)
            continue
        width = int(item)
        n_conv += 1
        layers[f"conv{n_conv}"] = nn.Conv2d(channels, width, kernel_size=3, padding=1)
        if batch_norm:
            layers[f"bn{n_conv}"] = nn.BatchNorm2d(width)
        layers[f"act{n_conv}"] = make_activation(activation)
        channels = width
    return nn.Sequential(layers), channels, n_pool


def dense_layers(
    in_features: int,
    widths: Sequence[int],
    num_classes: int,
    activation: str,
    batch_norm: bool,
    dropout: float,
) -> OrderedDict[str, nn.Module]:
    """Named ``fc{i}`` [``bn{i}``] ``act{i}`` [``drop{i}``] hidden layers followed by the ``out`` layer.

    Dropout follows the activation of each hidden layer; nothing is applied to the input.
    """
    if not 0.0 <= dropout < 1.0:
        raise ValueError(f"dropout: must be in [0, 1), got {dropout}")
    layers: OrderedDict[str, nn.Module] = OrderedDict()
    width = in_features
    for i, out in enumerate(widths, start=1):
        layers[f"fc{i}"] = nn.Linear(width, out)
        if batch_norm:
            layers[f"bn{i}"] = nn.BatchNorm1d(out)
        layers[f"act{i}"] = make_activation(activation)
        if dropout > 0:
            layers[f"drop{i}"] = nn.Dropout(dropout)
        width = out
    layers["out"] = nn.Linear(width, num_classes)
    return layers


def pooled_size(input_size: int, n_pool: int) -> int:
    """Spatial size after ``n_pool`` 2x2 poolings; raise if the input does not divide evenly."""
    if input_size % (2**n_pool) != 0:
        raise ValueError(
            f"input_size: {input_size} is not divisible by 2**{n_pool} (one halving per pooling layer)"
        )
    return input_size // 2**n_pool
