"""VGG-16 with BatchNorm for CIFAR (32×32 inputs), the variant the low-rank papers compress.

Thirteen 3×3 convs in five stages (the usual CIFAR cfg), each stage ending in a 2×2 max-pool, so the
last feature map is 512×1×1 and the classifier is a single 512 → num_classes linear layer.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from .registry import init_conv_bn_, register_model

VGG16_CFG = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M")


class VGG(nn.Module):
    """``features`` (conv-BN-ReLU and max-pools as listed in ``cfg``), then a linear ``classifier``."""

    def __init__(self, cfg: Sequence[int | str] = VGG16_CFG, num_classes: int = 10):
        super().__init__()
        layers: list[nn.Module] = []
        channels = 3
        for v in cfg:
            if v == "M":
                layers.append(nn.MaxPool2d(2))
            else:
                # No conv bias: the BatchNorm that follows would cancel it.
                layers += [nn.Conv2d(channels, v, 3, padding=1, bias=False), nn.BatchNorm2d(v),
                           nn.ReLU(inplace=True)]
                channels = v
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Linear(channels, num_classes)
        init_conv_bn_(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.features(x), 1))


@register_model
def vgg16(num_classes: int = 10, **kwargs) -> VGG:
    """VGG-16-BN for CIFAR (≈14.7 M params, ≈313 M MACs)."""
    return VGG(VGG16_CFG, num_classes, **kwargs)
