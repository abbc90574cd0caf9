"""BatchNorm folded into the conv before it, for inference.

In eval mode a BatchNorm2d is an affine map per channel, ``y = s·x + t`` with ``s = γ/√(var + ε)`` and
``t = β − s·mean``; when it only normalizes one conv's output it can be absorbed by that conv
(``W ← s·W``, ``b ← s·b + t``) and the BN dropped, saving a pass over the layer's output. A factorized conv
keeps its BN after its last factor, which takes the fold.
"""

from __future__ import annotations

import copy
import dataclasses
import warnings

import torch
from torch import nn

from .bn_pairs import find_pairs, output_tensors
from .layers import LowRankConv2d
from .metrics import eval_mode, model_device, model_dtype
from .surgery import replace_module


def fold_batchnorm(model: nn.Module, input_size=(1, 3, 32, 32), inplace: bool = False) -> nn.Module:
    """`model` with every foldable BatchNorm2d folded into its conv and replaced by ``nn.Identity``.

        >>> import torch, lrtrain as lr
        >>> model = lr.models.create("resnet20").eval()
        >>> folded = lr.fold_batchnorm(model)
        >>> sum(isinstance(m, torch.nn.BatchNorm2d) for m in folded.modules())
        0
        >>> x = torch.randn(2, 3, 32, 32)
        >>> torch.allclose(folded(x), model(x), atol=1e-5)
        True

    A BN is folded when it is the only consumer of a conv's output and normalizes nothing else
    (`bn_pairs.conv_bn_pairs`: plain, 1×1 and factorized convs alike; in a `LowRankConv2d` its last factor
    takes the bias) and keeps running statistics. For a model torch.fx cannot trace, the pairing comes
    from a forward pass, which can miss a use of a conv's output (a branch taken on it): such a model is
    folded on a copy first and, where that copy's outputs on a random input of `input_size` differ from
    the model's, returned unfolded, with a warning. The result computes what ``model.eval()`` computes, up
    to float round-off, and is returned in eval mode: it is for inference and export (training it would
    lose batch statistics). `input_size` is used only when the model cannot be traced with torch.fx. With
    ``inplace=False`` (the default) `model` is left as it was.
    """
    pairs, traced = find_pairs(model, input_size)
    if not traced and pairs:
        pairs = _checked(model, pairs, input_size)
    folded = model if inplace else copy.deepcopy(model)
    _fold_pairs(folded, pairs)
    return folded.eval()


def _fold_pairs(model: nn.Module, pairs: dict[str, str]) -> None:
    owners = {f"{name}.factors.{len(m.factors) - 1}": m for name, m in model.named_modules()
              if isinstance(m, LowRankConv2d)}
    for conv_name, bn_name in pairs.items():
        bn = model.get_submodule(bn_name)
        if not getattr(bn, "track_running_stats", True) or bn.running_mean is None:
            continue  # normalized by batch statistics even in eval mode: no fixed affine map to fold
        _fold_into(model.get_submodule(conv_name), bn)
        replace_module(model, bn_name, nn.Identity())
        owner = owners.get(conv_name)
        if owner is not None:  # its description (export.save) must say that its last factor has a bias now
            owner.geometry = dataclasses.replace(owner.geometry, bias=True)


def _checked(model: nn.Module, pairs: dict[str, str], input_size) -> dict[str, str]:
    """`pairs` where folding them on a copy keeps the model's outputs on a random input; else none, with a
    warning (a forward pass's pairing, for a model torch.fx cannot trace, can miss a use of a conv's output)."""
    trial = copy.deepcopy(model)
    _fold_pairs(trial, pairs)
    x = torch.randn(tuple(input_size), generator=torch.Generator().manual_seed(0)).to(
        model_device(model), model_dtype(model))
    with torch.no_grad(), eval_mode(model), eval_mode(trial):
        # each its own copy of the input: a model may write it
        expected, got = output_tensors(model(x.clone())), output_tensors(trial(x.clone()))
    tol = 1e-2 if model_dtype(model) in (torch.float16, torch.bfloat16) else 1e-4
    if len(expected) == len(got) and all(
            torch.allclose(g.float(), e.float(), rtol=tol, atol=tol * float(e.float().abs().max().clamp_min(1)))
            for e, g in zip(expected, got)):
        return pairs
    warnings.warn(f"fold_batchnorm: {type(model).__name__} cannot be traced by torch.fx, and folding its "
                  "BatchNorms changed its outputs (a conv's output is used where a forward pass cannot see): "
                  "it is left unfolded", stacklevel=3)
    return {}


@torch.no_grad()
def _fold_into(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> None:
    scale = (bn.running_var.double() + bn.eps).rsqrt()
    if bn.weight is not None:
        scale = scale * bn.weight.double()
    shift = -bn.running_mean.double() * scale
    if bn.bias is not None:
        shift = shift + bn.bias.double()
    # New parameters rather than writes in place: a weight shared with another conv stays as it was there.
    w = conv.weight
    conv.weight = nn.Parameter((w.double() * scale.view(-1, *[1] * (w.dim() - 1))).to(w.dtype))
    bias = shift if conv.bias is None else conv.bias.double() * scale + shift
    conv.bias = nn.Parameter(bias.to(device=w.device, dtype=w.dtype))
