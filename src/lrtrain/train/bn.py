"""BatchNorm statistics recalibration for models whose weights were just replaced.

A projection (LRPET, TRP) or a decomposition replaces conv weights in one step, while each BatchNorm's
running mean and variance are averages over the steps before it: evaluated right away, the model
normalizes with statistics of weights it no longer has. Re-estimating them on a few training batches
(train mode, no gradient, no weight change) gives the statistics of the model as it is.
"""

from __future__ import annotations

import itertools
from typing import Iterable

import torch
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm

from ..metrics import module_mode


@torch.no_grad()
def recalibrate_bn(model: nn.Module, batches: Iterable[tuple[Tensor, Tensor]], steps: int,
                   autocast_dtype: torch.dtype | None = None) -> int:
    """Replace every BatchNorm's running statistics by their average over `steps` batches of `batches`.

    Weights are not touched; each module's train/eval mode and each BatchNorm's momentum are restored.
    Returns the number of batches used (0 when the model has no BatchNorm or `steps` is 0).
    """
    norms = _tracking(model)
    if not norms or steps <= 0:
        return 0
    momenta = [m.momentum for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # cumulative moving average: the plain mean over the batches seen
    used = 0
    # Dropout draws in train mode: forked, the run's random streams are the same with or without this pass.
    cuda = [p.device for p in model.parameters() if p.is_cuda][:1]
    try:
        with module_mode(model, training=True), torch.random.fork_rng(devices=cuda):
            for images, _ in itertools.islice(batches, steps):
                device_type = images.device.type
                with torch.autocast(device_type, dtype=autocast_dtype or torch.bfloat16,
                                    enabled=autocast_dtype is not None):
                    model(images)
                used += 1
    finally:
        for m, momentum in zip(norms, momenta):
            m.momentum = momentum
    return used


def _tracking(model: nn.Module) -> list[_BatchNorm]:
    """The BatchNorms of `model` that keep running statistics."""
    return [m for m in model.modules() if isinstance(m, _BatchNorm) and m.track_running_stats]


def running_statistics(model: nn.Module) -> list[Tensor]:
    """The running means and variances of `model`'s BatchNorms (what `recalibrate_bn` re-estimates)."""
    return [s for m in _tracking(model) if m.running_mean is not None for s in (m.running_mean, m.running_var)]
