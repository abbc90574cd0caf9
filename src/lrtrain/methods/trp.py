"""TRP: Trained Rank Pruning (Xu et al., IJCAI 2020), on the hook protocol of `base.Method`.

Training alternates two steps on every eligible conv weight W, seen in its scheme's matrix form:

- **Step A** (nuclear-norm regularization): the loss is ``L + λ Σ ‖W‖_*``; its sub-gradient
  ``λ·U_r V_rᵀ`` (U, V truncated to the numerical rank r of W) is added to W's gradient before the
  optimizer step, every step (``subgradient="auto"``, ``"svd"`` or ``"newton_schulz"``) or only on the
  steps that follow a projection, as the official code does (``subgradient="projection"``).
- **Step B** (rank pruning): every ``period`` steps W is replaced by its truncated SVD keeping a fraction
  ``energy`` of Σσ²; the following SGD steps update the low-rank weight.

At the end, `finalize` decomposes the trained weights without fine-tuning (the official rule drops the
singular values below 0.05), through `surgery`, so no layer ends up costlier than its dense form.

Every group of equal-shaped weights costs one batched decomposition (`matrices.group_weights`): a
projection, one eigendecomposition of the float64 Gram matrices on the host (`linalg.gram_eigh`); the
every-step sub-gradient, one SVD (on the CPU) or Newton–Schulz iteration (on a GPU, where cuSOLVER's SVD
waits for the device) on the weights' device. A step that does not project never reads a value back to
the host (but for an explicit ``subgradient="svd"`` on a GPU): the SVD path's numerical rank is a mask
``σ > tol·σ₁`` kept on device. A
projecting step waits for the device once, unless ``overlap``: its Gram matrices then travel to the host
while the device trains the next step, after which their truncation is written.

Where this differs from the official code (yuhuixu1993/Trained-Rank-Pruning): it projects before the steps
``i`` with ``i % period == 0`` counted from each epoch's start (so also before the very first step, on the
random initialization); here the step count runs across epochs and the first projection follows step
``period``. Its final decomposition builds a factorized layer even where it costs more than the dense conv
(network decoupling at a high rank); `surgery` keeps such a layer dense.
"""

from __future__ import annotations

import copy
import numbers
from typing import Any, Iterable

import torch
from torch import Tensor, nn

from .. import linalg, surgery
from ..metrics import count, trace_shapes
from ..ranks import POLICIES, Energy, FlopsBudget, RankPolicy, RankRequest, Threshold, parse_policy
from ..schemes import SCHEMES, ConvGeometry, Scheme, get_scheme
from . import register_method
from .base import Method, decompose
from .matrices import WeightGroup, group_weights

ELIGIBILITY = ("default", "official")
SUBGRADIENTS = ("auto", "svd", "newton_schulz", "projection")
# Newton–Schulz schedule (quintic warm-up, cubic steps) of the polar factor: exact for every σ above about
# 1e-5·σ₁, below the `tol` under which the SVD path counts a singular value as zero (float32 round-off on
# ResNet-56's forms at initialization, square spatial ones included: benchmarks/trp_subgradient.py).
NEWTON_SCHULZ = {"warmup": 10, "steps": 6}


def _masked_polar(U: Tensor, keep: Tensor, Vh: Tensor) -> Tensor:
    """``U_r V_rᵀ`` with the kept singular directions given as a boolean mask (no host sync)."""
    return (U * keep.unsqueeze(-2).to(U.dtype)) @ Vh


def _svd_no_sync(mats: Tensor, names: list[str] | None = None) -> linalg.SVD:
    """SVD without `linalg.svd`'s finiteness check (a host sync); falls back to it if LAPACK fails."""
    try:
        return linalg.SVD(*torch.linalg.svd(mats.float() if mats.dtype not in (torch.float32, torch.float64)
                                            else mats, full_matrices=False))
    except RuntimeError:
        return linalg.svd(mats, names)


@register_method("trp")
class TRP(Method):
    """Trained Rank Pruning: nuclear-norm sub-gradient every step, truncated-SVD projection every `period`.

    >>> import torch, lrtrain as lr
    >>> model = lr.models.create("resnet20")
    >>> method = lr.TRP(model, scheme="channel", energy=0.9, period=5, nuclear=3e-4)
    >>> opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    >>> for _ in range(5):
    ...     loss = model(torch.randn(8, 3, 32, 32)).logsumexp(1).mean()
    ...     loss.backward()
    ...     method.before_step()          # adds λ·U_r V_rᵀ to each eligible weight's gradient
    ...     opt.step(); opt.zero_grad()
    ...     method.after_step()           # step 5: every eligible weight keeps 90 % of its energy
    >>> method.ranks()["layer1.0.conv1"] < 16
    True
    >>> compact = method.finalize()       # LowRankConv2d where cheaper; drops σ < 0.05 by default
    >>> lr.count(compact).flops < lr.count(model).flops
    True

    Args:
        model: the network, trained in place (`finalize` works on a copy).
        scheme: ``"channel"`` (W as out × in·k²), ``"spatial"`` (in·k × out·k) or ``"decoupled"`` (one
            in × k² matrix per output filter: network decoupling).
        energy: fraction of Σσ² each projection keeps (official: 0.9).
        rank: instead of the energy rule, a global rank policy applied at each projection, e.g.
            ``"flops:0.45"`` (the layers TRP trains, and the rest dense, cost at most 45 % of the dense
            FLOPs), so the training ranks aim at the compact model's budget. A ``multiple`` in it
            (``"flops:0.45,multiple:8"``) aligns the projections' ranks, and the default `final`'s.
        ramp: with a ``"flops:F"`` `rank`, the fraction of training (0-1) over which the projections' budget
            tightens linearly from the dense FLOPs to F; 0 (default) projects to F from the first projection.
            A projected weight keeps no energy beyond its rank, so a projection's ranks never grow again:
            whatever rule the first projections follow (the 90 % energy rule as much as a budget) fixes the
            ranks on near-random weights. The official energy rule also ratchets down: a rank survives only
            while its last singular value holds 10 % of the energy, which takes every 3×3 conv of a
            ResNet-20 to rank 6-8 in its first epoch and 4-6 later, whatever its width (the official code
            does the same). A ramp lets the ranks fall as the spectra form, to a compression chosen in
            advance. Needs `setup` (the trainer calls it) for the run's length.
        period: steps between projections (official script: 5); 0 or None never projects (nuclear-norm
            training only).
        nuclear: λ, the weight of the nuclear norm (official: 3e-4); 0 turns step A off.
        final: rank policy of `finalize`: a `RankPolicy`, a string such as ``"energy:0.85"`` or
            ``"flops:0.45"``, or ``{layer: rank}``; default: `rank` where given (a budget the projections
            aim at is the compact model's: the σ < 0.05 rule could keep more than the last projection did, a
            few steps before the end of a loop), else ``Threshold(0.05)``, or ``Energy(0.85)`` for the
            decoupled scheme (the official rules).
        eligible: ``"default"``: every conv whose factorized form can be cheaper than the dense one (first
            conv, 1×1 and stride-2 convs included); ``"official"``: 3×3 convs but the first, with stride-2
            convs trained but left dense at the end under channel/spatial, as the official code does.
        skip: fnmatch patterns of layer names to leave alone (e.g. ``["conv1", "layer3.*"]``).
        subgradient: how step A gets ``U_r V_rᵀ``: ``"svd"`` (a batched SVD every step),
            ``"newton_schulz"`` (the polar factor by matrix products only, exact for a full-rank weight; a
            direction of σ between 1e-5 and `tol` times σ₁ counts as kept, which is as valid a
            sub-gradient; but the directions a projection cut stay at bf16/fp16 weights' rounding, about
            1e-3·σ₁, which it counts as kept), ``"auto"`` (the default: ``"newton_schulz"`` on a GPU, where
            the SVD synchronizes, for float32/64 weights; ``"svd"`` on the CPU, where it is the faster, and
            for half-precision weights) or ``"projection"`` (only on the step after a projection: the
            official code). The step after a projection always reuses the projection's SVD.
        input_size: input shape used to trace the model (eligibility, FLOPs of `finalize`).
        host_eigh: a projection decomposes each group's float64 Gram matrices with LAPACK on the host
            (the device is waited for once per projection; milliseconds for a CIFAR ResNet) rather than
            on the weights' device (`linalg.gram_eigh_many`).
        overlap: split each projection across two steps so the device never waits for the host: step t
            sends the Gram matrices of W_t to the host (`linalg.GramTransfer`) and the next step is queued
            on the device while the host decomposes them; after step t+1 the truncation is written as
            ``P·W_{t+1}`` with P the rank-r projector of W_t's kept singular directions (U_r U_rᵀ on the
            smaller side), and the following step's sub-gradient is W_t's. The ranks are the energy rule's
            (or the policy's) on W_t and every projected weight has exactly that rank; the difference from
            the exact truncation of W_{t+1} is the part of one SGD step outside the kept subspace. Off by
            default (the official protocol truncates the current weights); on a GPU it takes the host's
            eigendecomposition off the step's critical path. `finalize` applies a projection still in flight.

    Call `before_step` on unscaled gradients (after ``GradScaler.unscale_`` under fp16 AMP). With
    ``subgradient="svd"`` on CUDA, cuSOLVER synchronizes inside ``torch.linalg.svd``; ``"auto"``,
    ``"newton_schulz"`` and ``"projection"`` never do on a step that does not project.
    """

    # Singular values below tol·σ₁ count as zero in the numerical rank: above float32 round-off of a
    # projected weight (≈ 1e-6·σ₁), far below the spectrum of a trained weight.
    tol = 1e-4

    def __init__(self, model: nn.Module, scheme: str = "channel", energy: float = 0.9, period: int | None = 5,
                 nuclear: float = 3e-4, final: RankPolicy | str | dict | None = None, eligible: str = "default",
                 skip: Iterable[str] = (), subgradient: str = "auto", input_size=(1, 3, 32, 32),
                 rank: RankPolicy | str | None = None, ramp: float = 0.0, host_eigh: bool = True,
                 overlap: bool = False):
        super().__init__(model)
        self.scheme = self._matrix_scheme(scheme)
        if not 0.0 < float(energy) <= 1.0:
            raise ValueError(f"TRP: energy must be in (0, 1], got {energy!r}")
        # A global policy (e.g. "flops:0.45") in place of the per-layer energy rule at each projection.
        if isinstance(rank, dict) and not set(rank) <= {*POLICIES, "multiple"}:
            raise ValueError(f"TRP: rank is one global policy applied at each projection (e.g. 'flops:0.45'), "
                             f"not ranks per layer (got {rank!r}); give per-layer ranks to the final cut: "
                             f"final={{layer: rank}}")
        self.rank_policy = None if rank is None else parse_policy(rank)
        if not 0.0 <= float(ramp) <= 1.0:
            raise ValueError(f"TRP: ramp is a fraction of training in [0, 1], got {ramp!r}")
        if ramp and not isinstance(self.rank_policy, FlopsBudget):
            raise ValueError(f"TRP: ramp tightens a FLOPs budget, so it needs rank='flops:F' (got rank={rank!r})")
        self.ramp = float(ramp)
        if period is not None and (isinstance(period, bool) or not isinstance(period, numbers.Integral)
                                   or period < 0):
            raise ValueError(f"TRP: period must be an integer >= 0 (0 or None: never project), got {period!r}")
        if float(nuclear) < 0:
            raise ValueError(f"TRP: nuclear (λ) must be >= 0, got {nuclear!r}")
        if subgradient not in SUBGRADIENTS:
            raise ValueError(f"TRP: unknown subgradient {subgradient!r}; valid choices: {', '.join(SUBGRADIENTS)}")
        if eligible not in ELIGIBILITY:
            raise ValueError(f"TRP: unknown eligible preset {eligible!r}; valid choices: {', '.join(ELIGIBILITY)}")
        self.energy = float(energy)
        self.period = int(period or 0)
        self.nuclear = float(nuclear)
        self.subgradient = subgradient
        self.host_eigh = bool(host_eigh)
        if self.subgradient == "projection" and self.nuclear and not self.period:
            raise ValueError(f"TRP: subgradient='projection' applies λ only after projections, but period={period!r} "
                             "never projects; use subgradient='auto', 'svd' or 'newton_schulz' for nuclear-norm-only "
                             "training (--set method.subgradient=auto)")
        if final is None:  # the projections' policy where given (the final cut meets their budget), else the
            # official rules
            final = self.rank_policy or (Energy(0.85) if self.scheme.name == "decoupled" else Threshold(0.05))
        self.final = final if isinstance(final, dict) else parse_policy(final)
        self.input_size = tuple(input_size)
        self.skip = surgery.skip_patterns(skip)

        layers, self._final_names, self._requests = self._eligible_layers(eligible)
        dense = count(self.model, self.input_size).flops
        # what a global policy weighs: the layers `finalize` decomposes (the official preset's stride-2
        # convs, trained but kept dense, count at their dense cost, as they will in the compact model)
        self._fixed_cost = dense - sum(r.dense_cost for r in self._requests.values())
        if isinstance(self.rank_policy, FlopsBudget):  # found now, not when a ramp gets there hours later
            floor = self._fixed_cost + self.rank_policy.floor(list(self._requests.values()))
            if floor > self.rank_policy.fraction * dense:
                raise ValueError(f"TRP: rank={rank!r} cannot be met: at rank {self.rank_policy.multiple} "
                                 f"everywhere the model still costs {floor / dense:.1%} of its dense FLOPs (the "
                                 "layers TRP leaves dense included)")
        self._groups: list[WeightGroup] = group_weights(layers, self.scheme)
        self._max_rank = {name: self.scheme.max_rank(ConvGeometry.of(module)) for name, module in layers}
        self._ranks = dict(self._max_rank)
        # U_r V_rᵀ of the last projection, per group, waiting for the next `before_step`: as thin factors
        # (L, R), L @ R, of the width of the group's largest rank where they are smaller than the product,
        # so that a checkpoint taken after a projection (every epoch end when the period divides the
        # epoch) does not hold another copy of the weights once the ranks are low; else (U_r V_rᵀ, None).
        self._pending: list[tuple[Tensor, Tensor | None]] | None = None
        self._used: list[tuple[Tensor, Tensor | None]] | None = None  # the pending one this step took
        self.overlap = bool(overlap)
        # With `overlap`: the projection sent after the last step, truncated after the next one.
        self._inflight: linalg.GramTransfer | None = None

    # ----------------------------------------------------------------------------------------- setup
    @staticmethod
    def _matrix_scheme(scheme) -> Scheme:
        s = get_scheme(scheme)
        if not s.has_matrix_form:
            valid = ", ".join(n for n, x in SCHEMES.items() if x.has_matrix_form)
            raise ValueError(f"TRP: scheme {s.name!r} has no matrix form to take a nuclear norm of; "
                             f"valid schemes: {valid}")
        return s

    def _eligible_layers(self, preset: str) -> tuple[list[tuple[str, nn.Module]], list[str], dict[str, RankRequest]]:
        """(name, conv) pairs TRP trains, the names `finalize` decomposes by default, and the rank request
        (its costs, for a global projection policy) of each of those."""
        cands, skipped = surgery.candidates(self.model, self.scheme, self.skip, self.input_size, linear=False,
                                            trainable=True)
        convs = [c for c in cands if c.scheme is not None]
        if preset == "default":
            train = [c for c in convs if c.request.cost(1) < c.request.dense_cost]
            final = [c.name for c in train]
        else:
            # the first k×k conv the input meets (call order: a model may register its head before its stem)
            called = [(n, self.model.get_submodule(n)) for n in trace_shapes(self.model, self.input_size)]
            first = next((n for n, m in called if isinstance(m, nn.Conv2d) and tuple(m.kernel_size) != (1, 1)), None)
            train = [c for c in convs if tuple(c.module.kernel_size) != (1, 1) and c.name != first]
            # The official decomposition leaves stride-2 convs dense for channel/spatial (not for decoupling),
            # although it trains them with TRP like the others.
            final = [c.name for c in train if self.scheme.name == "decoupled" or tuple(c.module.stride) == (1, 1)]
        if not train:
            if convs:  # the scheme could factorize some, the preset or the cost rule left none
                why = (f"{len(convs)} factorizable conv(s), but the preset keeps only 3x3 convs other than the "
                       "first" if preset == "official" else
                       f"{len(convs)} factorizable conv(s), none cheaper factorized than dense")
            else:
                why = surgery.why_none(skipped, self.model)
            raise ValueError(f"TRP: no conv of the model is eligible under scheme {self.scheme.name!r} "
                             f"and preset {preset!r} ({why})")
        return [(c.name, c.module) for c in train], final, {c.name: c.request for c in train if c.name in final}

    @property
    def layers(self) -> list[str]:
        """Names of the convs TRP trains, in group order."""
        return [name for g in self._groups for name in g.names]

    # ----------------------------------------------------------------------------------------- hooks
    @torch.no_grad()
    @linalg.full_precision()
    def before_step(self) -> None:
        """Step A: add λ·U_r V_rᵀ to the gradient of every eligible weight."""
        pending, self._pending = self._pending, None
        self._used = pending  # given back by `skip_step`, should the optimizer skip this step
        if not self.nuclear or (pending is None and self.subgradient == "projection"):
            return
        if pending is not None:
            subs = [left if right is None else left @ right for left, right in pending]
        else:
            mats = [group.matrices() for group in self._groups]
            if (self._newton_schulz(mats[0]) and mats[0].device.type != "cpu"
                    and len({(m.dtype, m.device) for m in mats}) == 1):
                # every group in one padded batch: a GPU step is bound by launches (16 iterations of 2-3
                # products per group otherwise); on a CPU the padding's arithmetic costs more than it saves
                subs = linalg.polar_newton_schulz_many(mats, **NEWTON_SCHULZ)
            else:
                subs = [self._subgradient(m, g.names) for m, g in zip(mats, self._groups)]
        for group, sub in zip(self._groups, subs):
            group.add_to_grad(self.nuclear * sub)

    def _newton_schulz(self, mats: Tensor) -> bool:
        """Whether the every-step sub-gradient of weights like `mats` is Newton–Schulz's polar factor."""
        return self.subgradient == "newton_schulz" or (self.subgradient == "auto" and mats.device.type != "cpu"
                                                       and linalg.working_dtype(mats.dtype) == mats.dtype)

    def _subgradient(self, mats: Tensor, names: list[str] | None = None) -> Tensor:
        if self._newton_schulz(mats):
            return linalg.polar_newton_schulz(mats, **NEWTON_SCHULZ)
        U, S, Vh = _svd_no_sync(mats, names)
        return _masked_polar(U, S > self._tol(mats.dtype) * S[..., :1], Vh)

    def _tol(self, dtype: torch.dtype) -> float:
        """`tol`, or above the round-off of weights kept in a half-precision dtype (a projected bfloat16
        weight written back is numerically full rank at 1e-4·σ₁: its sub-gradient would be the full polar
        factor, not the projection's U_r V_rᵀ)."""
        return max(self.tol, 4 * torch.finfo(dtype).eps)

    def skip_step(self) -> None:
        """The step was skipped: the last projection's sub-gradient is the next step's again."""
        if self._pending is None:
            self._pending, self._used = self._used, None

    def after_step(self) -> None:
        """Count the step; step B every `period` steps (with `overlap`, truncated after the next step)."""
        super().after_step()
        self._used = None
        if self._inflight is not None:
            self._truncate(self._inflight, late=True)
        if self.period and self.step % self.period == 0:
            if self.overlap:
                self._inflight = self._send()
            else:
                self.project()

    @property
    def bn_stale(self) -> bool:
        if not self.period:
            return False
        written = self.step - 1 if self.overlap else self.step  # the step after which weights were truncated
        return written > 0 and written % self.period == 0

    @torch.no_grad()
    @linalg.full_precision()
    def project(self) -> dict[str, int]:
        """Step B now: replace every eligible weight by its truncated SVD keeping `energy` of Σσ².

        Returns the new ranks (for the decoupled scheme, the largest rank of the layer's filters) and logs
        them in `rank_log`. The decomposition (`linalg.gram_eigh`: the singular values and the smaller-side
        singular vectors, which give both the truncation and U_r V_rᵀ) also gives the next step's
        sub-gradient, so that step needs none. An `overlap` projection in flight is applied first.
        """
        self.flush()
        return self._truncate(self._send(), late=False)

    def flush(self) -> None:
        """Apply now an `overlap` projection still in flight (`finalize` does; nothing otherwise)."""
        if self._inflight is not None:
            self._truncate(self._inflight, late=True)

    @torch.no_grad()
    def _send(self, mats: list[Tensor] | None = None) -> linalg.GramTransfer:
        """Queue the Gram matrices of every group (of `mats`, default the current weights) for the host."""
        mats = [g.matrices() for g in self._groups] if mats is None else mats
        return linalg.GramTransfer(mats, host=self.host_eigh)

    @torch.no_grad()
    @linalg.full_precision()
    def _truncate(self, transfer: linalg.GramTransfer, late: bool) -> dict[str, int]:
        """Decompose `transfer`'s weights and write their truncation; ``late``: project the weights as they
        are now onto the kept directions of the ones sent (equal when no step came between)."""
        self._inflight = None
        pending = []
        decs = list(zip(self._groups, transfer.mats, transfer.receive([g.names for g in self._groups])))
        chosen = self._policy_projection_ranks(decs) if self.rank_policy is not None else None
        for group, mats, dec in decs:
            S = dec.S  # on the host: the ranks below need no device sync
            if chosen is None:
                rank = linalg.energy_rank(S, self.energy)  # (layers,) or, decoupled, (layers, filters)
            else:  # one rank per layer, shared by a decoupled layer's filters; the energy rule where
                # the policy has none (a layer trained but kept dense at the end: no FLOPs to budget)
                rank = torch.tensor([chosen.get(n, -1) for n in group.names])
                if (rank < 0).any():
                    rank = torch.where(rank < 0, linalg.energy_rank(S, self.energy), rank)
                rank = rank.view(-1, *[1] * (S.dim() - 2)).expand(S.shape[:-1])
            keep = linalg.rank_mask(S, rank)
            group.write(dec.apply(group.matrices() if late else mats, keep))
            if self.nuclear:  # U_r V_rᵀ = U_r Σ_r⁻¹ U_rᵀ W over the numerically non-zero kept directions
                live = keep & (S > self._tol(mats.dtype) * S[..., :1])  # a prefix: S decreases
                width = int(live.sum(-1).max()) if live.numel() else 0  # on the host: no device sync
                left, right = dec.factors(mats, torch.where(live, 1 / S, 0.0), width)
                m, n = mats.shape[-2:]
                pending.append((left, right) if width * (m + n) < m * n else (left @ right, None))
            layer_rank = rank if rank.dim() == 1 else rank.amax(-1)
            for name, r in zip(group.names, layer_rank.tolist()):
                self._ranks[name] = r
                self.rank_log.append({"step": self.step, "layer": name, "rank": r,
                                      "max_rank": self._max_rank[name]})
        self._pending = pending if self.nuclear else None
        return {name: self._ranks[name] for name in self.layers}

    def _policy_projection_ranks(self, decs) -> dict[str, int]:
        """Ranks of the global `rank_policy` from the spectra just computed (one host sync per projection)."""
        requests = []
        for group, _, dec in decs:
            for name, S in zip(group.names, dec.S):
                if name not in self._requests:
                    continue
                req = self._requests[name]
                # decoupled: the (filters, k) spectra; per-layer rules take the rank the most demanding
                # filter needs, FlopsBudget pools them
                requests.append(RankRequest(name, req.max_rank, req.cost, req.dense_cost, S))
        return self.projection_policy()(requests, fixed_cost=self._fixed_cost)

    def projection_policy(self) -> RankPolicy:
        """The global rank policy of a projection at the current step: `rank`, or on a `ramp` its budget
        so far."""
        if not self.ramp:
            return self.rank_policy
        if not self.total_steps:
            raise RuntimeError("TRP: a ramp needs the run's length: call setup(steps_per_epoch, total_steps) "
                               "before training (the Trainer does)")
        progress = min(1.0, self.step / (self.ramp * self.total_steps))
        return FlopsBudget(1.0 - (1.0 - self.rank_policy.fraction) * progress, self.rank_policy.multiple)

    def ranks(self) -> dict[str, int]:
        """Rank of every trained layer at the last projection written (its full rank before the first one;
        with `overlap`, `flush` first to include one in flight)."""
        return {name: self._ranks[name] for name in self.layers}

    # -------------------------------------------------------------------------------------- finalize
    @linalg.full_precision()
    def finalize(self, rank: RankPolicy | str | dict | None = None) -> nn.Module:
        """The compact model: a copy of the trained one with eligible convs decomposed, no fine-tuning.

        `rank` overrides the `final` policy for this call (a policy, a ``"name:value"`` string or
        ``{layer: rank}``; ``method.finalize(method.ranks())`` decomposes at the last projection's ranks).
        A layer whose factorized form would cost as much as the dense one stays dense.
        """
        policy = self.final if rank is None else rank
        self.flush()
        compact = copy.deepcopy(self.model)
        if isinstance(policy, dict):
            ranks = self._explicit(policy)
        else:
            ranks = self._policy_ranks(compact, parse_policy(policy))
        never = self.period and self.step < self.period
        why = (f" (TRP never projected: {self.step} training steps, fewer than its period {self.period}; a "
               "smaller batch gives more steps)") if never else ""
        return decompose(self, compact, ranks, self.scheme, self.input_size, why)

    def _explicit(self, ranks: dict) -> dict[str, int]:
        """The given ranks of the layers `finalize` decomposes; trained layers it keeps dense (the official
        preset's stride-2 convs, which `ranks()` lists) are left out, names TRP does not train refused."""
        final = set(self._final_names)
        stray = sorted(set(ranks) - final - set(self.layers))
        if stray:
            raise ValueError(f"TRP.finalize: layers {stray} are not among those it decomposes "
                             f"({', '.join(self._final_names)})")
        return {name: r for name, r in ranks.items() if name in final}

    def _policy_ranks(self, compact: nn.Module, policy: RankPolicy) -> dict[str, int]:
        names = set(self._final_names)
        cands = [c for c in surgery.candidates(compact, self.scheme, (), self.input_size, linear=False)[0]
                 if c.name in names]
        if policy.needs_spectrum:
            surgery.attach_spectra(cands)
        requests = [c.request for c in cands]
        fixed = count(compact, self.input_size).flops - sum(r.dense_cost for r in requests)
        return policy(requests, fixed_cost=fixed)

    # ------------------------------------------------------------------------------------ checkpoint
    def state_dict(self) -> dict[str, Any]:
        pending = {}
        if self._pending is not None:
            for group, (left, right) in zip(self._groups, self._pending):
                for i, name in enumerate(group.names):
                    pending[name] = left[i] if right is None else {"left": left[i], "right": right[i]}
        inflight = {}
        if self._inflight is not None:  # the weights it was sent from: a resumed run decomposes them again
            for group, mats in zip(self._groups, self._inflight.mats):
                inflight.update({name: mat for name, mat in zip(group.names, mats)})
        return {**super().state_dict(), "ranks": dict(self._ranks), "pending": pending, "inflight": inflight}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        unknown = sorted(set(state["ranks"]) - set(self._ranks))
        if unknown:
            raise ValueError(f"TRP.load_state_dict: the checkpoint has ranks for layers this model's TRP does "
                             f"not train: {unknown}")
        self._ranks.update({name: int(r) for name, r in state["ranks"].items()})
        pending = state.get("pending") or {}
        self._pending = [self._pending_of(g, pending) for g in self._groups] if pending else None
        inflight = state.get("inflight") or {}
        stacked = [_on_group(g, [inflight[name] for name in g.names]) for g in self._groups] if inflight else None
        self._inflight = self._send(stacked) if stacked else None

    @staticmethod
    def _pending_of(group: WeightGroup, pending: dict[str, Any]) -> tuple[Tensor, Tensor | None]:
        """A group's pending sub-gradient from a checkpoint's per-layer entries: factors {"left", "right"},
        or U_r V_rᵀ whole (older checkpoints; a group whose layers differ is made whole)."""
        values = [pending[name] for name in group.names]
        if all(isinstance(v, dict) for v in values):
            return _on_group(group, [v["left"] for v in values]), _on_group(group, [v["right"] for v in values])
        return _on_group(group, [v["left"] @ v["right"] if isinstance(v, dict) else v for v in values]), None


def _on_group(group: WeightGroup, per_layer: list[Tensor]) -> Tensor:
    """A checkpoint's per-layer matrices of a group, stacked on its weights' device."""
    return torch.stack(per_layer).to(group.modules[0].weight.device)
