"""The paper's SVHN network: four conv layers and three fully-connected layers."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from lightning_gaaf.models._blocks import POOL, conv_stack, dense_layers, pooled_size
from lightning_gaaf.models.registry import check_activation


class SmallCNN(nn.Module):
    """Four 3x3 conv layers with 2x2 max-pooling after every second one, then three linear layers.

    The paper gives the layer counts but not the widths; our defaults (32, 32, 64, 64) conv channels
    and (512, 256) hidden units are a conventional small SVHN network.

    Args:
        num_classes: number of output logits.
        in_channels: image channels.
        input_size: image height/width; must be divisible by 2 ** (number of poolings).
        conv_widths: output channels of the conv layers (a pool follows every second one).
        fc_widths: widths of the hidden fully-connected layers (the output layer comes on top).
        activation: activation name from the catalogue (:data:`lightning_gaaf.activations.CATALOG`).
        batch_norm: insert BatchNorm before every hidden activation (conv and fully-connected).
        dropout: drop probability after each hidden fully-connected activation.
    """

    def __init__(
        self,
        num_classes: int = 10,
        in_channels: int = 3,
        input_size: int = 32,
        conv_widths: Sequence[int] = (32, 32, 64, 64),
        fc_widths: Sequence[int] = (512, 256),
        activation: str = "relu",
        batch_norm: bool = False,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        check_activation(activation)
        spec: list[int | str] = []
        for i, width in enumerate(conv_widths, start=1):
            spec.append(width)
            if i % 2 == 0:
                spec.append(POOL)
        self.features, channels, n_pool = conv_stack(spec, in_channels, activation, batch_norm)
        flat = channels * pooled_size(input_size, n_pool) ** 2
        self.flatten = nn.Flatten()
        self.classifier = nn.Sequential(
            dense_layers(flat, fc_widths, num_classes, activation, batch_norm, dropout)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.flatten(self.features(x)))
