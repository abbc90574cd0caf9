"""Rank policies: small callables that choose a rank for every layer.

A policy receives one `RankRequest` per layer (its maximum rank, its cost as a function of the rank, its
dense cost and, when the policy needs it, its singular values) and returns ``{layer name: rank}``:

- `Energy(e)`: per layer, the smallest rank keeping a fraction ``e`` of Σσ²;
- `Threshold(v)`: per layer, the number of singular values ≥ v (TRP's final decomposition, v = 0.05);
- `Ratio(r)`: per layer, ``⌊r · max_rank⌋`` (LRPET's ``int(n − n·goal)`` is its `Goal`, which rounds as the
  official code does);
- `FixedRank(k)`: the same rank everywhere, clamped to each layer's maximum;
- `FlopsBudget(f)`: a global budget: the whole model costs at most ``f ×`` its dense FLOPs, rank being
  spent where the (normalized) singular values are largest per FLOP; without spectra (training from
  scratch) one common rank ratio is searched instead.

Every policy takes ``multiple=m``: ranks are multiples of m (or a layer's maximum rank where that is
smaller). Hardware computes channel counts in blocks: cuDNN's bf16/fp16 tensor-core kernels want channels
that are multiples of 8, and oneDNN on an AVX-512 CPU pads channels to blocks of 16, where a 3×3 conv
16→r takes the same time for every r ≤ 16 (benchmarks/results/rank_multiples_cpu.md). A per-layer rule
rounds its rank up (it keeps at least what it would have kept); `FlopsBudget` spends its budget in steps
of m, so the ranks it picks stay within the budget.

Ranks are ints, or ``(r_in, r_out)`` pairs for the tucker2 scheme, whose "spectrum" is the pair of its
mode-unfolding spectra ``(S_in, S_out)``. A decoupled layer has one spectrum per output filter, a
``(filters, k)`` tensor: per-layer rules give it the largest rank any of its filters needs (as the official
network-decoupling code does), `FlopsBudget` ranks its pooled spectrum.
"""

from __future__ import annotations

import difflib
import heapq
import numbers
import re
from dataclasses import dataclass
from typing import Callable

from torch import Tensor

from . import linalg
from .schemes import whole_number

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


def _number(value, where: str) -> float:
    """`value` as a float; a ValueError naming `where` for anything else (NaN included: no range holds it)."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        number = float("nan")
    if number != number:
        raise ValueError(f"{where} must be a number, got {value!r}")
    return number


def _check_multiple(multiple) -> int:
    whole = whole_number(multiple)
    if whole is None or whole < 1:
        raise ValueError(f"rank policy: multiple must be a positive integer, got {multiple!r}")
    return whole


def aligned(rank: int, max_rank: int, multiple: int) -> int:
    """`rank` rounded up to a multiple of `multiple`, at most `max_rank`."""
    return min(max_rank, -(-rank // multiple) * multiple)


class RankPolicy:
    """Base class. `needs_spectrum` tells the caller whether singular values must be computed; `multiple`
    (default 1) is what every rank is rounded up to, capped at the layer's maximum rank."""

    needs_spectrum = False
    multiple = 1

    def __call__(self, requests: list[RankRequest], fixed_cost: int = 0) -> dict[str, Rank]:
        def rule(max_rank: int, spectrum: Tensor | None) -> int:
            return aligned(self.layer_rank(max_rank, spectrum), max_rank, self.multiple)
        return {r.name: _per_mode(r.max_rank, rule, r.spectrum) for r in requests}

    def layer_rank(self, max_rank: int, spectrum: Tensor | None) -> int:
        """The rule's rank for one layer (one mode of a tucker2 layer) of largest rank `max_rank`, from its
        singular values `spectrum` (decreasing; None where the rule needs none), before `multiple`."""
        raise NotImplementedError

    def _repr_args(self, *args) -> str:
        extra = [f"multiple={self.multiple}"] if self.multiple != 1 else []
        return f"{type(self).__name__}({', '.join([*map(str, args), *extra])})"


def _need(spectrum, policy: str) -> Tensor:
    if spectrum is None:
        raise ValueError(f"{policy} needs the layer's singular values (a trained weight); "
                         "use Ratio, FixedRank or FlopsBudget for a model trained from scratch")
    return spectrum


class Energy(RankPolicy):
    """Smallest rank keeping a fraction `energy` of Σσ² in each layer."""

    needs_spectrum = True

    def __init__(self, energy: float, multiple: int = 1):
        if not 0.0 < _number(energy, "Energy: the fraction") <= 1.0:
            raise ValueError(f"Energy: the fraction must be in (0, 1], got {energy}")
        self.energy = float(energy)
        self.multiple = _check_multiple(multiple)

    def layer_rank(self, max_rank, spectrum):
        return min(max_rank, int(linalg.energy_rank(_need(spectrum, "Energy"), self.energy).max()))

    def __repr__(self):
        return self._repr_args(self.energy)


class Threshold(RankPolicy):
    """Number of singular values at or above `value` (at least 1)."""

    needs_spectrum = True

    def __init__(self, value: float, multiple: int = 1):
        if _number(value, "Threshold: the value") < 0:
            raise ValueError(f"Threshold: the value must be ≥ 0, got {value}")
        self.value = float(value)
        self.multiple = _check_multiple(multiple)

    def layer_rank(self, max_rank, spectrum):
        return min(max_rank, max(1, int((_need(spectrum, "Threshold") >= self.value).sum(-1).max())))

    def __repr__(self):
        return self._repr_args(self.value)


class Ratio(RankPolicy):
    """``max(1, ⌊ratio · max_rank⌋)`` in each layer (a product that is a whole number counts as one, e.g.
    0.29 · 100 = 29, though floating point gives 28.999...)."""

    def __init__(self, ratio: float, multiple: int = 1):
        if not 0.0 < _number(ratio, "Ratio: the ratio") <= 1.0:
            raise ValueError(f"Ratio: the ratio must be in (0, 1], got {ratio}")
        self.ratio = float(ratio)
        self.multiple = _check_multiple(multiple)

    def layer_rank(self, max_rank, spectrum):
        return max(1, int(max_rank * self.ratio + 1e-9))

    def __repr__(self):
        return self._repr_args(self.ratio)


class FixedRank(RankPolicy):
    """The same rank in every layer, clamped to each layer's maximum rank."""

    def __init__(self, rank: int, multiple: int = 1):
        whole = whole_number(rank)
        if whole is None or whole < 1:
            raise ValueError(f"FixedRank: the rank must be a positive integer, got {rank!r}")
        self.rank = whole
        self.multiple = _check_multiple(multiple)

    def layer_rank(self, max_rank, spectrum):
        return min(self.rank, max_rank)

    def __repr__(self):
        return self._repr_args(self.rank)


class FlopsBudget(RankPolicy):
    """Ranks across all layers so that the model costs at most ``fraction ×`` its dense FLOPs.

    With spectra (a trained model) it is a greedy knapsack: every singular value (every block of
    `multiple` of them) is an item whose value is its share of its layer's energy (σᵢ² / Σσ²) and whose
    cost is the MACs the added rank costs; items are taken by value per MAC until the budget is spent. A
    layer never takes a rank at which its factorized form would cost as much as the dense one; what the
    budget leaves then keeps layers whole (dense: all their energy), by the energy they gain per MAC, so
    that a budget the dense model fits (``FlopsBudget(1.0)``) leaves it dense. Without spectra (training
    from scratch), or where a layer's rank is a pair (tucker2: the greedy has no order over two modes), it
    searches the largest common rank ratio that fits.
    """

    def __init__(self, fraction: float, multiple: int = 1):
        if not 0.0 < _number(fraction, "FlopsBudget: the fraction of dense FLOPs") <= 1.0:
            raise ValueError(f"FlopsBudget: the fraction of dense FLOPs must be in (0, 1], got {fraction}")
        self.fraction = float(fraction)
        self.multiple = _check_multiple(multiple)

    needs_spectrum = True  # the greedy path wants spectra; the ratio search runs without them

    def lowest(self, request: RankRequest) -> Rank:
        """The smallest rank the budget gives a layer: `multiple`, or the layer's maximum rank if smaller."""
        return _per_mode(request.max_rank, lambda m, s: min(m, self.multiple))

    def floor(self, requests: list[RankRequest]) -> int:
        """MACs of the layers at their lowest ranks (dense where that rank is not cheaper): the least any
        budget can spend on them."""
        return sum(min(r.cost(self.lowest(r)), r.dense_cost) for r in requests)

    def __call__(self, requests, fixed_cost=0):
        budget = self.fraction * (fixed_cost + sum(r.dense_cost for r in requests)) - fixed_cost
        floor = self.floor(requests)
        if floor > budget:
            lowest = "1" if self.multiple == 1 else f"{self.multiple} (its multiple)"
            raise ValueError(f"{self!r} is unreachable: the layers that are not factorized cost {fixed_cost:,} "
                             f"MACs and the factorized ones at rank {lowest} add {floor:,} together; raise the "
                             "fraction, factorize more layers" + (" or lower the multiple" if self.multiple > 1
                                                                   else ""))
        matrix = all(isinstance(r.max_rank, int) and r.spectrum is not None for r in requests)
        return self._greedy(requests, budget) if matrix else self._common_ratio(requests, budget)

    def _greedy(self, requests, budget):
        ranks = {r.name: self.lowest(r) for r in requests}
        spent = self.floor(requests)
        heap = []
        shares: dict[int, list[float]] = {}  # each factorized layer's σᵢ² / Σσ², by its index in `requests`
        for i, r in enumerate(requests):
            if r.cost(ranks[r.name]) >= r.dense_cost:  # not cheaper even at its lowest rank: stays whole
                ranks[r.name] = r.max_rank
                continue
            e = pooled_spectrum(r.spectrum).double().square()
            share = shares[i] = (e / e.sum().clamp_min(1e-300)).tolist()
            # ranks below the break-even point only: beyond it the dense layer is cheaper
            steps = [k for k in range(ranks[r.name], r.max_rank + 1, self.multiple)
                     if k == ranks[r.name] or r.cost(k) < r.dense_cost]
            if steps[-1] < r.max_rank and r.cost(r.max_rank) < r.dense_cost:
                steps.append(r.max_rank)
            for k, nxt in zip(steps, steps[1:]):
                extra = r.cost(nxt) - r.cost(k)
                heapq.heappush(heap, (-sum(share[k:nxt]) / max(extra, 1), i, k, nxt, extra))
        while heap:
            _, i, k, nxt, extra = heapq.heappop(heap)
            r = requests[i]
            if ranks[r.name] != k:  # an earlier block of this layer did not fit
                continue
            if spent + extra <= budget:
                ranks[r.name] = nxt
                spent += extra
        # Past break-even a layer's next step is the dense layer itself: with what is left, by energy per MAC
        whole = []
        for i, share in shares.items():
            r, k = requests[i], ranks[requests[i].name]
            gain, extra = sum(share[k:]), r.dense_cost - r.cost(k)
            # (a projected weight's round-off tail is no gain: its rank would rise for nothing)
            if k < r.max_rank and gain > 1e-9:
                whole.append((-gain / extra, i, extra))
        for _, i, extra in sorted(whole):
            if spent + extra <= budget:
                ranks[requests[i].name] = requests[i].max_rank
                spent += extra
        return ranks

    def _common_ratio(self, requests, budget):
        def at(ratio):
            ranks = {r.name: _per_mode(r.max_rank,
                                       lambda m, s: aligned(max(1, int(round(m * ratio))), m, self.multiple))
                     for r in requests}
            # a layer not cheaper at its rank stays whole (the budget counts it dense)
            return {r.name: r.max_rank if r.cost(ranks[r.name]) >= r.dense_cost else ranks[r.name]
                    for r in requests}

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
        return self._repr_args(self.fraction)


POLICIES: dict[str, type[RankPolicy]] = {
    "energy": Energy, "threshold": Threshold, "ratio": Ratio, "fixed": FixedRank, "flops": FlopsBudget,
}


def parse_policy(spec) -> RankPolicy:
    """A policy from a policy object, an int (FixedRank), a string ``name:value[,multiple:m]`` (e.g.
    ``energy:0.95``, ``flops:0.45,multiple:8``) or the same as a mapping (``{"flops": 0.45, "multiple": 8}``;
    the methods and `factorize` read a mapping as ``{layer: rank}``: give them the string)."""
    if isinstance(spec, RankPolicy):
        return spec
    if isinstance(spec, numbers.Integral) and not isinstance(spec, bool):  # numpy's too
        return FixedRank(spec)
    if isinstance(spec, dict):  # the option last, whatever the mapping's order
        spec = ",".join(f"{k}:{v}" for k, v in sorted(spec.items(), key=lambda kv: kv[0] == "multiple"))
    head, *options = str(spec).split(",")
    name, sep, value = head.strip().partition(":")
    if not sep or name not in POLICIES:
        hint = difflib.get_close_matches(name, POLICIES, n=1)
        extra = f" (did you mean {hint[0]!r}?)" if hint and name != hint[0] else ""
        raise ValueError(f"bad rank policy {spec!r}{extra}; expected NAME:VALUE[,multiple:M] with NAME one of "
                         f"{', '.join(POLICIES)} (e.g. energy:0.95, flops:0.45, fixed:8, flops:0.45,multiple:8)")
    multiple = 1
    if len(options) > 1:
        raise ValueError(f"bad rank policy {spec!r}: multiple is given twice" if all(
            o.strip().startswith("multiple:") for o in options) else
            f"bad rank policy {spec!r}: one option at most (multiple:M)")
    if options:
        key, sep, text = options[0].strip().partition(":")
        if key != "multiple" or not sep:
            raise ValueError(f"bad rank policy {spec!r}: unknown option {options[0].strip()!r}; the one option "
                             "is multiple:M (ranks rounded to multiples of M)")
        multiple = _parsed(text, whole=True)
        if multiple is None:
            raise ValueError(f"bad rank policy {spec!r}: multiple {text!r} is not an integer")
    number = _parsed(value, whole=name == "fixed")
    if number is None:
        kind = "an integer" if name == "fixed" else "a number"
        raise ValueError(f"bad rank policy {spec!r}: {value!r} is not {kind}")
    return POLICIES[name](number, multiple=multiple)


# a plain decimal number, as YAML and people write it (not "inf", "nan", "1_0" or other scripts' digits)
_DECIMAL = re.compile(r"[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?")


def _parsed(text: str, whole: bool) -> float | int | None:
    """`text` as a number (an int where `whole`: "8" and "8.0" alike), None if it is not one."""
    text = text.strip()
    if not _DECIMAL.fullmatch(text) or not text.isascii():
        return None
    return whole_number(float(text)) if whole else float(text)


def pooled_spectrum(S: Tensor) -> Tensor:
    """One spectrum from a batch of them (decoupled scheme: one per filter): √(Σ_b σ_{b,i}²) per index i."""
    return S if S.dim() == 1 else S.square().sum(0).sqrt()
