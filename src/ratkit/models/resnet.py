"""CIFAR-style ResNet-18 (3x3 stem, stride 1, no max-pool)."""

from __future__ import annotations

from typing import Sequence

import torch.nn.functional as F
from torch import Tensor, nn

from .base import CIFAR10_MEAN, CIFAR10_STD, RobustModel


class ResNetBlock(nn.Module):
    """Post-activation basic block: conv-BN-ReLU-conv-BN, + shortcut, ReLU."""

    def __init__(self, in_planes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_planes, planes, 1, stride=stride, bias=False),
                nn.BatchNorm2d(planes),
            )
        else:
            self.shortcut = nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


def resnet18_stages(block) -> list[nn.Sequential]:
    """The four [2, 2, 2, 2] stages of a ResNet-18 (widths 64-128-256-512), for either block type."""
    stages, in_planes = [], 64
    for planes, stride in ((64, 1), (128, 2), (256, 2), (512, 2)):
        stages.append(nn.Sequential(block(in_planes, planes, stride), block(planes, planes, 1)))
        in_planes = planes
    return stages


class ResNet18Family(RobustModel):
    """What both CIFAR ResNet-18s share: 3x3 stem conv, four stages of ``block``, 512 -> classes head.

    Subclasses set ``block`` and ``pre_activation`` and implement :meth:`body`.  The one BatchNorm
    outside the blocks sits where the block type needs it: after the stem (post-activation, ``bn1``)
    or after the last stage (pre-activation, ``bn``).  Layers are created in forward order, so the
    initial weights for a seed and the parameter order do not depend on this split.
    """

    block: type[nn.Module]
    pre_activation: bool

    def __init__(
        self,
        num_classes: int = 10,
        in_channels: int = 3,
        mean: Sequence[float] = CIFAR10_MEAN,
        std: Sequence[float] = CIFAR10_STD,
    ) -> None:
        super().__init__(mean, std)
        self._check_channels(in_channels)
        self.conv1 = nn.Conv2d(in_channels, 64, 3, stride=1, padding=1, bias=False)
        if not self.pre_activation:
            self.bn1 = nn.BatchNorm2d(64)
        self.layer1, self.layer2, self.layer3, self.layer4 = resnet18_stages(self.block)
        if self.pre_activation:
            self.bn = nn.BatchNorm2d(512)
        self.head = nn.Linear(512, num_classes)


class ResNet18(ResNet18Family):
    """[2, 2, 2, 2] basic blocks, widths 64-128-256-512, global avg-pool, head."""

    block = ResNetBlock
    pre_activation = False

    def body(self, z: Tensor) -> Tensor:
        out = F.relu(self.bn1(self.conv1(z)))
        out = self.layer4(self.layer3(self.layer2(self.layer1(out))))
        return F.adaptive_avg_pool2d(out, 1).flatten(1)
