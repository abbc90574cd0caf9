"""Weights of many layers seen as stacks of matrices, for batched linear algebra during training.

TRP and LRPET touch every eligible conv at once (a sub-gradient each step, a projection every `period`
steps). Convs of equal shape are grouped, so each group costs one stacked matrix and one batched SVD
instead of one call per layer.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from ..schemes import Scheme


@dataclass
class WeightGroup:
    """Layers whose weights have the same shape, dtype and device."""

    names: list[str]
    modules: list[nn.Module]
    scheme: Scheme

    def matrices(self) -> Tensor:
        """The weights in the scheme's matrix form, stacked: (layers, ..., m, n)."""
        return self.scheme.to_matrix(torch.stack([m.weight.detach() for m in self.modules]))

    def _weights(self, mats: Tensor) -> list[Tensor]:
        """Stacked matrices as one weight-shaped tensor per layer."""
        return list(self.scheme.from_matrix(mats, (len(self.modules), *self.modules[0].weight.shape)).unbind(0))

    @torch.no_grad()
    def write(self, mats: Tensor) -> None:
        """Copy stacked matrices back into the layers' weights."""
        # one call for the group (multi-tensor kernels on a GPU), not a copy launched per layer
        torch._foreach_copy_([m.weight for m in self.modules], self._weights(mats))

    @torch.no_grad()
    def add_to_grad(self, mats: Tensor) -> None:
        """Add stacked matrices (in matrix form) to the layers' weight gradients."""
        deltas = self._weights(mats.to(self.modules[0].weight.dtype))
        have = [(m.weight.grad, d) for m, d in zip(self.modules, deltas) if m.weight.grad is not None]
        if have:
            torch._foreach_add_(*map(list, zip(*have)))
        for m, delta in zip(self.modules, deltas):
            if m.weight.grad is None:  # laid out like the weight (channels_last), as fused optimizers require
                m.weight.grad = torch.zeros_like(m.weight).add_(delta)


def group_weights(layers: list[tuple[str, nn.Module]], scheme: Scheme) -> list[WeightGroup]:
    """Group `(name, module)` pairs by weight shape, dtype and device, keeping the first-seen order."""
    groups: dict[tuple, WeightGroup] = defaultdict(lambda: None)  # type: ignore[arg-type]
    order: list[WeightGroup] = []
    for name, module in layers:
        w = module.weight
        key = (tuple(w.shape), w.dtype, w.device)
        if groups[key] is None:
            groups[key] = WeightGroup([], [], scheme)
            order.append(groups[key])
        groups[key].names.append(name)
        groups[key].modules.append(module)
    return order
