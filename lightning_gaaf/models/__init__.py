"""The paper's networks as plain ``nn.Module`` backbones, and the LightningModule that trains them.

Models are always built with plain activations; GAAF is added afterwards by
:func:`lightning_gaaf.apply_gaaf` or :class:`lightning_gaaf.GAAFCallback`.
"""

from lightning_gaaf.models.classifier import ImageClassifier
from lightning_gaaf.models.cnn import SmallCNN
from lightning_gaaf.models.mlp import MLP
from lightning_gaaf.models.registry import make_activation
from lightning_gaaf.models.schedulers import CosineAnnealing
from lightning_gaaf.models.vgg import VGG, VGG_LAYERS

__all__ = [
    "MLP",
    "VGG",
    "VGG_LAYERS",
    "CosineAnnealing",
    "ImageClassifier",
    "SmallCNN",
    "make_activation",
]
