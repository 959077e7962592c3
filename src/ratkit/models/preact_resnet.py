"""Pre-activation ResNet-18 (He et al. 2016), the CIFAR variant of Rice et al. 2020."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from .resnet import ResNet18Family


class PreActBlock(nn.Module):
    """BN-ReLU-conv3x3-BN-ReLU-conv3x3; the shortcut (if any) sees the pre-activated input."""

    def __init__(self, in_planes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.shortcut = (
            nn.Conv2d(in_planes, planes, 1, stride=stride, bias=False)
            if stride != 1 or in_planes != planes
            else None
        )

    def forward(self, x: Tensor) -> Tensor:
        out = F.relu(self.bn1(x))
        residual = x if self.shortcut is None else self.shortcut(out)
        out = self.conv1(out)
        out = self.conv2(F.relu(self.bn2(out)))
        return out + residual


class PreActResNet18(ResNet18Family):
    """[2, 2, 2, 2] PreActBlocks, widths 64-128-256-512, final BN-ReLU, global avg-pool, head."""

    block = PreActBlock
    pre_activation = True

    def body(self, z: Tensor) -> Tensor:
        out = self.conv1(z)
        out = self.layer4(self.layer3(self.layer2(self.layer1(out))))
        out = F.relu(self.bn(out))
        # Global pooling equals the usual avg_pool2d(out, 4) on 32x32 inputs and works for any size.
        return F.adaptive_avg_pool2d(out, 1).flatten(1)
