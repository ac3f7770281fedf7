"""Whole-batch image transforms that run on the training device after the host-to-device copy.

The DataModules keep images as ``uint8`` and convert them here, so the host only ever moves a quarter
of the bytes and no per-sample Python code runs in the input pipeline.

Randomness: :func:`random_crop_flip` draws from the default (global) torch RNG of the batch's device
unless a ``generator`` is passed. ``pytorch_lightning.seed_everything`` therefore makes training
augmentation reproducible, and under DDP every rank draws its own offsets from its own seeded RNG.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import torch
from torch import Tensor


def normalize(images: Tensor, mean: Sequence[float], std: Sequence[float]) -> Tensor:
    """Map a ``uint8`` batch ``(N, C, H, W)`` to ``float32`` ``(x / 255 - mean) / std`` per channel."""
    if images.dtype != torch.uint8:
        raise TypeError(
            f"expected a uint8 image batch from the DataModule's dataloader, got {images.dtype}; "
            "normalisation must run exactly once per batch"
        )
    if images.dim() != 4 or images.shape[1] != len(mean):
        raise ValueError(f"expected an image batch (N, {len(mean)}, H, W), got shape {tuple(images.shape)}")
    out = images.to(torch.float32)
    if len(mean) == 1:  # scalar fast path (MNIST-like); in place to avoid extra full-size temporaries
        return out.mul_(1.0 / (255.0 * std[0])).add_(-mean[0] / std[0])
    scale, shift = _affine(tuple(mean), tuple(std), images.device)
    return out.mul_(scale).add_(shift)


@functools.lru_cache(maxsize=32)
def _affine(mean: tuple[float, ...], std: tuple[float, ...], device: torch.device) -> tuple[Tensor, Tensor]:
    """Per-channel scale and shift, created once per device (no host-to-device copy per batch)."""
    scale = torch.tensor([1.0 / (255.0 * s) for s in std], device=device).view(1, -1, 1, 1)
    shift = torch.tensor([-m / s for m, s in zip(mean, std, strict=True)], device=device).view(1, -1, 1, 1)
    return scale, shift


def random_crop_flip(
    images: Tensor,
    padding: int = 4,
    flip: bool = True,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Random crop after zero padding, plus optional horizontal flip, drawn per sample in one gather.

    Matches torchvision's ``RandomCrop(size, padding=padding)`` (zero fill, applied to the raw pixels
    before normalisation) followed by ``RandomHorizontalFlip(0.5)``, but for a whole ``(N, C, H, W)``
    batch at once: each sample gets its own offsets ``(dy, dx)`` in ``[0, 2 * padding]`` and its own
    flip decision, and the output is gathered with a single advanced-indexing op. Works for any dtype.
    """
    if images.dim() != 4:
        raise ValueError(f"expected an image batch (N, C, H, W), got shape {tuple(images.shape)}")
    if padding < 0:
        raise ValueError(f"padding must be >= 0, got {padding}")
    n, c, h, w = images.shape
    device = images.device
    if padding > 0:
        padded = images.new_zeros((n, c, h + 2 * padding, w + 2 * padding))
        padded[:, :, padding : padding + h, padding : padding + w] = images
        off_y = torch.randint(0, 2 * padding + 1, (n,), device=device, generator=generator)
        off_x = torch.randint(0, 2 * padding + 1, (n,), device=device, generator=generator)
    else:
        padded = images
        off_y = off_x = torch.zeros(n, dtype=torch.long, device=device)
    rows = off_y[:, None] + torch.arange(h, device=device)  # (N, H)
    cols = off_x[:, None] + torch.arange(w, device=device)  # (N, W)
    if flip:
        flipped = torch.rand(n, device=device, generator=generator) < 0.5
        cols = torch.where(flipped[:, None], cols.flip(1), cols)
    batch_idx = torch.arange(n, device=device).view(n, 1, 1, 1)
    chan_idx = torch.arange(c, device=device).view(1, c, 1, 1)
    return padded[batch_idx, chan_idx, rows[:, None, :, None], cols[:, None, None, :]]
