"""Decomposition schemes: how a conv weight W (n out × c in × kh × kw) becomes factors and back.

A scheme knows four things, all pure tensor maths (the nn.Modules live in `layers`):
- the *matrix form* of W whose rank the scheme truncates (`to_matrix` / `from_matrix`), when it has one;
- the factor convs it builds for a rank (`specs`), hence their FLOPs and parameters;
- the factor weights of the best approximation of W at a rank (`factorize`), and
- the weight that factors compose to (`compose`).

Schemes:
- ``channel``  (Zhang et al. 2016): W as n × c·kh·kw; conv c→r (kh×kw, carries stride/padding) then 1×1 r→n.
- ``spatial``  (Jaderberg et al. 2014, scheme 2): W as c·kh × n·kw; conv c→r (kh×1) then r→n (1×kw).
- ``decoupled`` (network decoupling, as in TRP's code): per output filter, W[o] as c × kh·kw; rank r gives
  a 1×1 conv c→n·r followed by a grouped k×k conv n·r→n with n groups (r paths per output channel).
- ``tucker2``: W ≈ G ×₀ U_out ×₁ U_in: 1×1 c→r_in, kh×kw r_in→r_out, 1×1 r_out→n (HOSVD truncation).
"""

from __future__ import annotations

import difflib
import operator
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import torch
from torch import Tensor

from . import linalg

Pair = tuple[int, int]


@dataclass(frozen=True)
class ConvSpec:
    """Shape of one factor conv: enough to build it or count its cost."""

    in_channels: int
    out_channels: int
    kernel_size: Pair
    stride: Pair = (1, 1)
    padding: Pair = (0, 0)
    dilation: Pair = (1, 1)
    groups: int = 1
    bias: bool = False

    def out_hw(self, hw: Pair) -> Pair:
        """The output's spatial size for an input of spatial size `hw`."""
        return tuple(  # type: ignore[return-value]
            (hw[i] + 2 * self.padding[i] - self.dilation[i] * (self.kernel_size[i] - 1) - 1) // self.stride[i] + 1
            for i in range(2)
        )

    def macs(self, hw: Pair) -> int:
        """Multiply-accumulates per sample on an input of spatial size `hw`."""
        oh, ow = self.out_hw(hw)
        kh, kw = self.kernel_size
        return oh * ow * self.out_channels * (self.in_channels // self.groups) * kh * kw

    @property
    def params(self) -> int:
        """Weight (and bias) entries."""
        kh, kw = self.kernel_size
        return self.out_channels * (self.in_channels // self.groups) * kh * kw + (self.out_channels if self.bias else 0)


def integer_padding(conv: torch.nn.Conv2d) -> tuple[int, int] | None:
    """`conv`'s padding as two ints: ``"valid"`` is 0, ``"same"`` (stride 1) half the dilated kernel's
    reach where that is even on both sides; None for a ``"same"`` that pads one side more (an even kernel),
    which no factor's padding reproduces."""
    if not isinstance(conv.padding, str):
        return tuple(conv.padding)
    if conv.padding == "valid":
        return (0, 0)
    reach = [d * (k - 1) for d, k in zip(conv.dilation, conv.kernel_size)]
    return tuple(r // 2 for r in reach) if all(r % 2 == 0 for r in reach) else None


@dataclass(frozen=True)
class ConvGeometry(ConvSpec):
    """The dense conv a factorization replaces: its own `ConvSpec` (schemes only factorize groups=1;
    `groups` is kept so a skipped grouped conv is still costed right)."""

    @classmethod
    def of(cls, conv: torch.nn.Conv2d) -> "ConvGeometry":
        """The geometry of `conv`."""
        padding = integer_padding(conv) or (0, 0)  # an uneven 'same' is not factorized: costed as unpadded
        return cls(conv.in_channels, conv.out_channels, tuple(conv.kernel_size), tuple(conv.stride),
                   tuple(padding), tuple(conv.dilation), groups=conv.groups, bias=conv.bias is not None)

    @property
    def shape(self) -> tuple[int, int, int, int]:
        """The dense weight's shape (n, c / groups, kh, kw)."""
        return (self.out_channels, self.in_channels // self.groups, *self.kernel_size)


def spec_macs(specs: list[ConvSpec], hw: Pair) -> int:
    """MACs per sample of a chain of convs applied one after the other to an input of spatial size hw."""
    total = 0
    for s in specs:
        total += s.macs(hw)
        hw = s.out_hw(hw)
    return total


class Scheme:
    """Base class; subclasses are stateless and registered by name in `SCHEMES`."""

    name: ClassVar[str]
    has_matrix_form: ClassVar[bool] = True

    def max_rank(self, g: ConvGeometry):
        """The rank at which the factorization is exact for a conv of geometry `g` (a pair for tucker2)."""
        raise NotImplementedError

    def to_matrix(self, w: Tensor) -> Tensor:
        """W (n, c, kh, kw) -> the matrix (or batch of matrices) whose rank the scheme truncates; a stack of
        weights (..., n, c, kh, kw) -> a stack of them (one copy for a whole group of layers)."""
        raise TypeError(f"scheme {self.name!r} has no single matrix form")

    def from_matrix(self, m: Tensor, shape: tuple[int, ...]) -> Tensor:
        """The inverse of `to_matrix`: the weight (or stack of weights) of `shape` whose matrix form is `m`."""
        raise TypeError(f"scheme {self.name!r} has no single matrix form")

    def specs(self, g: ConvGeometry, rank) -> list[ConvSpec]:
        """The factor convs, in order, that replace a conv of geometry `g` at `rank`."""
        raise NotImplementedError

    def factorize(self, w: Tensor, rank) -> list[Tensor]:
        """Weights of the factor convs of the best approximation of `w` at `rank`."""
        raise NotImplementedError

    def compose(self, factors: list[Tensor]) -> Tensor:
        """The dense weight the factor convs compute together."""
        raise NotImplementedError

    def check_rank(self, g: ConvGeometry, rank, where: str = "layer"):
        """Validate a rank for this geometry and return it normalized (int, or (r_in, r_out) for tucker2)."""
        hi = self.max_rank(g)
        r = whole_number(rank)
        if r is None:
            raise ValueError(f"{where}: scheme {self.name!r} takes one integer rank, got {rank!r}")
        if not 1 <= r <= hi:
            raise ValueError(f"{where}: rank {rank} is out of range for scheme {self.name!r} "
                             f"(weight {tuple(g.shape)}: valid ranks are 1..{hi})")
        return r


def whole_number(value) -> int | None:
    """`value` as an int when it is a whole number (int, numpy or 0-d tensor integer, or integral float);
    None for anything else (2.9, True, "3", a list): a rank is never rounded silently."""
    if isinstance(value, (bool, np.bool_, str)) or (torch.is_tensor(value) and value.dtype == torch.bool):
        return None  # numpy's and torch's booleans have __index__ too
    try:
        return operator.index(value)
    except TypeError:
        pass
    try:
        f = float(value)
    except (TypeError, ValueError):
        return None
    return int(f) if f.is_integer() else None


def _split_sqrt(dec: linalg.SVD) -> tuple[Tensor, Tensor]:
    """(U·√S, √S·Vh): a balanced split of U S Vh, so both factors train at the same scale."""
    root = dec.S.clamp_min(0).sqrt()
    return dec.U * root.unsqueeze(-2), root.unsqueeze(-1) * dec.Vh


class Channel(Scheme):
    """W as n × c·kh·kw; a kh×kw conv c→r (the stride and padding) then a 1×1 conv r→n."""

    name = "channel"

    def max_rank(self, g):
        kh, kw = g.kernel_size
        return min(g.out_channels, g.in_channels * kh * kw)

    def to_matrix(self, w):
        return w.flatten(-3)

    def from_matrix(self, m, shape):
        return m.reshape(shape)

    def specs(self, g, rank):
        return [ConvSpec(g.in_channels, rank, g.kernel_size, g.stride, g.padding, g.dilation),
                ConvSpec(rank, g.out_channels, (1, 1), bias=g.bias)]

    def factorize(self, w, rank):
        n, c, kh, kw = w.shape
        left, right = _split_sqrt(linalg.svd(self.to_matrix(w), rank=rank))
        return [right.reshape(rank, c, kh, kw), left.reshape(n, rank, 1, 1)]

    def compose(self, factors):
        first, second = factors
        r = first.shape[0]
        return (second.reshape(-1, r) @ first.reshape(r, -1)).reshape(second.shape[0], *first.shape[1:])


class Spatial(Scheme):
    """W as c·kh × n·kw; a kh×1 conv c→r (the vertical stride and padding) then a 1×kw conv r→n."""

    name = "spatial"

    def max_rank(self, g):
        kh, kw = g.kernel_size
        return min(g.in_channels * kh, g.out_channels * kw)

    def to_matrix(self, w):
        n, c, kh, kw = w.shape[-4:]
        return w.movedim(-4, -2).reshape(*w.shape[:-4], c * kh, n * kw)  # (..., c, kh, n, kw)

    def from_matrix(self, m, shape):
        *stack, n, c, kh, kw = shape
        return m.reshape(*stack, c, kh, n, kw).movedim(-2, -4)

    def specs(self, g, rank):
        (sh, sw), (ph, pw), (dh, dw) = g.stride, g.padding, g.dilation
        return [ConvSpec(g.in_channels, rank, (g.kernel_size[0], 1), (sh, 1), (ph, 0), (dh, 1)),
                ConvSpec(rank, g.out_channels, (1, g.kernel_size[1]), (1, sw), (0, pw), (1, dw), bias=g.bias)]

    def factorize(self, w, rank):
        n, c, kh, kw = w.shape
        left, right = _split_sqrt(linalg.svd(self.to_matrix(w), rank=rank))
        first = left.mT.reshape(rank, c, kh, 1)
        second = right.reshape(rank, n, kw).permute(1, 0, 2).reshape(n, rank, 1, kw)
        return [first, second]

    def compose(self, factors):
        first, second = factors
        r, c, kh, _ = first.shape
        n, _, _, kw = second.shape
        left = first.reshape(r, c * kh).mT
        right = second.reshape(n, r, kw).permute(1, 0, 2).reshape(r, n * kw)
        return self.from_matrix(left @ right, (n, c, kh, kw))


class Decoupled(Scheme):
    """Per output filter W[o] as c × kh·kw, each truncated to rank r: a 1×1 conv c→n·r, then a grouped
    kh×kw conv n·r→n (n groups of r paths). Its rank is per filter, so it has no single matrix form."""

    name = "decoupled"

    def max_rank(self, g):
        kh, kw = g.kernel_size
        return min(g.in_channels, kh * kw)

    def to_matrix(self, w):
        return w.flatten(-2)  # a batch: one c × k² matrix per output filter

    def from_matrix(self, m, shape):
        return m.reshape(shape)

    def specs(self, g, rank):
        n = g.out_channels
        return [ConvSpec(g.in_channels, n * rank, (1, 1)),
                ConvSpec(n * rank, n, g.kernel_size, g.stride, g.padding, g.dilation, groups=n, bias=g.bias)]

    def factorize(self, w, rank):
        n, c, kh, kw = w.shape
        left, right = _split_sqrt(linalg.svd(self.to_matrix(w), rank=rank))
        pointwise = left.mT.reshape(n * rank, c, 1, 1)  # row n*rank + t is path t of filter n
        depthwise = right.reshape(n, rank, kh, kw)
        return [pointwise, depthwise]

    def compose(self, factors):
        pointwise, depthwise = factors
        n, r, kh, kw = depthwise.shape
        p = pointwise.reshape(n, r, -1)  # (n, r, c)
        return torch.einsum("ntc,nthw->nchw", p, depthwise)


class Tucker2(Scheme):
    """W ≈ G ×₀ U_out ×₁ U_in: a 1×1 conv c→r_in, the kh×kw core r_in→r_out, a 1×1 conv r_out→n; the rank
    is the pair (r_in, r_out) (one int: both), truncated by HOSVD."""

    name = "tucker2"
    has_matrix_form = False

    def max_rank(self, g):
        # r_in is the rank of the mode-1 unfolding (c × n·k²), r_out of the mode-0 one (n × c·k²): a 1×1 conv
        # with c > n has r_in ≤ n, not c.
        kh, kw = g.kernel_size
        return (min(g.in_channels, g.out_channels * kh * kw), min(g.out_channels, g.in_channels * kh * kw))

    def check_rank(self, g, rank, where="layer"):
        pair = (rank, rank) if not isinstance(rank, (tuple, list)) else tuple(rank)
        r_in, r_out = (whole_number(r) for r in pair) if len(pair) == 2 else (None, None)
        if r_in is None or r_out is None:
            raise ValueError(f"{where}: scheme 'tucker2' takes an integer rank or a pair (r_in, r_out) of them, "
                             f"got {rank!r}")
        hi_in, hi_out = self.max_rank(g)
        if not (1 <= r_in <= hi_in and 1 <= r_out <= hi_out):
            raise ValueError(f"{where}: rank {rank!r} is out of range for scheme 'tucker2' "
                             f"(weight {tuple(g.shape)}: r_in in 1..{hi_in}, r_out in 1..{hi_out})")
        return (r_in, r_out)

    def specs(self, g, rank):
        r_in, r_out = rank
        return [ConvSpec(g.in_channels, r_in, (1, 1)),
                ConvSpec(r_in, r_out, g.kernel_size, g.stride, g.padding, g.dilation),
                ConvSpec(r_out, g.out_channels, (1, 1), bias=g.bias)]

    def factorize(self, w, rank):
        r_in, r_out = rank
        n, c, kh, kw = w.shape
        u_out = linalg.svd(w.reshape(n, -1)).U[:, :r_out]
        u_in = linalg.svd(w.transpose(0, 1).reshape(c, -1)).U[:, :r_in]
        core = torch.einsum("nchw,na,cb->abhw", w, u_out.to(w.dtype), u_in.to(w.dtype))
        return [u_in.mT.reshape(r_in, c, 1, 1), core, u_out.reshape(n, r_out, 1, 1)]

    def compose(self, factors):
        u_in, core, u_out = factors
        return torch.einsum("abhw,na,bc->nchw", core, u_out[:, :, 0, 0], u_in[:, :, 0, 0])


SCHEMES: dict[str, Scheme] = {s.name: s for s in (Channel(), Spatial(), Decoupled(), Tucker2())}


def get_scheme(name: str | Scheme) -> Scheme:
    """Look a scheme up by name; an unknown name raises ValueError listing the valid ones."""
    if isinstance(name, Scheme):
        return name
    try:
        return SCHEMES[name]
    except KeyError:
        hint = difflib.get_close_matches(str(name), SCHEMES, n=1)
        extra = f" (did you mean {hint[0]!r}?)" if hint else ""
        raise ValueError(f"unknown scheme {name!r}{extra}; valid schemes: {', '.join(SCHEMES)}") from None
