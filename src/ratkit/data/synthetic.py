"""The ``synthetic`` dataset: generated in memory, for tests and smoke runs."""

from __future__ import annotations

import dataclasses

import torch

from .errors import DataError
from .info import SPLITS, DatasetInfo
from .tensordata import TensorData

__all__ = ["SPLITS", "SPLIT_SIZES", "SYNTHETIC", "synthetic_data", "synthetic_split"]

# its entry of the registry (ratkit.data.datasets.DATASETS["synthetic"])
SYNTHETIC = DatasetInfo(
    name="synthetic",
    num_classes=10,
    image_shape=(1, 28, 28),
    mean=(0.5,),
    std=(0.25,),
    linf_eps=0.1,
    hflip=False,
    crop_padding=0,
    class_names=tuple(f"class_{i}" for i in range(10)),
    files=None,  # generated in memory
)

# split (one of SPLITS) -> (examples, seed) of load_dataset("synthetic", split)
SPLIT_SIZES = {"train": (2048, 0), "test": (512, 1)}
_TEMPLATE_SEED = 20230601  # templates are shared by all splits; only samples depend on `seed`


def synthetic_split(info: DatasetInfo, split: str) -> TensorData:
    """What ``load_dataset("synthetic", split)`` returns: fixed size and seed per split."""
    n, seed = SPLIT_SIZES[split]
    return synthetic_data(n, seed=seed, num_classes=info.num_classes, image_shape=info.image_shape)


def _synthetic_templates(num_classes: int, image_shape: tuple[int, int, int]) -> torch.Tensor:
    """One fixed smooth random pattern per class, values in [0, 1]."""
    c, h, w = image_shape
    g = torch.Generator().manual_seed(_TEMPLATE_SEED)
    coarse = torch.rand(num_classes, c, 4, 4, generator=g)
    up = torch.nn.functional.interpolate(coarse, size=(h, w), mode="bicubic", align_corners=False)
    lo = up.amin(dim=(1, 2, 3), keepdim=True)
    hi = up.amax(dim=(1, 2, 3), keepdim=True)
    return (up - lo) / (hi - lo).clamp_min(1e-6)


def synthetic_data(
    n: int, seed: int = 0, num_classes: int = 10, image_shape: tuple[int, int, int] = (1, 28, 28)
) -> TensorData:
    """A deterministic, learnable toy dataset for tests and smoke runs.

    Each class has a fixed low-frequency template (independent of ``seed``, so different
    seeds give train/test samples of the same distribution); an example is
    ``clip(a * template[y] + noise, 0, 1)`` with a random contrast ``a`` and strong pixel
    noise, so single pixels are unreliable but the whole image identifies the class.
    Labels are balanced (every class appears when ``n >= num_classes``).

    Example: ``train = synthetic_data(256, seed=0, num_classes=10, image_shape=(1, 28, 28))``
    """
    if n < 0 or num_classes < 1:
        raise DataError(f"synthetic: need n >= 0 and num_classes >= 1, got n={n}, num_classes={num_classes}")
    image_shape = tuple(int(s) for s in image_shape)
    templates = _synthetic_templates(num_classes, image_shape)
    g = torch.Generator().manual_seed(int(seed))
    y = (torch.arange(n) % num_classes)[torch.randperm(n, generator=g)]
    a = 0.5 + torch.rand(n, 1, 1, 1, generator=g)  # contrast in [0.5, 1.5)
    noise = 0.35 * torch.randn(n, *image_shape, generator=g)
    x = (templates[y] * a + noise).clamp_(0.0, 1.0)
    c = image_shape[0]
    info = dataclasses.replace(
        SYNTHETIC,
        num_classes=num_classes,
        image_shape=image_shape,
        mean=SYNTHETIC.mean[:1] * c,
        std=SYNTHETIC.std[:1] * c,
        class_names=tuple(f"class_{i}" for i in range(num_classes)),
    )
    return TensorData(x.float(), y.long(), info)
