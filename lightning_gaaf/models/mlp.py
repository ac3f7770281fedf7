"""The paper's fully-connected MNIST network (784-512-256-256-10)."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence

from torch import nn

from lightning_gaaf.models._blocks import dense_layers
from lightning_gaaf.models.registry import check_activation


class MLP(nn.Sequential):
    """Fully-connected classifier with layers ``flatten``, ``fc{i}`` [``bn{i}``] ``act{i}`` [``drop{i}``], ``out``.

    Dropout acts on the hidden-layer outputs (after the activation) and never on the input: the
    paper's dropout comparison relies on every input pixel reaching the first layer.

    Args:
        in_features: size of the flattened input (784 for 28x28 grey images).
        hidden: widths of the hidden layers.
        num_classes: number of output logits.
        activation: activation name from the catalogue (:data:`lightning_gaaf.activations.CATALOG`).
        dropout: drop probability after each hidden activation (0 disables it).
        batch_norm: insert ``BatchNorm1d`` between each hidden linear layer and its activation.
    """

    def __init__(
        self,
        in_features: int = 784,
        hidden: Sequence[int] = (512, 256, 256),
        num_classes: int = 10,
        activation: str = "tanh",
        dropout: float = 0.0,
        batch_norm: bool = False,
    ) -> None:
        check_activation(activation)
        layers: OrderedDict[str, nn.Module] = OrderedDict(flatten=nn.Flatten())
        layers.update(dense_layers(in_features, hidden, num_classes, activation, batch_norm, dropout))
        super().__init__(layers)
