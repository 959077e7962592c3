"""Common base class of every ratkit model.

Every model takes inputs in [0, 1] pixel space and owns its input
normalisation, so attacks (epsilon balls, clamping to [0, 1]) work in pixel
space and never need to know the data statistics.  Every model also exposes
its penultimate features and its final linear layer (`head`) because RAT
works on both directly.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor, nn

from ..data.datasets import DATASETS

# Default statistics for the CIFAR-style models: the CIFAR-10 training set's, as the dataset registry has them.
CIFAR10_MEAN: tuple[float, ...] = DATASETS["cifar10"].mean
CIFAR10_STD: tuple[float, ...] = DATASETS["cifar10"].std


class RobustModel(nn.Module):
    """Base class: normalise -> body (penultimate features) -> head (logits).

    Subclasses build their layers, set ``self.head`` to an ``nn.Linear`` and
    implement :meth:`body`.  No weights are cached anywhere, so the models work
    unchanged under ``torch.func.functional_call``.
    """

    head: nn.Linear

    def __init__(self, mean: Sequence[float], std: Sequence[float]) -> None:
        super().__init__()
        mean_v = tuple(float(m) for m in mean)
        std_v = tuple(float(s) for s in std)
        if len(mean_v) == 0 or len(mean_v) != len(std_v):
            raise ValueError(f"mean and std must be non-empty sequences of equal length, got {mean_v} and {std_v}")
        if not all(s > 0 for s in std_v):
            raise ValueError(f"std must be positive, got {std_v}")
        mean_t = torch.tensor(mean_v, dtype=torch.float32)
        std_t = torch.tensor(std_v, dtype=torch.float32)
        # Buffers (not parameters): they travel with state_dict / .to() but are never trained.
        self.register_buffer("mean", mean_t.view(1, -1, 1, 1))
        self.register_buffer("std", std_t.view(1, -1, 1, 1))

    def _check_channels(self, in_channels: int) -> None:
        """Fail early when the normalisation statistics cannot match the input channels."""
        c = self.mean.shape[1]
        if c not in (1, in_channels):
            raise ValueError(
                f"mean/std have {c} channels but the model takes in_channels={in_channels}; "
                "pass mean/std with one value per channel (or a single value)"
            )

    def normalize(self, x: Tensor) -> Tensor:
        """Map [0, 1] pixels to the network's input space."""
        return (x - self.mean) / self.std

    def body(self, z: Tensor) -> Tensor:
        """Map the normalised input to the penultimate features (B, feature_dim)."""
        raise NotImplementedError

    def features(self, x: Tensor) -> Tensor:
        """Penultimate features of pixel-space input ``x`` (what RAT perturbs through the head)."""
        return self.body(self.normalize(x))

    def forward(self, x: Tensor, with_features: bool = False) -> Tensor | tuple[Tensor, Tensor]:
        """Logits; with ``with_features`` also the penultimate features, from the same pass
        (the training loss uses both, and under DistributedDataParallel it must go through forward)."""
        feats = self.features(x)
        logits = self.head(feats)
        return (feats, logits) if with_features else logits

    @property
    def feature_dim(self) -> int:
        return self.head.in_features

    @property
    def num_classes(self) -> int:
        return self.head.out_features
