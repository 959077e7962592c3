"""The TRADES "SmallCNN" for MNIST-sized inputs, with configurable widths."""

from __future__ import annotations

from typing import Sequence

from torch import Tensor, nn

from .base import RobustModel


def _spatial_after(size: int, padding: int) -> int:
    """Spatial size after two 3x3 convs (stride 1) and a 2x2 max-pool."""
    size = size + 2 * padding - 2
    size = size + 2 * padding - 2
    return size // 2


class SmallCNN(RobustModel):
    """conv-conv-pool, conv-conv-pool, fc-fc, head; the TRADES MNIST layout.

    No BatchNorm and no dropout, so the model is deterministic in train and
    eval mode.  Unlike TRADES the head is *not* zero-initialised: RAT needs
    non-degenerate head gradients from the first step.
    """

    def __init__(
        self,
        num_classes: int = 10,
        in_channels: int = 1,
        mean: Sequence[float] = (0.5,),
        std: Sequence[float] = (0.5,),
        channels: Sequence[int] = (32, 64),
        hidden: int = 200,
        input_size: Sequence[int] = (28, 28),
        padding: int = 0,
    ) -> None:
        super().__init__(mean, std)
        self._check_channels(in_channels)
        if len(channels) != 2:
            raise ValueError(f"channels must be two widths (c1, c2), got {tuple(channels)}")
        if len(input_size) != 2:
            raise ValueError(f"input_size must be (H, W), got {tuple(input_size)}")
        c1, c2 = (int(c) for c in channels)
        h, w = (int(s) for s in input_size)
        for _ in range(2):
            h, w = _spatial_after(h, padding), _spatial_after(w, padding)
        if h <= 0 or w <= 0:
            raise ValueError(f"input_size {tuple(input_size)} is too small for SmallCNN with padding={padding}")

        self.feature_extractor = nn.Sequential(
            nn.Conv2d(in_channels, c1, 3, padding=padding),
            nn.ReLU(),
            nn.Conv2d(c1, c1, 3, padding=padding),
            nn.ReLU(),
            nn.MaxPool2d(2, 2),
            nn.Conv2d(c1, c2, 3, padding=padding),
            nn.ReLU(),
            nn.Conv2d(c2, c2, 3, padding=padding),
            nn.ReLU(),
            nn.MaxPool2d(2, 2),
            nn.Flatten(),
        )
        self.classifier = nn.Sequential(
            nn.Linear(c2 * h * w, hidden),
            nn.ReLU(),
            nn.Linear(hidden, hidden),
            nn.ReLU(),
        )
        self.head = nn.Linear(hidden, num_classes)

        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_in", nonlinearity="relu")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    def body(self, z: Tensor) -> Tensor:
        return self.classifier(self.feature_extractor(z))
