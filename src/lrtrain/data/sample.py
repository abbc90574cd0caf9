"""A small procedurally generated image-classification set, for demos and tests when no real data exists.

Each class has a prototype: a smooth random colour texture (a few low-frequency waves per channel).
An image is its class's prototype, circularly shifted, mixed with another class's prototype, with
random contrast, brightness and pixel noise. A small CNN learns it in a few epochs (translation and
distractors make it more than a lookup), and it is the same for a given seed on every machine.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor


def _prototypes(num_classes: int, size: int, g: torch.Generator, waves: int = 4) -> Tensor:
    """num_classes × 3 × size × size smooth textures with unit standard deviation."""
    coords = torch.arange(size, dtype=torch.float64) * (2 * math.pi / size)
    # Integer frequencies keep each texture periodic, so circular shifts leave no seam.
    freq = torch.randint(-3, 4, (num_classes, 3, waves, 2), generator=g).double()
    phase = torch.rand(num_classes, 3, waves, 1, 1, generator=g, dtype=torch.float64) * 2 * math.pi
    arg = freq[..., 0, None, None] * coords[:, None] + freq[..., 1, None, None] * coords[None, :] + phase
    proto = torch.cos(arg).sum(2)
    proto = proto - proto.mean(dim=(-1, -2), keepdim=True)
    return proto / proto.flatten(1).std(1).clamp_min(1e-6).view(-1, 1, 1, 1)


def make_sample(num_train: int = 5000, num_test: int = 1000, image_size: int = 32, num_classes: int = 10,
                seed: int = 0) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """(train images, train labels, test images, test labels): uint8 N×3×S×S and int64, classes balanced.

    >>> x, y, xt, yt = make_sample(num_train=20, num_test=10, image_size=8, num_classes=4)
    >>> x.shape, x.dtype, y[:6].tolist(), xt.shape
    (torch.Size([20, 3, 8, 8]), torch.uint8, [0, 1, 2, 3, 0, 1], torch.Size([10, 3, 8, 8]))
    """
    g = torch.Generator().manual_seed(seed)
    proto = _prototypes(num_classes, image_size, g)
    # each split from its own stream, so that the test images do not depend on the training set's size
    train_seed, test_seed = torch.randint(2**62, (2,), generator=g).tolist()
    return (*_images(proto, num_train, torch.Generator().manual_seed(train_seed)),
            *_images(proto, num_test, torch.Generator().manual_seed(test_seed)))


def _images(proto: Tensor, n: int, g: torch.Generator) -> tuple[Tensor, Tensor]:
    """n uint8 images of `proto`'s classes, in turn, and their labels."""
    num_classes, _, image_size, _ = proto.shape
    labels = torch.arange(n) % num_classes
    distractor = (labels + torch.randint(1, num_classes, (n,), generator=g)) % num_classes \
        if num_classes > 1 else labels
    shift = torch.randint(-image_size // 4, image_size // 4 + 1, (n, 2), generator=g)
    images = torch.empty(n, 3, image_size, image_size, dtype=torch.float64)
    for i in range(n):  # about 0.3 ms per image; the generated sets are small
        mixed = proto[labels[i]] + 0.5 * proto[distractor[i]]
        images[i] = torch.roll(mixed, shifts=tuple(shift[i].tolist()), dims=(1, 2))
    contrast = 0.6 + 0.8 * torch.rand(n, 1, 1, 1, generator=g, dtype=torch.float64)
    brightness = 0.5 * torch.randn(n, 3, 1, 1, generator=g, dtype=torch.float64)
    noise = 0.6 * torch.randn(images.shape, generator=g, dtype=torch.float64)
    pixels = 128 + 40 * (images * contrast + brightness + noise)
    return pixels.round().clamp(0, 255).to(torch.uint8), labels
