"""The optimizer: SGD over a model's trainable parameters, rebuilt when a method replaces layers."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn


def build_sgd(model: nn.Module, opt: dict[str, Any], device: torch.device,
              previous: torch.optim.Optimizer | None = None) -> torch.optim.SGD:
    """SGD over `model`'s trainable parameters with the recipe's ``optim`` settings (`opt`); parameters
    that survive a rebuild keep their momentum from `previous`."""
    params = [p for p in model.parameters() if p.requires_grad]
    if opt["no_decay_norm_bias"]:
        groups = [{"params": [p for p in params if p.ndim > 1]},
                  {"params": [p for p in params if p.ndim <= 1], "weight_decay": 0.0}]
    else:
        groups = [{"params": params}]
    optimizer = torch.optim.SGD(groups, lr=opt["lr"], momentum=opt["momentum"], nesterov=opt["nesterov"],
                                weight_decay=opt["weight_decay"], fused=True if device.type == "cuda" else None)
    if previous is not None:
        for p in params:
            state = previous.state.get(p, {})
            if state and all(v.shape == p.shape for v in state.values() if torch.is_tensor(v) and v.ndim):
                optimizer.state[p] = state
        _fill_momentum(optimizer)
        _match_layouts(optimizer)
    return optimizer


def load_optimizer_state(optimizer: torch.optim.Optimizer, state: dict[str, Any]) -> None:
    """`optimizer.load_state_dict(state)` (a checkpoint's), keeping this device's choice of fused SGD, not
    the saver's, and the buffers in the layouts fused SGD takes."""
    fused = [g["fused"] for g in optimizer.param_groups]
    optimizer.load_state_dict(state)
    for group, f in zip(optimizer.param_groups, fused):
        group["fused"] = f
    _fill_momentum(optimizer)  # saved right after a swap, before its new layers took a step
    _match_layouts(optimizer)


def _match_layouts(optimizer: torch.optim.Optimizer) -> None:
    """Give each state tensor its parameter's memory layout. Loaded or carried-over momentum keeps the
    layout it was saved with (NCHW from a CPU run), and fused CUDA SGD refuses buffers strided unlike
    their parameters (channels_last convs)."""
    for group in optimizer.param_groups:
        for p in group["params"]:
            state = optimizer.state.get(p, {})
            for key, value in state.items():
                if torch.is_tensor(value) and value.shape == p.shape and value.stride() != p.stride():
                    state[key] = torch.empty_like(p).copy_(value)


def _fill_momentum(optimizer: torch.optim.SGD) -> None:
    """Give a zero momentum buffer to each new parameter once any parameter carries one over.

    Fused SGD (the CUDA default) takes its buffers as one list that must be all tensors or all None:
    after a swap the surviving BatchNorm and classifier parameters keep theirs and the new factors
    have none, which it refuses. With no dampening a zero buffer is exactly SGD's own first step
    (buffer = gradient), so the new parameters train as they would in a fresh optimizer."""
    params = [p for group in optimizer.param_groups for p in group["params"]]
    if not any("momentum_buffer" in optimizer.state.get(p, {}) for p in params):
        return
    for p in params:
        if "momentum_buffer" not in optimizer.state[p]:  # setdefault would allocate zeros for every one
            optimizer.state[p]["momentum_buffer"] = torch.zeros_like(p)
