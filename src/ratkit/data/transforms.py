"""Batched data augmentation with plain tensor ops.

Adversarial training spends its time in attack steps, so augmentation must not become
the bottleneck: everything here works on a whole N x C x H x W batch on its own device,
without per-sample Python loops or PIL round-trips. Random numbers are drawn on the
generator's device (CPU or x's device) and then moved, so a seeded generator gives the
same augmentation wherever x lives.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .datasets import DatasetInfo

__all__ = ["augment", "random_crop", "random_hflip"]


def _rng_device(x: torch.Tensor, generator: torch.Generator | None) -> torch.device:
    return generator.device if generator is not None else x.device


def random_crop(x: torch.Tensor, padding: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """Zero-pad each image by ``padding`` and take an H x W crop at an independent random offset.

    Equivalent to torchvision's ``RandomCrop(size, padding)`` per image, done for the whole
    batch with one gather. ``padding=0`` returns ``x`` itself.
    """
    if padding < 0:
        raise ValueError(f"padding must be >= 0, got {padding}")
    if padding == 0:
        return x
    n, c, h, w = x.shape
    padded = F.pad(x, (padding, padding, padding, padding))
    dev = _rng_device(x, generator)
    offsets = torch.randint(0, 2 * padding + 1, (2, n), generator=generator, device=dev).to(x.device)
    rows = offsets[0, :, None] + torch.arange(h, device=x.device)  # N x H
    cols = offsets[1, :, None] + torch.arange(w, device=x.device)  # N x W
    batch = torch.arange(n, device=x.device)[:, None, None, None]
    chans = torch.arange(c, device=x.device)[None, :, None, None]
    return padded[batch, chans, rows[:, None, :, None], cols[:, None, None, :]]


def random_hflip(x: torch.Tensor, generator: torch.Generator | None = None, p: float = 0.5) -> torch.Tensor:
    """Flip each image left-right independently with probability ``p``."""
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"p must be in [0, 1], got {p}")
    flip = torch.rand(x.shape[0], generator=generator, device=_rng_device(x, generator)) < p
    flip = flip.to(x.device).view(-1, *([1] * (x.dim() - 1)))
    return torch.where(flip, x.flip(-1), x)


def augment(x: torch.Tensor, info: DatasetInfo, generator: torch.Generator | None = None) -> torch.Tensor:
    """The standard training augmentation for ``info``: random crop, then h-flip if label-preserving."""
    x = random_crop(x, info.crop_padding, generator)
    if info.hflip:
        x = random_hflip(x, generator)
    return x
