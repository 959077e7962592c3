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

from .info import DatasetInfo

__all__ = ["augment", "random_crop", "random_hflip"]


def _rng_device(x: torch.Tensor, generator: torch.Generator | None) -> torch.device:
    return generator.device if generator is not None else x.device


def _drawn_for(x: torch.Tensor, part: tuple[int, int, int] | None) -> tuple[int, slice]:
    """How many images to draw random numbers for, and which of them are ``x``'s: ``part`` =
    (start, stop, n) when ``x`` is rows start:stop of a batch of n (a rank's share of a streamed
    global batch), so every rank draws exactly what one process augmenting the whole batch draws."""
    if part is None:
        return x.shape[0], slice(None)
    start, stop, n = part
    return n, slice(start, stop)


def random_crop(x: torch.Tensor, padding: int, generator: torch.Generator | None = None,
                part: tuple[int, int, int] | None = None) -> torch.Tensor:
    """Zero-pad each image by ``padding`` and take an H x W crop at an independent random offset.

    Equivalent to torchvision's ``RandomCrop(size, padding)`` per image, done for the whole
    batch with one gather. ``padding=0`` returns ``x`` itself. ``part``: see :func:`augment`.
    """
    if padding < 0:
        raise ValueError(f"padding must be >= 0, got {padding}")
    if padding == 0:
        return x
    n, c, h, w = x.shape
    padded = F.pad(x, (padding, padding, padding, padding))
    dev = _rng_device(x, generator)
    drawn, rows_of_x = _drawn_for(x, part)
    offsets = torch.randint(0, 2 * padding + 1, (2, drawn), generator=generator, device=dev)[:, rows_of_x]
    offsets = offsets.to(x.device)
    rows = offsets[0, :, None] + torch.arange(h, device=x.device)  # N x H
    cols = offsets[1, :, None] + torch.arange(w, device=x.device)  # N x W
    batch = torch.arange(n, device=x.device)[:, None, None, None]
    chans = torch.arange(c, device=x.device)[None, :, None, None]
    return padded[batch, chans, rows[:, None, :, None], cols[:, None, None, :]]


def random_hflip(x: torch.Tensor, generator: torch.Generator | None = None, p: float = 0.5,
                 part: tuple[int, int, int] | None = None) -> torch.Tensor:
    """Flip each image left-right independently with probability ``p``. ``part``: see :func:`augment`."""
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"p must be in [0, 1], got {p}")
    drawn, rows_of_x = _drawn_for(x, part)
    flip = (torch.rand(drawn, generator=generator, device=_rng_device(x, generator)) < p)[rows_of_x]
    flip = flip.to(x.device).view(-1, *([1] * (x.dim() - 1)))
    return torch.where(flip, x.flip(-1), x)


def augment(x: torch.Tensor, info: DatasetInfo, generator: torch.Generator | None = None,
            part: tuple[int, int, int] | None = None) -> torch.Tensor:
    """The standard training augmentation for ``info``: random crop, then h-flip if label-preserving.

    ``part`` = (start, stop, n): ``x`` is rows start:stop of a batch of n, and gets exactly the
    augmentation those rows get when the whole batch is augmented (a rank of a streamed run
    decodes only its share of the global batch).

    Example: ``augment(xb, dataset_info("cifar10"), generator=g)``"""
    x = random_crop(x, info.crop_padding, generator, part)
    if info.hflip:
        x = random_hflip(x, generator, part=part)
    return x
