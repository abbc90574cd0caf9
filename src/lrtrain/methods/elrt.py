"""ELRT (Sui et al., "ELRT: Efficient Low-Rank Training for Compact CNNs", 2024): low-rank from the first step.

Every eligible conv is replaced, before training, by a factorized conv built from scratch; the network
trains in that form for the whole run, so no full-size weight is ever built or updated. The paper's format
is Tucker-2: a 1×1 conv c→r_in (factor U_in), a k×k core conv r_in→r_out (G), and a 1×1 conv r_out→n
(factor U_out), i.e. W[n,c,i,j] = Σ G[a,b,i,j] U_out[n,a] U_in[c,b]. Its accuracy-improving strategy is an
orthogonality regularizer on the factor matrices,

    λ Σ_l ‖U_outᵀ U_out − I‖²_F + ‖U_inᵀ U_in − I‖²_F,

whose gradient 4λ·U(UᵀU − I) is added in closed form in `before_step` (no autograd through the model),
one batched matmul per group of equal-shaped factors. The matrix ("channel") format, k×k conv c→r then
1×1 r→n, is offered for comparison: its two factors (n × r and c·k² × r) are regularized the same way.

Every factor is seen as a matrix whose *rows* should be orthonormal (r × m, r ≤ m): the first factor of a
chain is stored that way (U_inᵀ, or the k×k factor as r × c·k²), the last one transposed (U_out is n × r),
so ‖VVᵀ − I‖ on the row form is ‖UᵀU − I‖ on the column form.
"""

from __future__ import annotations

import logging
import math
from collections import defaultdict
from dataclasses import dataclass
from typing import Any, Callable, Iterable

import torch
from torch import Tensor, nn

from .. import linalg
from ..layers import LowRankConv2d, LowRankLinear
from ..metrics import trace_shapes
from ..ranks import Rank, RankPolicy, RankRequest, parse_policy
from ..schemes import ConvGeometry, get_scheme
from ..surgery import Decision, candidates, plan, replace_module, why_none
from . import register_method
from .base import Method

log = logging.getLogger("lrtrain")

SCHEMES = ("tucker2", "channel")
LowRank = LowRankConv2d | LowRankLinear


@dataclass
class _Factor:
    """One factor weight seen as an r × m matrix whose rows the regularizer makes orthonormal."""

    param: nn.Parameter
    rows: int
    cols: int
    transposed: bool  # stored as m × r (the last factor of a chain: U_out, or the linear's out × r)

    def unmatrix(self, m: Tensor) -> Tensor:
        """An r × m matrix back in the parameter's shape (the inverse of `_matrices` for one factor)."""
        return (m.mT if self.transposed else m).reshape(self.param.shape)


def _matrices(group: list[_Factor], stacked: Tensor) -> Tensor:
    """The r × m matrices of a group of factors of one shape and orientation, from their stacked parameters,
    in float32 at least: VVᵀ − I of near-orthonormal bf16 factors is as large as bf16's rounding at 1."""
    f = group[0]
    mats = (stacked.reshape(len(group), f.cols, f.rows).mT if f.transposed
            else stacked.reshape(len(group), f.rows, f.cols))
    return mats.to(linalg.working_dtype(mats.dtype))


def _factors(layer: LowRank) -> list[_Factor]:
    first, last = layer.factors[0].weight, layer.factors[-1].weight
    return [_Factor(first, first.shape[0], first[0].numel(), False),
            _Factor(last, last.shape[1], last.shape[0], True)]


@torch.no_grad()
def _init_orthogonal(layer: LowRank, gain: float) -> None:
    """Orthonormal factors; the Tucker-2 core is scaled so the composed weight has variance gain²/fan_in.

    With U_in (r_in × c) and U_out (n × r_out) orthonormal and G iid of variance σ², an entry of the composed
    weight has variance σ²·(r_in/c)·(r_out/n), so σ² = gain²·n / (r_in·r_out·k²) matches Kaiming's
    gain²/(c·k²): the three-factor product starts as a variance-preserving layer. A two-factor chain has no
    free factor: its scale is that of its orthonormal factors (the regularizer holds it there anyway).
    """
    for f in _factors(layer):
        # LAPACK/cuSOLVER have no QR in bf16/fp16: those take float32's
        dtype = f.param.dtype if f.param.dtype in (torch.float32, torch.float64) else torch.float32
        q = nn.init.orthogonal_(torch.empty(f.rows, f.cols, dtype=dtype, device=f.param.device))
        f.param.copy_(f.unmatrix(q).to(f.param.dtype))
    _init_core(layer, gain)


@torch.no_grad()
def _init_gaussian(layer: LowRank, gain: float) -> None:
    """The variances of `_init_orthogonal`, iid Gaussian: the same scale without orthonormality."""
    for f in _factors(layer):
        f.param.normal_(0.0, 1.0 / math.sqrt(f.cols))
    _init_core(layer, gain)


def _init_core(layer: LowRank, gain: float) -> None:
    """The Tucker-2 core at σ² = gain²·n / (r_in·r_out·k²) (see `_init_orthogonal`); no-op for two factors."""
    if len(layer.factors) == 3:
        core = layer.factors[1].weight
        r_out, r_in, kh, kw = core.shape
        n = layer.factors[2].weight.shape[0]
        core.normal_(0.0, gain * math.sqrt(n / (r_in * r_out * kh * kw)))


@torch.no_grad()
def _init_kaiming(layer: LowRank, gain: float) -> None:
    """Each factor on its own as a Kaiming fan-in layer (the naive choice: the product's scale drifts)."""
    for m in layer.factors:
        fan_in = m.weight[0].numel()
        m.weight.normal_(0.0, gain / math.sqrt(fan_in))


INITS: dict[str, Callable[[LowRank, float], None]] = {
    "orthogonal": _init_orthogonal, "gaussian": _init_gaussian, "kaiming": _init_kaiming,
}


def _choice(value: str, valid: Iterable[str], what: str) -> str:
    if value not in valid:
        raise ValueError(f"ELRT: unknown {what} {value!r}; valid choices: {', '.join(valid)}")
    return value


def _default_skip(model: nn.Module, input_size) -> list[str]:
    """The first conv the input meets and the last linear layer (the classifier), by call order."""
    shapes = trace_shapes(model, input_size)
    convs = [n for n in shapes if isinstance(model.get_submodule(n), nn.Conv2d)]
    linears = [n for n in shapes if isinstance(model.get_submodule(n), nn.Linear)]
    return convs[:1] + linears[-1:]


def _tied(req: RankRequest) -> RankRequest:
    """A tucker2 request over one rank r meaning (r, r), so a policy picks equal input and output ranks."""
    if not isinstance(req.max_rank, tuple):
        return req
    return RankRequest(req.name, min(req.max_rank), cost=lambda r, cost=req.cost: cost((r, r)),
                       dense_cost=req.dense_cost)


@register_method("elrt")
class ELRT(Method):
    """Low-rank training from scratch: factorized convs from the first step, orthogonality-regularized.

    The constructor replaces (in place) every eligible conv and linear layer of `model` by a freshly
    initialized `LowRankConv2d` / `LowRankLinear` and frees the dense weight, so build the optimizer after
    it, from ``method.model.parameters()``::

        >>> import torch, lrtrain as lr
        >>> model = lr.models.create("resnet20")
        >>> method = ELRT(model, rank="flops:0.46")               # Tucker-2, equal ranks, λ = orth
        >>> lr.count(model).flops <= 0.46 * lr.count(lr.models.create("resnet20")).flops
        True
        >>> opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
        >>> loss = model(torch.randn(4, 3, 32, 32)).logsumexp(1).mean()
        >>> loss.backward(); method.before_step(); opt.step(); opt.zero_grad(); method.after_step()
        >>> method.finalize() is model                           # already compact: nothing to decompose
        True

    Args:
        model: any nn.Module; it is modified in place.
        rank: a rank policy for training from scratch: ``"flops:f"`` / `FlopsBudget` (the whole model,
            skipped layers included, costs at most f × its dense MACs; one common rank ratio is searched),
            ``"ratio:x"``, ``"fixed:k"``, an int, or ``{layer name: rank}`` (a tucker2 rank is an int or a
            pair ``(r_in, r_out)``; unnamed layers stay dense). Policies that need a trained weight's
            spectrum (energy, threshold) are refused.
        scheme: ``"tucker2"`` (the paper's format) or ``"channel"`` (the matrix format, for comparison).
        orth: λ of the orthogonality regularizer; 0 turns it off.
        init: ``"orthogonal"`` (orthonormal factors, variance-preserving core; the default: at least as
            good as the others in benchmarks/elrt_init.py, and the regularizer starts at zero),
            ``"gaussian"`` (the same variances, not orthonormal) or ``"kaiming"`` (each factor as its own
            Kaiming layer).
        equal_ranks: tucker2 only: a policy picks r_in = r_out (at most min(c, n)); False lets each mode
            take its own share of its dimension. Explicit per-layer ranks are used as given.
        skip: fnmatch patterns of layers kept dense; None keeps the first conv and the classifier (the
            last linear layer) dense (with per-layer ranks: none), ``()`` factorizes every eligible layer.
        input_size: the input the model is traced with to find layers and count FLOPs.

    A layer whose factorized form would cost as many MACs as its dense form stays dense (and is logged).
    """

    def __init__(self, model: nn.Module, rank: RankPolicy | int | str | dict = "flops:0.5",
                 scheme: str = "tucker2", orth: float = 1e-3, init: str = "orthogonal",
                 equal_ranks: bool = True, skip: Iterable[str] | None = None,
                 input_size: tuple[int, int, int, int] = (1, 3, 32, 32)):
        super().__init__(model)
        self.scheme = get_scheme(_choice(scheme, SCHEMES, "scheme"))
        self.init = _choice(init, INITS, "init")
        if not float(orth) >= 0.0:
            raise ValueError(f"ELRT: orth (the orthogonality weight λ) must be ≥ 0, got {orth!r}")
        self.orth = float(orth)
        default = skip is None
        if default:  # explicit per-layer ranks say themselves which layers are factorized
            skip = [] if isinstance(rank, dict) else _default_skip(model, input_size)
        self.decisions = self._plan(rank, equal_ranks, skip, tuple(input_size), default)
        if not any(d.factorize for d in self.decisions):
            raise ValueError(f"ELRT: no layer of {type(model).__name__} can be factorized "
                             f"({why_none(self.decisions, model)})")
        self.layers: dict[str, LowRank] = {}
        for d in self.decisions:
            if not d.factorize:
                log.info("ELRT: %s kept dense: %s", d.name, d.reason)
                continue
            self.layers[d.name] = self._fresh(model.get_submodule(d.name), d.rank)
            replace_module(model, d.name, self.layers[d.name])
        self._groups = self._group_factors()
        self.rank_log.extend(self._rank_rows())

    def _plan(self, rank, equal_ranks: bool, skip: list[str], input_size, default_skip: bool) -> list[Decision]:
        """Ranks without spectra (the weights are random): the policy sees only shapes and costs."""
        if isinstance(rank, dict):
            return plan(self.model, rank, self.scheme, skip, input_size)
        policy = parse_policy(rank)
        cands, skipped = candidates(self.model, self.scheme, skip, input_size, trainable=True)
        if not cands:
            whose = " (ELRT's default: the first conv and the classifier)" if default_skip else ""
            raise ValueError(f"ELRT: no layer of {type(self.model).__name__} can be factorized "
                             f"({why_none(skipped, self.model)}); skip list {skip}{whose}")
        requests = [_tied(c.request) if equal_ranks else c.request for c in cands]
        chosen = policy(requests, fixed_cost=sum(d.dense_flops for d in skipped))
        return plan(self.model, chosen, self.scheme, skip, input_size)

    def _fresh(self, dense: nn.Module, rank: Rank) -> LowRank:
        w = dense.weight
        if isinstance(dense, nn.Linear):
            layer: LowRank = LowRankLinear(dense.in_features, dense.out_features, rank, dense.bias is not None,
                                           device=w.device, dtype=w.dtype)
            gain = 1.0  # no ReLU gain: a linear layer here is usually the classifier
        else:
            g = ConvGeometry.of(dense)
            layer = LowRankConv2d(g.in_channels, g.out_channels, g.kernel_size, rank, self.scheme, g.stride,
                                  g.padding, g.dilation, g.bias, device=w.device, dtype=w.dtype)
            gain = math.sqrt(2.0)  # Kaiming's ReLU gain
        INITS[self.init](layer, gain)
        if dense.bias is not None:
            with torch.no_grad():  # the model's own bias init is kept: it is not a full-size weight
                layer.bias.copy_(dense.bias)
        return layer

    def _group_factors(self) -> list[list[_Factor]]:
        groups: dict[tuple, list[_Factor]] = defaultdict(list)
        for layer in self.layers.values():
            for f in _factors(layer):
                groups[(tuple(f.param.shape), f.transposed, f.param.dtype, f.param.device)].append(f)
        return list(groups.values())

    def _rank_rows(self) -> list[dict[str, Any]]:
        rows = []
        for d in self.decisions:
            if d.factorize:
                rank = list(d.rank) if isinstance(d.rank, tuple) else d.rank
                top = list(d.max_rank) if isinstance(d.max_rank, tuple) else d.max_rank
                rows.append({"step": self.step, "layer": d.name, "rank": rank, "max_rank": top})
        return rows

    def penalty(self) -> Tensor:
        """λ Σ ‖VVᵀ − I‖²_F over all factors, differentiable (for logging or for adding to a loss)."""
        terms = []
        for group in self._groups:
            mats = _matrices(group, torch.stack([f.param for f in group]))
            eye = torch.eye(group[0].rows, device=mats.device, dtype=mats.dtype)
            terms.append((mats @ mats.mT - eye).square().sum())
        if not terms:
            return torch.zeros(())
        return self.orth * torch.stack(terms).sum()

    @torch.no_grad()
    @linalg.full_precision()
    def before_step(self) -> None:
        """Add the regularizer's gradient 4λ·(VVᵀ − I)·V to every factor's gradient, per equal-shape group
        (on unscaled gradients: after ``GradScaler.unscale_`` under fp16 AMP). Not also `penalty` in the
        loss: that would count λ twice."""
        if self.orth == 0.0:
            return
        for group in self._groups:
            stacked = torch.stack([f.param for f in group])
            mats = _matrices(group, stacked)
            gram = mats @ mats.mT
            gram.diagonal(dim1=-2, dim2=-1).sub_(1.0)
            delta = torch.bmm(gram, mats).mul_(4.0 * self.orth)
            for f in group:
                if f.param.grad is None:
                    f.param.grad = torch.zeros_like(f.param)
            # back in the parameters' shape and strides (channels_last ones too): the adds are then one
            # multi-tensor kernel, and no Python op runs per factor
            grads = torch.empty_like(stacked).copy_((delta.mT if group[0].transposed else delta).reshape(stacked.shape))
            torch._foreach_add_([f.param.grad for f in group], list(grads.unbind(0)))

    def ranks(self) -> dict[str, Rank]:
        return {name: layer.rank for name, layer in self.layers.items()}

    @linalg.full_precision()
    def finalize(self) -> nn.Module:
        """The model as trained: it is already made of the compact factorized layers."""
        return self.model

    def state_dict(self) -> dict[str, Any]:
        state = super().state_dict()
        state["ranks"] = {name: list(r) if isinstance(r, tuple) else r for name, r in self.ranks().items()}
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore the step; the saved ranks must be the ones this model was built with."""
        saved = {name: tuple(r) if isinstance(r, list) else r for name, r in state["ranks"].items()}
        if saved != self.ranks():
            diff = sorted(set(saved.items()) ^ set(self.ranks().items()), key=str)
            raise ValueError(f"ELRT: the checkpoint's ranks do not match this model's: {diff[:4]} differ; "
                             "build the method with the rank, scheme, skip and input_size of the saved run")
        super().load_state_dict(state)
