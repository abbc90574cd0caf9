"""Factorized layers: `LowRankConv2d` and `LowRankLinear`.

Each is a thin nn.Module over a chain of standard layers (so it exports, compiles and traces like any
other model; plain 1×1 factors are `PointwiseConv2d`, an nn.Conv2d with a faster NCHW path, which
type-keyed tools such as eager-mode quantization mappings must list); the maths of each decomposition
lives in `schemes`.
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.modules.utils import _pair

from . import linalg
from .schemes import ConvGeometry, Scheme, get_scheme, integer_padding, spec_macs, whole_number


def computed_weight(layer: nn.Module, base: type[nn.Module]) -> str:
    """Why the weight stored in `layer` (an instance of `base`, nn.Conv2d or nn.Linear) is not the one it
    applies, so that a factorization of it, or a projection written into it, would change the function or
    be lost: a subclass with its own forward (a weight standardization, 'same' padding, quantization) or a
    weight parametrization (weight or spectral norm). "" where it applies its stored weight as `base` does."""
    from torch.nn.utils import parametrize

    if parametrize.is_parametrized(layer, "weight") or hasattr(layer, "weight_g") or hasattr(layer, "weight_orig"):
        return "its weight is computed by a parametrization (weight or spectral norm), not stored"
    if type(layer).forward is not base.forward and not isinstance(layer, PointwiseConv2d):
        return (f"{type(layer).__name__} computes its own forward (e.g. a weight standardization or 'same' "
                f"padding), which a factorization of its weight would not keep")
    return ""


def check_factorizable(conv: nn.Conv2d, where: str = "conv") -> None:
    """Raise ValueError when `conv` is of a kind no scheme factorizes (grouped, non-zero padding mode, a
    weight it computes rather than stores...)."""
    if not isinstance(conv, nn.Conv2d):
        raise ValueError(f"{where}: expected an nn.Conv2d, got {type(conv).__name__}")
    computed = computed_weight(conv, nn.Conv2d)
    if computed:
        raise ValueError(f"{where}: {computed}")
    if conv.groups != 1:
        kind = "depthwise" if conv.groups == conv.in_channels else "grouped"
        raise ValueError(f"{where}: {kind} conv (groups={conv.groups}) cannot be factorized; "
                         "only groups=1 convs are supported")
    if integer_padding(conv) is None:
        raise ValueError(f"{where}: padding={conv.padding!r} with kernel {tuple(conv.kernel_size)} pads one side "
                         "more than the other, which no factor's padding reproduces; use integer padding")
    if conv.padding_mode != "zeros":
        raise ValueError(f"{where}: padding_mode={conv.padding_mode!r} is not supported; only 'zeros'")


def _frozen_like(layer: nn.Module, dense: nn.Module) -> nn.Module:
    """`layer` with its parameters frozen where `dense`'s were (a frozen layer stays frozen once factorized)."""
    for name, param in layer.named_parameters():
        source = dense.bias if name.endswith("bias") and getattr(dense, "bias", None) is not None else dense.weight
        param.requires_grad_(source.requires_grad)
    return layer


class PointwiseConv2d(nn.Conv2d):
    """A 1×1, stride-1 conv that runs as one matrix product on NCHW inputs; same parameters, same result.

    The factors of low-rank layers are mostly 1×1 convs over few channels, which oneDNN runs in NCHW far
    below its matrix-product speed: on this project's 2-core Xeon, 8→16 channels at 32×32, batch 32, the
    conv takes 4.9 ms forward and the batched matrix product 0.5 ms (forward + backward: 13.1 vs 3.8 ms).
    Inputs in any other layout (channels_last) keep the conv, a matrix product there already.
    """

    def __init__(self, in_channels: int, out_channels: int, bias: bool = True, device=None, dtype=None):
        super().__init__(in_channels, out_channels, 1, bias=bias, device=device, dtype=dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return pointwise_conv(x, self.weight, self.bias)


@torch.fx.wrap  # one opaque call in a torch.fx graph: its layout test cannot be traced symbolically
def pointwise_conv(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor]) -> torch.Tensor:
    """``F.conv2d(x, weight, bias)`` for a 1×1 `weight`, as a matrix product when `x` is NCHW-contiguous."""
    if x.dim() != 4 or not x.is_contiguous():
        return F.conv2d(x, weight, bias)
    b, c, h, w = x.shape
    n = weight.shape[0]
    # bmm over the expanded weight, not matmul: for a weight that requires grad, matmul folds the batch
    # into one mm of the transposed input and copies it twice (7x slower forward here)
    w3, x3 = weight.view(1, n, c).expand(b, n, c), x.view(b, c, h * w)
    if bias is None:
        return torch.bmm(w3, x3).view(b, n, h, w)
    # the bias inside the product: a separate add (a folded BatchNorm's shift) is one more pass over the
    # output, 8 of a compact ResNet-20's 52 ms at batch 32 on this CPU; autocast casts all three alike
    return torch.baddbmm(bias.view(1, n, 1), w3, x3).view(b, n, h, w)


def _factor_conv(s, device, dtype) -> nn.Conv2d:
    """The conv of one factor spec: `PointwiseConv2d` where it is a plain 1×1 conv."""
    if (s.kernel_size, s.stride, s.padding, s.groups) == ((1, 1), (1, 1), (0, 0), 1):
        return PointwiseConv2d(s.in_channels, s.out_channels, s.bias, device=device, dtype=dtype)
    return nn.Conv2d(s.in_channels, s.out_channels, s.kernel_size, s.stride, s.padding, s.dilation, s.groups,
                     s.bias, device=device, dtype=dtype)


class LowRankConv2d(nn.Module):
    """A conv2d stored as a chain of smaller convs, one rank per `scheme`.

    Build it from a trained conv (best approximation at `rank`) or from scratch (random factors, as
    low-rank training does)::

        >>> conv = nn.Conv2d(16, 32, 3, padding=1)
        >>> low = LowRankConv2d.from_dense(conv, rank=8, scheme="channel")
        >>> low(torch.randn(2, 16, 8, 8)).shape
        torch.Size([2, 32, 8, 8])
        >>> low.to_dense().weight.shape    # the rank-8 weight as one conv again
        torch.Size([32, 16, 3, 3])

    `rank` is an int, or for ``tucker2`` an int or a pair ``(r_in, r_out)``.
    """

    # TorchScript compiles properties; these read Python-only state (the scheme), so scripting skips them.
    __jit_unused_properties__ = ["rank", "max_rank", "weight", "bias", "in_channels", "out_channels", "kernel_size",
                                 "stride", "padding", "dilation", "groups"]

    def __init__(self, in_channels: int, out_channels: int, kernel_size, rank, scheme: str | Scheme = "channel",
                 stride=1, padding=0, dilation=1, bias: bool = True, device=None, dtype=None):
        super().__init__()
        self.scheme = get_scheme(scheme)
        self.geometry = ConvGeometry(in_channels, out_channels, _pair(kernel_size), _pair(stride), _pair(padding),
                                     _pair(dilation), bias=bias)
        where = f"LowRankConv2d({in_channels}, {out_channels}, kernel_size={self.geometry.kernel_size})"
        self._rank = self.scheme.check_rank(self.geometry, rank, where=where)
        self.factors = nn.Sequential(*[_factor_conv(s, device, dtype)
                                       for s in self.scheme.specs(self.geometry, self._rank)])

    @classmethod
    def from_dense(cls, conv: nn.Conv2d, rank, scheme: str | Scheme = "channel") -> "LowRankConv2d":
        """The best approximation of `conv` at `rank` in `scheme` (exact when the rank is full).

        For ``channel`` and ``spatial`` the composed weight is the Eckart–Young optimum of the scheme's
        matrix form; ``tucker2`` uses the truncated HOSVD.
        """
        check_factorizable(conv)
        g = ConvGeometry.of(conv)
        layer = cls(g.in_channels, g.out_channels, g.kernel_size, rank, scheme, g.stride, g.padding, g.dilation,
                    g.bias, device=conv.weight.device, dtype=conv.weight.dtype)
        layer.load_weight(conv.weight, conv.bias)
        return _frozen_like(layer, conv)

    @torch.no_grad()
    def load_weight(self, weight: torch.Tensor, bias: torch.Tensor | None = None) -> None:
        """Set the factors to the best approximation of a dense `weight` at this layer's rank."""
        if tuple(weight.shape) != self.geometry.shape:
            raise ValueError(f"weight of shape {tuple(weight.shape)} does not fit a layer of shape {self.geometry.shape}")
        for conv, w in zip(self.factors, self.scheme.factorize(weight.detach(), self._rank)):
            conv.weight.copy_(w)
        if bias is not None:
            self.factors[-1].bias.copy_(bias.detach())

    @property
    def rank(self):
        """The factorization's rank: an int, or a tucker2 layer's (r_in, r_out) pair."""
        return self._rank

    @property
    def max_rank(self):
        """The largest rank of the layer's scheme (a tucker2 layer: its pair)."""
        return self.scheme.max_rank(self.geometry)

    # The dense conv's attributes, for code that inspects a model's convs (as nn.Conv2d has them).
    in_channels = property(lambda self: self.geometry.in_channels, doc="The dense conv's input channels.")
    out_channels = property(lambda self: self.geometry.out_channels, doc="The dense conv's output channels.")
    kernel_size = property(lambda self: self.geometry.kernel_size, doc="The dense conv's (kh, kw).")
    stride = property(lambda self: self.geometry.stride, doc="The dense conv's stride (kept by the factors).")
    padding = property(lambda self: self.geometry.padding, doc="The dense conv's padding, as two ints.")
    dilation = property(lambda self: self.geometry.dilation, doc="The dense conv's dilation.")
    groups = property(lambda self: 1, doc="1: only groups=1 convs are factorized.")

    @property
    def weight(self) -> torch.Tensor:
        """The dense weight the factors compute (built on demand: never stored), in their dtype: exact
        float32 products even under autocast or TF32 (a bf16 product would round it)."""
        with linalg.full_precision():
            return self.scheme.compose([c.weight for c in self.factors])

    @property
    def bias(self) -> torch.Tensor | None:
        """The dense conv's bias, carried by the last factor (None where the conv had none)."""
        return self.factors[-1].bias

    def forward(self, x):
        return self.factors(x)

    def flops(self, in_hw) -> int:
        """Multiply-accumulates per sample for an input of spatial size `in_hw`."""
        return spec_macs(self.scheme.specs(self.geometry, self._rank), _pair(in_hw))

    @torch.no_grad()
    def to_dense(self) -> nn.Conv2d:
        """One nn.Conv2d computing the same function."""
        g = self.geometry
        w = self.weight
        conv = nn.Conv2d(g.in_channels, g.out_channels, g.kernel_size, g.stride, g.padding, g.dilation,
                         bias=g.bias, device=w.device, dtype=w.dtype)
        conv.weight.copy_(w)
        if g.bias:
            conv.bias.copy_(self.bias)
        return conv

    def extra_repr(self):
        g = self.geometry
        return (f"{g.in_channels}, {g.out_channels}, kernel_size={g.kernel_size}, stride={g.stride}, "
                f"padding={g.padding}, scheme={self.scheme.name!r}, rank={self._rank}")


class LowRankLinear(nn.Module):
    """A linear layer as two: in→rank then rank→out (truncated SVD of the weight).

        >>> low = LowRankLinear.from_dense(nn.Linear(64, 10), rank=4)
        >>> low(torch.randn(3, 64)).shape
        torch.Size([3, 10])
    """

    __jit_unused_properties__ = ["rank", "max_rank", "weight", "bias"]  # as in LowRankConv2d: keeps it scriptable

    def __init__(self, in_features: int, out_features: int, rank: int, bias: bool = True, device=None, dtype=None):
        super().__init__()
        hi = min(in_features, out_features)
        whole = whole_number(rank)  # 2.0 is 2, as LowRankConv2d takes it; 2.5 and True are refused
        if whole is None or not 1 <= whole <= hi:
            what = "is out of range" if whole is not None else "is not an integer"
            raise ValueError(f"LowRankLinear({in_features}, {out_features}): rank {rank!r} {what} "
                             f"(valid ranks are 1..{hi})")
        rank = whole
        self.in_features, self.out_features, self._rank = in_features, out_features, rank
        self.factors = nn.Sequential(nn.Linear(in_features, rank, bias=False, device=device, dtype=dtype),
                                     nn.Linear(rank, out_features, bias=bias, device=device, dtype=dtype))

    @classmethod
    def from_dense(cls, linear: nn.Linear, rank: int) -> "LowRankLinear":
        """The best rank-`rank` approximation of `linear` (truncated SVD, √σ on each side; bias kept)."""
        if not isinstance(linear, (nn.Linear, LowRankLinear)):  # a low-rank one: truncated further
            raise ValueError(f"LowRankLinear.from_dense: expected an nn.Linear, got {type(linear).__name__}")
        computed = "" if isinstance(linear, LowRankLinear) else computed_weight(linear, nn.Linear)
        if computed:
            raise ValueError(f"LowRankLinear.from_dense: {computed}")
        layer = cls(linear.in_features, linear.out_features, rank, linear.bias is not None,
                    device=linear.weight.device, dtype=linear.weight.dtype)
        with torch.no_grad():
            dec = linalg.svd(linear.weight.detach(), rank=rank)
            root = dec.S.sqrt()
            layer.factors[0].weight.copy_(root[:, None] * dec.Vh)
            layer.factors[1].weight.copy_(dec.U * root)
            if linear.bias is not None:
                layer.factors[1].bias.copy_(linear.bias)
        return _frozen_like(layer, linear)


    @property
    def rank(self) -> int:
        """The inner dimension of the two factors."""
        return self._rank

    @property
    def max_rank(self) -> int:
        """The rank at which the factorization is exact."""
        return min(self.in_features, self.out_features)

    @property
    def weight(self) -> torch.Tensor:
        """The out × in weight the factors compose to (built on each access), in their dtype, as exact
        under autocast as outside it."""
        with linalg.full_precision():
            return self.factors[1].weight @ self.factors[0].weight

    @property
    def bias(self) -> torch.Tensor | None:
        """The dense layer's bias, carried by the second factor (None where it had none)."""
        return self.factors[1].bias

    def forward(self, x):
        return self.factors(x)

    def flops(self, rows: int = 1) -> int:
        """Multiply-accumulates for `rows` input vectors."""
        return rows * self._rank * (self.in_features + self.out_features)

    @torch.no_grad()
    def to_dense(self) -> nn.Linear:
        """The one nn.Linear that computes what the factors do."""
        w = self.weight
        out = nn.Linear(self.in_features, self.out_features, bias=self.bias is not None, device=w.device, dtype=w.dtype)
        out.weight.copy_(w)
        if self.bias is not None:
            out.bias.copy_(self.bias)
        return out

    def extra_repr(self):
        return f"{self.in_features}, {self.out_features}, rank={self._rank}"
