"""Model surgery: find the layers of any nn.Module that a scheme can factorize, and replace them.

`plan` decides, layer by layer, what to do and why (and is what `lrtrain info` prints); `factorize`
carries the plan out. The rules, in order:

1. user skip patterns (fnmatch on the module name, e.g. ``"conv1"``, ``"layer3.*"``, ``"fc"``);
2. kinds no scheme handles: grouped/depthwise convs, string padding, non-zero padding modes;
3. 1×1 convs under the ``spatial`` and ``decoupled`` schemes (nothing spatial to separate);
4. after the rank is chosen: a layer whose factorized form costs at least as much as the dense one stays
   dense, so `factorize` never makes a model slower on paper.
"""

from __future__ import annotations

import fnmatch
import functools
import logging
import warnings
from dataclasses import dataclass
from typing import Any, Callable, Iterable

from torch import nn

from . import linalg
from .layers import LowRankConv2d, LowRankLinear, check_factorizable, computed_weight
from .metrics import trace_calls
from .ranks import POLICIES, Rank, RankPolicy, RankRequest, parse_policy
from .schemes import ConvGeometry, Scheme, get_scheme, spec_macs, whole_number

log = logging.getLogger("lrtrain")


@dataclass
class Decision:
    """What `plan` decided for one conv or linear layer."""

    name: str
    kind: str  # "conv" | "linear"
    shape: tuple
    factorize: bool
    reason: str  # why it is skipped, or "" when it is factorized
    rank: Rank | None
    max_rank: Rank | None
    dense_flops: int
    flops: int  # after the decision (equals dense_flops when skipped)


class Plan(list):
    """`plan`'s decisions (a list of `Decision`), printed as a per-layer table: layer, weight shape, MACs
    before, rank/max, MACs after, and why a layer stays dense."""

    def __str__(self) -> str:
        from .inspection import decision_table  # the table's formatting lives with the CLI's other tables

        return decision_table(self)


@dataclass
class Candidate:
    """An eligible layer with what a rank policy needs to know about it."""

    name: str
    module: nn.Module
    scheme: Scheme | None  # None for a linear layer
    in_hw: tuple[int, int] | int  # conv: spatial input size; linear: rows per sample
    request: RankRequest


# A layer called more than once (a shared block) costs the sum of its calls, as `metrics.count` says.

def _linear_request(name: str, lin: nn.Linear, calls) -> RankRequest:
    rows = sum(max(1, int(_prod(in_shape[1:-1]))) for in_shape, _ in calls)
    return RankRequest(name, min(lin.in_features, lin.out_features),
                       cost=_Remembered(functools.partial(_linear_cost, rows, lin.in_features + lin.out_features)),
                       dense_cost=rows * lin.in_features * lin.out_features)


def _conv_request(name: str, conv: nn.Conv2d, scheme: Scheme, calls) -> RankRequest:
    g = ConvGeometry.of(conv)
    sizes = [tuple(in_shape[-2:]) for in_shape, _ in calls]
    # the dense cost from the traced output: right for convs no scheme reads (padding="same" and the like)
    dense = sum(_prod(out_shape[-3:]) for _, out_shape in calls) * (conv.in_channels // conv.groups) \
        * _prod(conv.kernel_size)
    return RankRequest(name, scheme.max_rank(g), dense_cost=dense,
                       cost=_Remembered(functools.partial(_conv_cost, scheme, g, sizes)))


class _Remembered:
    """A layer's cost at a rank, each rank computed once: a global policy applied at every projection
    (TRP's FLOPs budget every 5 steps, LRPET's every epoch) asks the same ranks each time, and a conv's cost
    walks its factors' shapes (ResNet-56, channel: ~5,700 evaluations, 40 ms of a 57 ms projection before;
    benchmarks/results/trp_projection_cpu.md). A class, not a closure, so that a method holding rank
    requests can be pickled."""

    def __init__(self, cost: Callable[[Rank], int]):
        self.cost = cost
        self.known: dict[Any, int] = {}

    def __call__(self, r: Rank) -> int:
        key = tuple(r) if isinstance(r, list) else r
        if key not in self.known:
            self.known[key] = self.cost(r)
        return self.known[key]


# module-level costs (not lambdas), so that a method holding rank requests can be pickled
def _linear_cost(rows: int, fan: int, r: int) -> int:
    return rows * r * fan


def _conv_cost(scheme: Scheme, g: ConvGeometry, sizes: list, r: Rank) -> int:
    return sum(spec_macs(scheme.specs(g, r), hw) for hw in sizes)


def _why_not(conv: nn.Conv2d, scheme: Scheme) -> str:
    try:
        check_factorizable(conv)
    except ValueError as err:
        return str(err).split(": ", 1)[1]
    if scheme.name in ("spatial", "decoupled") and tuple(conv.kernel_size) == (1, 1):
        return f"1x1 conv: nothing spatial for the {scheme.name} scheme to separate"
    return ""


def skip_patterns(skip: str | Iterable[str] | None) -> list[str]:
    """A skip list as a list: one pattern given as a string is one pattern, not its characters; None, none."""
    return [skip] if isinstance(skip, str) else list(skip or ())


def candidates(model: nn.Module, scheme: str | Scheme = "channel", skip: Iterable[str] = (),
               input_size=(1, 3, 32, 32), linear: bool = True,
               trainable: bool = False) -> tuple[list[Candidate], list[Decision]]:
    """Split the model's conv/linear layers into candidates for `scheme` and decisions to skip.

    ``trainable``: a layer whose weight does not require grad is skipped (a training method would change
    a layer its user froze)."""
    scheme = get_scheme(scheme)
    skip = skip_patterns(skip)
    layers = [name for name, m in model.named_modules()
              if isinstance(m, (nn.Conv2d, nn.Linear, LowRankConv2d, LowRankLinear))]
    unmatched = [p for p in skip if not any(fnmatch.fnmatchcase(name, p) for name in layers)]
    if unmatched:  # a typo, or another model's layer name, would otherwise factorize the layer meant to stay
        shown = ", ".join(layers[:6]) + (", ..." if len(layers) > 6 else "")
        raise ValueError(f"skip: {', '.join(map(repr, unmatched))} match(es) no conv or linear layer of the "
                         f"model (its layers: {shown})")
    traced = trace_calls(model, input_size)
    cands: list[Candidate] = []
    skipped: list[Decision] = []
    for name, module in model.named_modules():
        if isinstance(module, (LowRankConv2d, LowRankLinear)):
            continue
        if not isinstance(module, (nn.Conv2d, nn.Linear)) or name not in traced or _inside_lowrank(model, name):
            continue
        in_shape = traced[name][0][0]
        if isinstance(module, nn.Conv2d):
            req = _conv_request(name, module, scheme, traced[name])
            reason = _why_not(module, scheme)
            shape = tuple(module.weight.shape)
        else:
            req = _linear_request(name, module, traced[name])
            reason = computed_weight(module, nn.Linear) if linear else "linear layers excluded (linear=False)"
            shape = tuple(module.weight.shape)
        if trainable and not reason and not module.weight.requires_grad:
            reason = "frozen (requires_grad=False): training would change a layer kept fixed"
        if any(fnmatch.fnmatchcase(name, p) for p in skip):
            reason = "in the skip list"
        kind = "conv" if isinstance(module, nn.Conv2d) else "linear"
        if reason:
            skipped.append(Decision(name, kind, shape, False, reason, None, None, req.dense_cost, req.dense_cost))
        else:
            cands.append(Candidate(name, module, scheme if kind == "conv" else None,
                                   tuple(in_shape[-2:]) if kind == "conv" else int(_prod(in_shape[1:-1])), req))
    return cands, skipped


def _prod(xs) -> int:
    out = 1
    for x in xs:
        out *= int(x)
    return out


def _inside_lowrank(model: nn.Module, name: str) -> bool:
    parts = name.split(".")
    return any(isinstance(model.get_submodule(".".join(parts[:i])), (LowRankConv2d, LowRankLinear))
               for i in range(1, len(parts)))


def attach_spectra(cands: list[Candidate]) -> None:
    """Fill each candidate's singular values, one batched call per group of equal-shaped matrices.

    A decoupled conv gets one row of singular values per output filter (see `ranks`).
    """
    convs = [c for c in cands if c.scheme is not None]
    mats, names = [], []
    for c in cands:
        w = c.module.weight.detach()
        if c.scheme is None:
            mats.append(w)
        elif c.scheme.has_matrix_form:
            mats.append(c.scheme.to_matrix(w))
        else:
            continue
        names.append(c.name)
    tucker = [c for c in convs if not c.scheme.has_matrix_form]
    spectra = iter(linalg.singular_values_many(mats, names))
    for c in cands:
        if c.scheme is None or c.scheme.has_matrix_form:
            c.request.spectrum = next(spectra)
    if tucker:
        tucker_names = [c.name for c in tucker]
        outs = linalg.singular_values_many([c.module.weight.detach().flatten(1) for c in tucker], tucker_names)
        ins = linalg.singular_values_many([c.module.weight.detach().transpose(0, 1).flatten(1) for c in tucker],
                                          tucker_names)
        for c, o, i in zip(tucker, outs, ins):
            c.request.spectrum = (i, o)


def _explicit_ranks(ranks: dict[str, Rank], cands: list[Candidate], skipped: list[Decision]) -> dict[str, Rank]:
    names = {c.name for c in cands}
    for name in ranks:
        if name not in names:
            why = next((d.reason for d in skipped if d.name == name), "no such conv/linear layer in the model")
            if name in POLICIES or name == "multiple":
                why += (f" (a mapping of ranks is read as {{layer: rank}}; for a policy write a string, e.g. "
                        f"'{name}:{ranks[name]}' or 'flops:0.45,multiple:8')")
            raise ValueError(f"layer {name!r} was given a rank but cannot be factorized: {why}")
    return ranks


def plan(model: nn.Module, rank: RankPolicy | int | str | dict = "energy:0.95", scheme: str | Scheme = "channel",
         skip: Iterable[str] = (), input_size=(1, 3, 32, 32), linear: bool = True) -> Plan:
    """Decide, for every conv/linear layer of `model`, whether and at which rank to factorize it.

    `rank` is a policy (`Energy`, `Ratio`, `FixedRank`, `FlopsBudget`, `Threshold`, or a ``"name:value"``
    string), an int (the same rank everywhere, clamped per layer), or ``{layer name: rank}`` for explicit
    per-layer ranks (which must be valid: a rank out of range or a layer that cannot be factorized is an
    error). Returns one `Decision` per layer that a forward pass at `input_size` calls and that is not
    factorized already, in module order, as a `Plan` (a list that prints as a per-layer table).
    """
    cands, skipped = candidates(model, scheme, skip, input_size, linear)
    if isinstance(rank, dict):
        chosen = _explicit_ranks(rank, cands, skipped)
        cands_ranked = [c for c in cands if c.name in chosen]
        for c in cands:
            if c.name not in chosen:
                skipped.append(Decision(c.name, _kind(c), tuple(c.module.weight.shape), False,
                                        "no rank given for it", None, c.request.max_rank,
                                        c.request.dense_cost, c.request.dense_cost))
    else:
        policy = parse_policy(rank)
        if policy.needs_spectrum:
            attach_spectra(cands)
        fixed = sum(d.dense_flops for d in skipped)
        chosen = policy([c.request for c in cands], fixed_cost=fixed)
        cands_ranked = cands
    decisions = list(skipped)
    for c in cands_ranked:
        r = chosen[c.name]
        if c.scheme is not None:
            r = c.scheme.check_rank(ConvGeometry.of(c.module), r, where=c.name)
        else:
            whole = whole_number(r)
            if whole is None:
                raise ValueError(f"{c.name}: a linear layer takes one integer rank, got {r!r}")
            if not 1 <= whole <= c.request.max_rank:
                raise ValueError(f"{c.name}: rank {r!r} is out of range (valid ranks are 1..{c.request.max_rank})")
            r = whole
        cost = c.request.cost(r)
        if cost >= c.request.dense_cost:
            reason = f"rank {r} would cost {cost:,} MACs, not less than dense {c.request.dense_cost:,}"
            decisions.append(Decision(c.name, _kind(c), tuple(c.module.weight.shape), False, reason, r,
                                      c.request.max_rank, c.request.dense_cost, c.request.dense_cost))
        else:
            decisions.append(Decision(c.name, _kind(c), tuple(c.module.weight.shape), True, "", r,
                                      c.request.max_rank, c.request.dense_cost, cost))
    order = {name: i for i, (name, _) in enumerate(model.named_modules())}
    return Plan(sorted(decisions, key=lambda d: order[d.name]))


def why_none(decisions: list[Decision], model: nn.Module, limit: int = 3) -> str:
    """Why no layer of `model` is factorized, in one short line: the first `limit` layers and their reasons."""
    if not decisions:
        done = sum(isinstance(m, (LowRankConv2d, LowRankLinear)) for m in model.modules())
        return (f"its {done} conv/linear layer(s) are factorized already: it is a compact model" if done
                else "the model has no conv or linear layer")
    shown = "; ".join(f"{d.name}: {d.reason}" for d in decisions[:limit])
    more = len(decisions) - limit
    return shown + (f"; and {more} more layer{'s' if more > 1 else ''}" if more > 0 else "")


def _kind(c: Candidate) -> str:
    return "linear" if c.scheme is None else "conv"


def replace_module(model: nn.Module, name: str, new: nn.Module) -> None:
    """Put `new` where the submodule `name` is (``"layer1.0.conv1"``), and under every other name the same
    module is registered under (a layer used twice, e.g. ``nn.Sequential(conv, relu, conv)``, stays one
    shared layer: `named_modules` lists it once, and its cost counts both calls)."""
    old = model.get_submodule(name)
    paths = {name} | {path for path, m in model.named_modules(remove_duplicate=False) if m is old and path}
    for path in paths:
        parent, _, child = path.rpartition(".")
        setattr(model.get_submodule(parent) if parent else model, child, new)


@linalg.full_precision()
def factorize(model: nn.Module, rank: RankPolicy | int | str | dict = "energy:0.95", scheme: str | Scheme = "channel",
              skip: Iterable[str] = (), input_size=(1, 3, 32, 32), linear: bool = True) -> nn.Module:
    """Replace every eligible conv/linear of `model` (in place) by its low-rank form; return the model.

        >>> import lrtrain as lr
        >>> model = lr.models.create("resnet20")
        >>> model = lr.factorize(model, rank=lr.Energy(0.9), scheme="channel", skip=["conv1"])

    Layers that are skipped, and why, are logged on the ``lrtrain`` logger; `plan` returns them. Where no
    layer is factorized, a UserWarning says why (the model comes back unchanged).
    """
    scheme = get_scheme(scheme)
    decisions = plan(model, rank, scheme, skip, input_size, linear)
    if not any(d.factorize for d in decisions):
        warnings.warn(f"factorize: no layer of {type(model).__name__} was factorized, the model is unchanged "
                      f"({why_none(decisions, model)})", stacklevel=3)  # past full_precision's wrapper
    return carry_out(model, decisions, scheme)


def carry_out(model: nn.Module, decisions: list[Decision], scheme: Scheme) -> nn.Module:
    """Replace, in place, each layer `plan` decided to factorize (`decisions`, for `scheme`); return the model."""
    scheme = get_scheme(scheme)
    for d in decisions:
        if not d.factorize:
            log.info("factorize: %s kept dense: %s", d.name, d.reason)
            continue
        module = model.get_submodule(d.name)
        try:
            new = (LowRankLinear.from_dense(module, d.rank) if d.kind == "linear"
                   else LowRankConv2d.from_dense(module, d.rank, scheme))
        except linalg.NonFiniteError:
            raise linalg.NonFiniteError(f"{d.name}: the weight contains NaN or Inf values, so it cannot be "
                                        "factorized") from None
        replace_module(model, d.name, new)
    return model
