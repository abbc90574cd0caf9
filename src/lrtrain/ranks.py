"""Rank policies: small callables that choose a rank for every layer.

A policy receives one `RankRequest` per layer (its maximum rank, its cost as a function of the rank, its
dense cost and, when the policy needs it, its singular values) and returns ``{layer name: rank}``:

- `Energy(e)`: per layer, the smallest rank keeping a fraction ``e`` of Σσ²;
- `Threshold(v)`: per layer, the number of singular values ≥ v (TRP's final decomposition, v = 0.05);
- `Ratio(r)`: per layer, ``int(r · max_rank)`` (LRPET's ``int(n·(1 − goal))`` is ``Ratio(1 − goal)``);
- `FixedRank(k)`: the same rank everywhere, clamped to each layer's maximum;
- `FlopsBudget(f)`: a global budget: the whole model costs at most ``f ×`` its dense FLOPs, rank being
  spent where the (normalized) singular values are largest per FLOP; without spectra (training from
  scratch) one common rank ratio is searched instead.

Ranks are ints, or ``(r_in, r_out)`` pairs for the tucker2 scheme, whose "spectrum" is the pair of its
mode-unfolding spectra ``(S_in, S_out)``. A decoupled layer has one spectrum per output filter, a
``(filters, k)`` tensor: per-layer rules give it the largest rank any of its filters needs (as the official
network-decoupling code does), `FlopsBudget` ranks its pooled spectrum.
"""

from __future__ import annotations

import difflib
import heapq
from dataclasses import dataclass
from typing import Callable

from torch import Tensor

from . import linalg

Rank = int | tuple[int, int]


@dataclass
class RankRequest:
    """What a policy knows about one layer."""

    name: str
    max_rank: Rank
    cost: Callable[[Rank], int]  # MACs per sample of the factorized layer at a rank
    dense_cost: int
    # σ, descending; decoupled: (filters, k), one row per filter; tucker2: (S_in, S_out)
    spectrum: Tensor | tuple[Tensor, Tensor] | None = None


def _per_mode(max_rank: Rank, fn: Callable[[int, Tensor | None], int], spectrum=None) -> Rank:
    """Apply a per-mode rule to an int rank, or to both modes of a tucker2 rank."""
    if isinstance(max_rank, tuple):
        spectra = spectrum if spectrum is not None else (None, None)
        return (fn(max_rank[0], spectra[0]), fn(max_rank[1], spectra[1]))
    return fn(max_rank, spectrum)


class RankPolicy:
    """Base class. `needs_spectrum` tells the caller whether singular values must be computed."""

    needs_spectrum = False

    def __call__(self, requests: list[RankRequest], fixed_cost: int = 0) -> dict[str, Rank]:
        return {r.name: _per_mode(r.max_rank, self.layer_rank, r.spectrum) for r in requests}

    def layer_rank(self, max_rank: int, spectrum: Tensor | None) -> int:
        raise NotImplementedError


def _need(spectrum, policy: str) -> Tensor:
    if spectrum is None:
        raise ValueError(f"{policy} needs the layer's singular values (a trained weight); "
                         "use Ratio, FixedRank or FlopsBudget for a model trained from scratch")
    return spectrum


class Energy(RankPolicy):
    """Smallest rank keeping a fraction `energy` of Σσ² in each layer."""

    needs_spectrum = True

    def __init__(self, energy: float):
        if not 0.0 < float(energy) <= 1.0:
            raise ValueError(f"Energy: the fraction must be in (0, 1], got {energy}")
        self.energy = float(energy)

    def layer_rank(self, max_rank, spectrum):
        return min(max_rank, int(linalg.energy_rank(_need(spectrum, "Energy"), self.energy).max()))

    def __repr__(self):
        return f"Energy({self.energy})"


class Threshold(RankPolicy):
    """Number of singular values at or above `value` (at least 1)."""

    needs_spectrum = True

    def __init__(self, value: float):
        if float(value) < 0:
            raise ValueError(f"Threshold: the value must be ≥ 0, got {value}")
        self.value = float(value)

    def layer_rank(self, max_rank, spectrum):
        return min(max_rank, max(1, int((_need(spectrum, "Threshold") >= self.value).sum(-1).max())))

    def __repr__(self):
        return f"Threshold({self.value})"


class Ratio(RankPolicy):
    """``max(1, int(ratio · max_rank))`` in each layer."""

    def __init__(self, ratio: float):
        if not 0.0 < float(ratio) <= 1.0:
            raise ValueError(f"Ratio: the ratio must be in (0, 1], got {ratio}")
        self.ratio = float(ratio)

    def layer_rank(self, max_rank, spectrum):
        return max(1, int(max_rank * self.ratio))

    def __repr__(self):
        return f"Ratio({self.ratio})"


class FixedRank(RankPolicy):
    """The same rank in every layer, clamped to each layer's maximum rank."""

    def __init__(self, rank: int):
        if isinstance(rank, bool) or int(rank) != rank or int(rank) < 1:
            raise ValueError(f"FixedRank: the rank must be a positive integer, got {rank!r}")
        self.rank = int(rank)

    def layer_rank(self, max_rank, spectrum):
        return min(self.rank, max_rank)

    def __repr__(self):
        return f"FixedRank({self.rank})"


class FlopsBudget(RankPolicy):
    """Ranks across all layers so that the model costs at most ``fraction ×`` its dense FLOPs.

    With spectra (a trained model) it is a greedy knapsack: every singular value is an item whose value is
    its share of its layer's energy (σᵢ² / Σσ²) and whose cost is the MACs one more rank adds; items are
    taken by value per MAC until the budget is spent. A layer never takes a rank at which its factorized
    form would cost as much as the dense one. Without spectra (training from scratch), it searches the
    largest common rank ratio that fits.
    """

    def __init__(self, fraction: float):
        if not 0.0 < float(fraction) <= 1.0:
            raise ValueError(f"FlopsBudget: the fraction of dense FLOPs must be in (0, 1], got {fraction}")
        self.fraction = float(fraction)

    needs_spectrum = True  # the greedy path wants spectra; the ratio search runs without them

    def __call__(self, requests, fixed_cost=0):
        budget = self.fraction * (fixed_cost + sum(r.dense_cost for r in requests)) - fixed_cost
        lowest = {r.name: _per_mode(r.max_rank, lambda m, s: 1) for r in requests}
        floor = sum(r.cost(lowest[r.name]) for r in requests)
        if floor > budget:
            raise ValueError(f"FlopsBudget({self.fraction}) is unreachable: the layers that are not factorized "
                             f"cost {fixed_cost:,} MACs and every factorized layer at rank 1 adds {floor:,}; "
                             "raise the fraction or factorize more layers")
        matrix = all(isinstance(r.max_rank, int) and r.spectrum is not None for r in requests)
        return self._greedy(requests, budget) if matrix else self._common_ratio(requests, budget)

    @staticmethod
    def _greedy(requests, budget):
        ranks = {r.name: 1 for r in requests}
        spent = sum(r.cost(1) for r in requests)
        heap = []
        for i, r in enumerate(requests):
            e = pooled_spectrum(r.spectrum).double().square()
            share = (e / e.sum().clamp_min(1e-300)).tolist()
            unit = r.cost(2) - r.cost(1)
            # ranks below the break-even point only: beyond it the dense layer is cheaper
            top = min(r.max_rank, max(1, -(-r.dense_cost // max(unit, 1)) - 1))
            for k in range(1, top):
                heapq.heappush(heap, (-share[k] / max(unit, 1), i, k))
        while heap:
            _, i, k = heapq.heappop(heap)
            r = requests[i]
            if ranks[r.name] != k:  # an earlier singular value of this layer did not fit
                continue
            extra = r.cost(k + 1) - r.cost(k)
            if spent + extra <= budget:
                ranks[r.name] = k + 1
                spent += extra
        return ranks

    @staticmethod
    def _common_ratio(requests, budget):
        def at(ratio):
            return {r.name: _per_mode(r.max_rank, lambda m, s: max(1, int(round(m * ratio)))) for r in requests}

        lo, hi = 0.0, 1.0
        for _ in range(40):
            mid = (lo + hi) / 2
            ranks = at(mid)
            if sum(min(r.cost(ranks[r.name]), r.dense_cost) for r in requests) <= budget:
                lo = mid
            else:
                hi = mid
        return at(lo)

    def __repr__(self):
        return f"FlopsBudget({self.fraction})"


POLICIES: dict[str, type[RankPolicy]] = {
    "energy": Energy, "threshold": Threshold, "ratio": Ratio, "fixed": FixedRank, "flops": FlopsBudget,
}


def parse_policy(spec) -> RankPolicy:
    """A policy from a policy object, an int (FixedRank) or a string ``name:value``, e.g. ``energy:0.95``."""
    if isinstance(spec, RankPolicy):
        return spec
    if isinstance(spec, int) and not isinstance(spec, bool):
        return FixedRank(spec)
    if isinstance(spec, dict) and len(spec) == 1:
        (name, value), = spec.items()
        spec = f"{name}:{value}"
    name, sep, value = str(spec).partition(":")
    if not sep or name not in POLICIES:
        hint = difflib.get_close_matches(name, POLICIES, n=1)
        extra = f" (did you mean {hint[0]!r}?)" if hint and name != hint[0] else ""
        raise ValueError(f"bad rank policy {spec!r}{extra}; expected NAME:VALUE with NAME one of "
                         f"{', '.join(POLICIES)} (e.g. energy:0.95, flops:0.45, fixed:8)")
    try:
        number = int(value) if name == "fixed" else float(value)
    except ValueError:
        raise ValueError(f"bad rank policy {spec!r}: {value!r} is not a number") from None
    return POLICIES[name](number)


def pooled_spectrum(S: Tensor) -> Tensor:
    """One spectrum from a batch of them (decoupled scheme: one per filter): √(Σ_b σ_{b,i}²) per index i."""
    return S if S.dim() == 1 else S.square().sum(0).sqrt()
