"""CIFAR ResNets of He et al. 2016 ("Deep Residual Learning", section 4.2): ResNet-20/32/56/110.

Three stages of 16/32/64 channels on 32×32/16×16/8×8 maps, n = (depth − 2) / 6 basic blocks per stage.
Shortcuts where the shape changes: option A (``resnet20`` ...: stride-2 subsampling and zero-padded
channels, no weights, so every weight is in a 3×3 conv but the stem's and the classifier's; the CIFAR
models of LRPET's code) or option B (``resnet20b`` ...: a 1×1 stride-2 conv and a BatchNorm, as in the
CIFAR ResNets of TRP's code, whose dense baselines the TRP paper reports).
Module names follow torchvision (``layer1.0.conv1``, ``fc``) so name-based rules work on both.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .registry import init_conv_bn_, register_model


class PadShortcut(nn.Module):
    """Option-A shortcut: parameter-free, so low-rank surgery never sees a projection conv."""

    def __init__(self, stride: int, extra_channels: int):
        super().__init__()
        self.stride = stride
        self.extra_channels = extra_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x[:, :, :: self.stride, :: self.stride]
        half = self.extra_channels // 2
        return F.pad(x, (0, 0, 0, 0, half, self.extra_channels - half))


SHORTCUTS = ("A", "B")


class BasicBlock(nn.Module):
    def __init__(self, in_planes: int, planes: int, stride: int = 1, shortcut: str = "A"):
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        if stride == 1 and in_planes == planes:
            self.shortcut = nn.Identity()
        elif shortcut == "A":
            self.shortcut = PadShortcut(stride, planes - in_planes)
        else:
            self.shortcut = nn.Sequential(nn.Conv2d(in_planes, planes, 1, stride, bias=False), nn.BatchNorm2d(planes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class CifarResNet(nn.Module):
    """ResNet-``depth`` for 32×32 inputs; ``depth`` = 6n + 2, stages of width, 2·width, 4·width channels;
    ``shortcut`` "A" (zero-padding) or "B" (1×1 conv + BN) where a block changes the shape."""

    def __init__(self, depth: int, num_classes: int = 10, width: int = 16, shortcut: str = "A"):
        super().__init__()
        if depth < 8 or (depth - 2) % 6:
            raise ValueError(f"CIFAR ResNet depth must be 6n + 2 with n >= 1, got {depth}")
        if shortcut not in SHORTCUTS:
            raise ValueError(f"CIFAR ResNet shortcut must be one of {', '.join(SHORTCUTS)}, got {shortcut!r}")
        n = (depth - 2) // 6
        self.conv1 = nn.Conv2d(3, width, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        planes = width
        stages = []
        for i in range(3):
            out_planes = width * 2**i
            blocks = []
            for j in range(n):
                blocks.append(BasicBlock(planes, out_planes, 2 if i > 0 and j == 0 else 1, shortcut))
                planes = out_planes
            stages.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3 = stages
        self.fc = nn.Linear(planes, num_classes)
        init_conv_bn_(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


@register_model
def resnet20(num_classes: int = 10, **kwargs) -> CifarResNet:
    """ResNet-20 (≈0.27 M params, ≈41 M MACs)."""
    return CifarResNet(20, num_classes, **kwargs)


@register_model
def resnet32(num_classes: int = 10, **kwargs) -> CifarResNet:
    """ResNet-32 (≈0.46 M params, ≈69 M MACs)."""
    return CifarResNet(32, num_classes, **kwargs)


@register_model
def resnet56(num_classes: int = 10, **kwargs) -> CifarResNet:
    """ResNet-56 (≈0.85 M params, ≈125 M MACs)."""
    return CifarResNet(56, num_classes, **kwargs)


@register_model
def resnet110(num_classes: int = 10, **kwargs) -> CifarResNet:
    """ResNet-110 (≈1.7 M params, ≈253 M MACs)."""
    return CifarResNet(110, num_classes, **kwargs)


# Option-B shortcuts (a 1×1 conv + BN where the shape changes), as in the CIFAR models of TRP's code.
for _depth in (20, 32, 56, 110):
    def _option_b(num_classes: int = 10, depth: int = _depth, **kwargs) -> CifarResNet:
        return CifarResNet(depth, num_classes, shortcut="B", **kwargs)

    _option_b.__doc__ = f"ResNet-{_depth} with option-B (1×1 conv + BN) shortcuts."
    register_model(_option_b, name=f"resnet{_depth}b")
