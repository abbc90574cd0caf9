"""LRPET: low-rank projection with energy transfer (Guo et al., TNNLS 2024), on the hook protocol.

Training alternates SGD with projections: every `period` iterations each eligible conv's matrix W
(out × in·k², the channel scheme) is replaced by its best rank-r approximation, the rest of the time
the weights move freely in the full space. Two refinements, both as in the official code:

- **energy transfer**: the kept singular values are scaled by √a and the tail by ρ, with
  a = (‖S‖² − ‖ρ·S_tail‖²)/‖S_kept‖², so Σσ² is unchanged by the projection (Σσ² of diag(α)·W when
  rectifying: the energy the layer's output after BN carries);
- **BN rectification**: with α = γ/√(running_var + ε) of the BatchNorm that normalizes the conv's
  output, the SVD is taken of diag(α)·W (the weight the layer effectively applies) and the result is
  mapped back with α/(α² + 1e-5), so the truncation is optimal for the function after BN.

`finalize` turns each projected conv into the channel factorization (first factor k×k with the conv's
stride and padding, then 1×1) and cuts out the convs whose weight has vanished.
"""

from __future__ import annotations

import copy
import dataclasses
import logging
from typing import Any, Iterable

import torch
from torch import Tensor, nn

from .. import export, linalg, surgery
from ..bn_pairs import conv_bn_pairs
from ..ranks import RankPolicy, parse_policy
from ..schemes import ConvGeometry, get_scheme
from . import register_method
from .base import Method, decompose
from .matrices import WeightGroup, group_weights

log = logging.getLogger("lrtrain")

# Thresholds and the damping of the official code. A layer whose (rectified) σ₁ is below
# _IDLE_SIGMA is left as it is by a projection: there is nothing to project and the energy transfer
# would divide by ~0. At the end, a layer whose σ₁ is below _VANISHED_SIGMA is cut out.
_IDLE_SIGMA = 1e-4
_VANISHED_SIGMA = 1e-5
# α is undone with α/(α² + ε) rather than 1/α, so a channel whose BN scale died (α ≈ 0) stays bounded.
_UNRECTIFY_EPS = 1e-5


class Goal(RankPolicy):
    """LRPET's rank rule: ``int(n − n·goal)`` singular values kept of n = min(out, in·k²), at least 1.

    Written as the official code computes it (``Ratio(1 − goal)`` differs by one where ``n·(1 − goal)``
    is an integer that floating point rounds down, e.g. n = 250, goal = 0.54).
    """

    def __init__(self, goal: float):
        if not 0.0 <= float(goal) < 1.0:
            raise ValueError(f"LRPET: goal is the fraction of singular values to prune, in [0, 1), got {goal!r}")
        self.goal = float(goal)

    def layer_rank(self, max_rank, spectrum):
        return max(1, int(max_rank - max_rank * self.goal))

    def __repr__(self):
        return f"Goal({self.goal})"


class VanishedConv2d(nn.Module):
    """Stands in for a conv whose weight has vanished: its bias (zeros without one) at the conv's output size.

    It has no multiply-accumulates, so a BN after it outputs its constant β − γ·μ/σ as the conv did.
    """

    def __init__(self, conv: nn.Conv2d):
        super().__init__()
        g = ConvGeometry.of(conv)
        self.out_channels = g.out_channels
        self.kernel_size, self.stride, self.padding, self.dilation = g.kernel_size, g.stride, g.padding, g.dilation
        self.register_buffer("bias", None if conv.bias is None else conv.bias.detach().clone())

    def forward(self, x: Tensor) -> Tensor:
        hw = [(x.shape[i - 2] + 2 * self.padding[i] - self.dilation[i] * (self.kernel_size[i] - 1) - 1)
              // self.stride[i] + 1 for i in range(2)]
        out = x.new_zeros(x.shape[0], self.out_channels, hw[0], hw[1])
        return out if self.bias is None else out + self.bias.view(1, -1, 1, 1)

    def extra_repr(self):
        return f"out_channels={self.out_channels}, stride={self.stride}"


export.register_layer_type(
    VanishedConv2d,
    lambda m: {"out_channels": m.out_channels, "kernel_size": list(m.kernel_size), "stride": list(m.stride),
               "padding": list(m.padding), "dilation": list(m.dilation), "bias": m.bias is not None},
    # the input channels of the conv it replaces do not matter: it never reads its input's values
    lambda s: VanishedConv2d(nn.Conv2d(1, s["out_channels"], tuple(s["kernel_size"]), tuple(s["stride"]),
                                       tuple(s["padding"]), tuple(s["dilation"]), bias=s["bias"])),
)


@register_method("lrpet")
class LRPET(Method):
    """Low-rank projection with energy transfer: train from scratch, project every `period` steps.

        >>> import torch, lrtrain as lr
        >>> model = lr.models.create("resnet20")
        >>> method = lr.LRPET(model, goal=0.54, period=2)
        >>> opt = torch.optim.SGD(model.parameters(), lr=0.05)
        >>> for _ in range(2):
        ...     model(torch.randn(8, 3, 32, 32)).square().mean().backward()
        ...     method.before_step(); opt.step(); opt.zero_grad(); method.after_step()
        >>> method.ranks()["layer1.0.conv1"]     # n = min(16 out, 16·3·3) = 16: int(16 − 16·0.54)
        7
        >>> compact = method.finalize()
        >>> lr.count(compact).flops < 0.6 * lr.count(model).flops
        True

    Args:
        model: the network to train (every ``nn.Conv2d`` that the channel scheme can factorize is managed,
            the first conv and 1×1 convs included, as in the official code).
        goal: fraction of singular values pruned in every layer: rank ``int(n − n·goal)``.
        rank: instead of `goal`, a rank policy (``"flops:0.45"``, ``lr.FlopsBudget(0.45)``, ``"energy:0.9"``,
            ...) chosen again at each projection from the current (rectified) spectra, or
            ``{layer name: rank}`` (only those layers are projected).
        period: projection every `period` optimizer steps, or ``"epoch"`` (once per epoch, resolved by
            `setup`; the official CIFAR setting; ImageNet used 250).
        transfer: ρ, the factor of the pruned singular values (0, the default: they are zeroed; with
            ``energy_transfer=False`` too, a true projection).
        energy_transfer: rescale the kept singular values so Σσ² is unchanged (False: the kept values as
            they are; the pruned ones still scaled by ρ).
        bn_rectify: take the SVD of diag(α)·W for convs followed by a BatchNorm.
        skip: fnmatch patterns of conv names left alone.
        input_size: input shape used to trace the model (FLOPs of each layer, BN pairing fallback).
    """

    def __init__(self, model: nn.Module, goal: float | None = None, rank: Any = None, period: int | str = "epoch",
                 transfer: float = 0.0, energy_transfer: bool = True, bn_rectify: bool = True,
                 skip: Iterable[str] = (), input_size=(1, 3, 32, 32)):
        super().__init__(model)
        if (goal is None) == (rank is None):
            raise ValueError(f"LRPET: give exactly one of goal= (e.g. 0.54) and rank= (a policy such as "
                             f"'flops:0.45', or {{layer: rank}}), got goal={goal!r}, rank={rank!r}"
                             + (" (to replace a recipe's goal by a rank: --set method.goal=null)"
                                if goal is not None else ""))
        if not (period == "epoch" or (isinstance(period, int) and not isinstance(period, bool) and period >= 1)):
            raise ValueError(f"LRPET: period must be a positive number of steps or 'epoch', got {period!r}")
        if not 0.0 <= float(transfer) <= 1.0:
            raise ValueError(f"LRPET: transfer (ρ, the factor of the pruned singular values) must be in [0, 1], "
                             f"got {transfer!r}")
        self.period = period
        self.transfer = float(transfer)
        self.energy_transfer = bool(energy_transfer)
        self.input_size = tuple(input_size)
        self._scheme = get_scheme("channel")

        cands, skipped = surgery.candidates(model, self._scheme, skip, self.input_size, linear=False,
                                            trainable=True)
        self._fixed_cost = sum(d.dense_flops for d in skipped)
        if isinstance(rank, dict):
            explicit = surgery._explicit_ranks(rank, cands, skipped)
            self._policy: RankPolicy | None = None
            cands = [c for c in cands if c.name in explicit]
            self._ranks = {c.name: self._scheme.check_rank(ConvGeometry.of(c.module), explicit[c.name], where=c.name)
                           for c in cands}
        else:
            self._policy = Goal(goal) if goal is not None else parse_policy(rank)
            self._ranks = {} if self._policy.needs_spectrum else self._policy([c.request for c in cands],
                                                                             self._fixed_cost)
        if not cands:
            raise ValueError(f"LRPET: {type(model).__name__} has no conv that can be projected "
                             f"({surgery.why_none(skipped, model)})")
        self._cands = {c.name: c for c in cands}
        self._groups: list[WeightGroup] = group_weights([(c.name, c.module) for c in cands], self._scheme)
        pairs = conv_bn_pairs(model, self.input_size) if bn_rectify else {}
        self._bns: dict[str, nn.BatchNorm2d] = {}
        for conv, bn_name in pairs.items():
            bn = model.get_submodule(bn_name)
            if conv in self._cands and bn.running_var is not None:
                self._bns[conv] = bn
        self._last_projection = -1  # the step of the latest projection (-1: none yet)

    # ------------------------------------------------------------------------------------------- hooks

    def after_step(self) -> None:
        super().after_step()
        if self.step % self._resolved_period() == 0:
            self.project()

    @property
    def bn_stale(self) -> bool:
        return self._last_projection == self.step

    def _resolved_period(self) -> int:
        if self.period != "epoch":
            return self.period
        if self.steps_per_epoch is None:
            raise RuntimeError("LRPET(period='epoch') needs the loop to call setup(steps_per_epoch=..., "
                               "total_steps=...) before training, or an explicit period=N steps")
        return self.steps_per_epoch

    def project(self, energy_transfer: bool | None = None) -> None:
        """Project every managed conv onto its rank now (`after_step` calls this every `period` steps).

        `energy_transfer` overrides the constructor's choice for this call. The pruned singular values
        are scaled by `transfer` (ρ) either way.
        """
        self._project(self.energy_transfer if energy_transfer is None else energy_transfer, self.transfer)

    @torch.no_grad()
    @linalg.full_precision()
    def _project(self, transfer: bool, rho: float) -> None:
        # Under DDP each process's BatchNorm statistics moved with its own batch since the forward pass
        # synced them: all rectify with rank 0's, so all see the same spectra and pick the same ranks.
        from ..train.distributed import broadcast_tensors_  # here: lrtrain.train imports the methods

        broadcast_tensors_([bn.running_var for bn in self._bns.values()])
        work = []
        for g in self._groups:
            mats = g.matrices()
            scale, unscale = self._rectifiers(g, mats)
            work.append((g, mats, unscale, linalg.svd(scale.unsqueeze(-1) * mats, names=g.names)))
        if self._policy is not None and self._policy.needs_spectrum:
            requests = [dataclasses.replace(self._cands[name].request, spectrum=dec.S[i])
                        for g, _, _, dec in work for i, name in enumerate(g.names)]
            self._ranks = self._policy(requests, self._fixed_cost)
        vanished: set[str] = set()
        for g, mats, unscale, (U, S, Vh) in work:
            rank = torch.tensor([self._ranks[name] for name in g.names], device=S.device)
            S_new = (linalg.transfer_energy(S, rank, rho) if transfer
                     else torch.where(linalg.rank_mask(S, rank), S, rho * S))
            out = unscale.unsqueeze(-1) * linalg.reconstruct(U, S_new, Vh)
            idle = (S[..., 0] < _IDLE_SIGMA).view(-1, 1, 1)
            g.write(torch.where(idle, mats.to(out.dtype), out))
            vanished.update(n for n, gone in zip(g.names, idle.flatten().tolist()) if gone)  # once a projection
        self._last_projection = self.step
        for name, r in self._ranks.items():  # a vanished layer is logged at rank 0: finalize cuts it out
            self.rank_log.append({"step": self.step, "layer": name, "rank": 0 if name in vanished else int(r),
                                  "max_rank": int(self._cands[name].request.max_rank)})

    def _rectifiers(self, g: WeightGroup, mats: Tensor) -> tuple[Tensor, Tensor]:
        """Per output channel of each layer: α and its damped inverse (1 and 1 where there is no BN)."""
        dtype = linalg.working_dtype(mats.dtype)  # float32 at least, float64 for a float64 model
        ones = torch.ones(mats.shape[:-1], dtype=dtype, device=mats.device)
        scale, unscale = ones.clone(), ones
        for i, name in enumerate(g.names):
            bn = self._bns.get(name)
            if bn is None:
                continue
            gamma = bn.weight.detach().to(dtype) if bn.weight is not None else 1.0
            alpha = gamma / (bn.running_var.to(dtype) + bn.eps).sqrt()
            scale[i] = alpha
            unscale[i] = alpha / (alpha.square() + _UNRECTIFY_EPS)
        return scale, unscale

    # ------------------------------------------------------------------------------------------ results

    def ranks(self) -> dict[str, int]:
        """The rank each managed conv is projected to (empty before the first projection for a policy
        that needs spectra)."""
        return {name: int(r) for name, r in self._ranks.items()}

    @linalg.full_precision()
    def finalize(self) -> nn.Module:
        """The compact model: a copy of the trained model with each projected conv factorized.

        If the weights moved since the last projection (training stopped between two), the model is
        projected once more first, without energy transfer and ρ: the best approximation of what it computes.
        Convs whose largest singular value vanished become `VanishedConv2d` (no FLOPs; the BN after them
        outputs its constant, as before); a conv whose factorized form would cost at least as much as
        the dense one stays dense. The training model itself is left as it is (apart from that projection).
        """
        if self._last_projection != self.step:
            self._project(transfer=False, rho=0.0)
        compact = copy.deepcopy(self.model)
        names = list(self._cands)
        convs = [compact.get_submodule(n) for n in names]
        sigma1 = [S[0] for S in linalg.singular_values_many([self._scheme.to_matrix(c.weight.detach()) for c in convs],
                                                             names)]
        vanished = [n for n, c, s in zip(names, convs, sigma1) if float(s) < _VANISHED_SIGMA]
        for name in vanished:
            surgery.replace_module(compact, name, VanishedConv2d(compact.get_submodule(name)))
        ranks = {n: self._ranks[n] for n in names if n not in vanished}
        if ranks:
            compact = decompose(self, compact, ranks, self._scheme, self.input_size)
        if vanished:
            saved = sum(self._cands[n].request.dense_cost for n in vanished)
            log.info("LRPET: %d conv(s) vanished and were cut out (%s), saving %s MACs",
                     len(vanished), ", ".join(vanished), f"{saved:,}")
        return compact

    # ------------------------------------------------------------------------------------------- state

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "last_projection": self._last_projection, "ranks": self.ranks()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self._last_projection = int(state["last_projection"])
        unknown = set(state["ranks"]) - set(self._cands)
        if unknown:
            raise ValueError(f"LRPET state has ranks for layers this model does not manage: {sorted(unknown)}")
        # Ranks chosen from spectra are the last projection's; ranks fixed by the settings (goal, fixed,
        # ratio, explicit) are this run's, so a resume with changed settings projects to the new ones.
        if self._policy is not None and self._policy.needs_spectrum:
            self._ranks = {name: int(r) for name, r in state["ranks"].items()}
