"""VGG16 without its last three conv layers, sized for 32x32 images (the paper's CIFAR network)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from lightning_gaaf.models._blocks import POOL, conv_stack, dense_layers, pooled_size
from lightning_gaaf.models.registry import check_activation

VGG_LAYERS: tuple[int | str, ...] = (64, 64, POOL, 128, 128, POOL, 256, 256, 256, POOL, 512, 512, 512, POOL)
"""VGG16's conv configuration with the last block's three 512-wide conv layers (and its pool) removed."""


class VGG(nn.Module):
    """Ten 3x3 conv layers in ``features`` followed by a fully-connected ``classifier``.

    The paper removes VGG16's last three conv layers and shrinks the fully-connected layers without
    giving their width; we default to two hidden layers of 512 (VGG16 uses 4096), which keeps the
    classifier small next to the 2x2x512 feature map of a 32x32 input.

    Args:
        num_classes: number of output logits.
        in_channels: image channels.
        input_size: image height/width; must be divisible by 16 (four poolings).
        classifier_widths: widths of the hidden fully-connected layers.
        activation: activation name from the catalogue (:data:`lightning_gaaf.activations.CATALOG`).
        batch_norm: insert BatchNorm before every hidden activation (conv and fully-connected).
        dropout: drop probability after each hidden fully-connected activation.
    """

    def __init__(
        self,
        num_classes: int = 10,
        in_channels: int = 3,
        input_size: int = 32,
        classifier_widths: Sequence[int] = (512, 512),
        activation: str = "relu",
        batch_norm: bool = False,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        check_activation(activation)
        self.features, channels, n_pool = conv_stack(VGG_LAYERS, in_channels, activation, batch_norm)
        flat = channels * pooled_size(input_size, n_pool) ** 2
        self.flatten = nn.Flatten()
        self.classifier = nn.Sequential(
            dense_layers(flat, classifier_widths, num_classes, activation, batch_norm, dropout)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.flatten(self.features(x)))
