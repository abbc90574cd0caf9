"""TRP's projection (step B) on a CIFAR ResNet's eligible weights: three ways to decompose, timed side by side.

- ``device SVD``: ``torch.linalg.svd`` of each group of equal-shaped weight forms on the weights' device
  (cuSOLVER on a GPU), what `TRP.project` did before `linalg.gram_eigh`;
- ``Gram eigh, host``: ``TRP(host_eigh=True).project()``: the float64 Gram matrices of the smaller side,
  eigendecomposed by LAPACK on the host (one device sync per projection);
- ``Gram eigh, device``: ``TRP(host_eigh=False).project()``: the same on the weights' device.

A second table per model and scheme (channel, spatial) times whole projections under each rank rule of the
reproduction's TRP rows: the official 90 % energy rule, and the FLOPs budget of the ramp rows (0.433 of the
dense MACs), once with each layer's cost at a rank computed at every call of the budget (before 2026-11-28)
and once remembered across projections (`surgery._Remembered`, now).

Each path projects the same weights (the state TRP sees between projections: a projection at 90 % energy,
then a small full-rank update), keeps 90 % of each weight's energy and, as in training with λ > 0, also
forms the next step's sub-gradient U_r V_rᵀ. The paths run round-robin (one call of each in turn, the
weights restored before every call, untimed) and the median is kept, so a machine shared with other work
slows them alike. Error: the largest relative Frobenius distance of a projected weight to the float64 SVD
truncation of the same weight at the same rank; "ranks differ" counts layers whose energy rank differs from
the float64 one.

    PYTHONPATH=src python benchmarks/trp_projection.py --threads 1
    PYTHONPATH=src python3 benchmarks/trp_projection.py --device cuda --commit SHA   # the GPU machine

Results go to benchmarks/results/trp_projection_<device>.md and, with $OUT set, to $OUT too.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import itertools
import statistics
import time
from pathlib import Path

import torch

import lrtrain as lr
from lrtrain import linalg
from lrtrain.methods.trp import TRP, _masked_polar

from bench_common import add_timing_args, device_slug, sync, timing_header, write_result
from trp_subgradient import as_in_training

RESULTS = Path(__file__).parent / "results"
ENERGY = 0.9


@torch.no_grad()
@linalg.full_precision()
def device_svd_projection(method: TRP) -> None:
    """The SVD way: a batched SVD of each group on the weights' device, truncation and U_r V_rᵀ from it."""
    for group in method._groups:
        mats = group.matrices()
        U, S, Vh = linalg.svd(mats, names=group.names)
        keep = linalg.rank_mask(S, linalg.energy_rank(S, ENERGY))
        group.write(linalg.reconstruct(U, S * keep, Vh).to(mats.dtype))
        _masked_polar(U, keep, Vh)
        keep.sum(-1).tolist()  # the ranks go to the rank log, on the host


def timed_from(start: list[torch.Tensor], convs: list, path, device: torch.device) -> tuple[float, object]:
    """Seconds of ``path()`` (and what it returns) on the weights `start`, restored first, untimed."""
    with torch.no_grad():
        for c, w in zip(convs, start):
            c.weight.copy_(w)
    sync(device)
    t0 = time.perf_counter()
    result = path()
    sync(device)
    return time.perf_counter() - t0, result


def run(model_name: str, scheme: str, repeats: int, device: torch.device) -> tuple[list[dict], int, str]:
    torch.manual_seed(0)
    model = lr.models.create(model_name).to(device)
    methods = {host: TRP(model, scheme=scheme, energy=ENERGY, nuclear=3e-4, period=0, eligible="official",
                         subgradient="svd", host_eigh=host) for host in (True, False)}
    probe = methods[True]
    convs = [model.get_submodule(n) for n in probe.layers]
    as_in_training(TRP(model, scheme=scheme, energy=ENERGY, nuclear=0.0, eligible="official"), convs)
    start = [c.weight.detach().clone() for c in convs]
    references = []
    for w in start:
        mat = probe.scheme.to_matrix(w.double())
        U, S, Vh = torch.linalg.svd(mat, full_matrices=False)
        rank = linalg.energy_rank(S, ENERGY)
        references.append((linalg.reconstruct(U, S * linalg.rank_mask(S, rank), Vh), rank))
    paths = {
        "device SVD (before)": lambda: device_svd_projection(probe),
        "Gram eigh, host (TRP default)": methods[True].project,
        "Gram eigh, device": methods[False].project,
    }
    times: dict[str, list[float]] = {label: [] for label in paths}
    errs: dict[str, tuple[float, int]] = {}
    for i in range(repeats + 1):  # the first round warms up (cuSOLVER handles, LAPACK) and is not timed
        for label, path in paths.items():
            seconds, _ = timed_from(start, convs, path, device)
            if i:
                times[label].append(seconds)
            else:
                errs[label] = projection_error(convs, probe, references)
        for m in methods.values():
            m.rank_log.clear()
    base = statistics.median(times["device SVD (before)"])
    rows = [{"path": label, "ms": 1e3 * statistics.median(t), "speedup": base / statistics.median(t),
             "error": errs[label][0], "ranks": errs[label][1]} for label, t in times.items()]
    shapes = ", ".join(f"{len(g.names)}×{tuple(g.matrices().shape[1:])}" for g in probe._groups)
    return rows, len(convs), shapes


BUDGET = "flops:0.433"  # the ResNet-56 ramp rows' final budget (paper: 2.31x fewer FLOPs)


def rule_rows(model_name: str, scheme: str, repeats: int, device: torch.device) -> list[dict]:
    """Whole projections (host eigh, U_r V_rᵀ, rank log) under the energy rule and the FLOPs budget."""
    torch.manual_seed(0)
    model = lr.models.create(model_name).to(device)
    build = functools.partial(TRP, model, scheme=scheme, nuclear=3e-4, period=0, subgradient="svd")
    methods = {"energy 0.9 (official)": build(energy=ENERGY), f"budget {BUDGET}, costs recomputed": build(rank=BUDGET),
               f"budget {BUDGET}, costs remembered": build(rank=BUDGET)}
    recomputed = methods[f"budget {BUDGET}, costs recomputed"]
    recomputed._requests = {n: dataclasses.replace(r, cost=r.cost.cost) for n, r in recomputed._requests.items()}
    convs = [model.get_submodule(n) for n in recomputed.layers]
    as_in_training(build(energy=ENERGY, nuclear=0.0), convs)
    start = [c.weight.detach().clone() for c in convs]
    times: dict[str, list[float]] = {label: [] for label in methods}
    ranks: dict[str, dict[str, int]] = {}
    for i in range(repeats + 1):  # the first round fills the remembered costs and is not timed
        for label, method in methods.items():
            seconds, ranks[label] = timed_from(start, convs, method.project, device)
            if i:
                times[label].append(seconds)
            method.rank_log.clear()
    if ranks[f"budget {BUDGET}, costs recomputed"] != ranks[f"budget {BUDGET}, costs remembered"]:
        raise SystemExit("remembered costs chose other ranks than recomputed ones")
    base = statistics.median(times["energy 0.9 (official)"])
    return [{"rule": label, "ms": 1e3 * statistics.median(t), "ratio": statistics.median(t) / base}
            for label, t in times.items()]


def projection_error(convs, method: TRP, references) -> tuple[float, int]:
    worst, differ = 0.0, 0
    for c, (ref, rank) in zip(convs, references):
        got = method.scheme.to_matrix(c.weight.detach().double())
        worst = max(worst, float((got - ref).norm() / ref.norm()))
        mine = linalg.energy_rank(torch.linalg.svdvals(got), 1.0 - 1e-9)  # the rank the projection left
        differ += int((mine.amax() != rank.amax()).item()) if mine.dim() else int(mine.item() != rank.item())
    return worst, differ


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", default=["resnet20", "resnet56"])
    parser.add_argument("--schemes", nargs="+", default=["channel", "spatial", "decoupled"])
    add_timing_args(parser, "trp_projection", repeats=9)
    args = parser.parse_args(argv)
    device, lines = timing_header(
        "TRP projection (step B): device SVD vs float64 Gram eigendecomposition on the host or the device", args)
    lines += [
        f"- protocol: TRP's official eligibility, weights as between two projections (projected to 90 % energy, "
        f"then a full-rank step of relative size 1e-3); each call projects every eligible weight to 90 % energy "
        f"and forms U_r V_rᵀ; median of {args.repeats} round-robin calls; error = largest ‖W' − W_r‖_F / ‖W_r‖_F "
        f"against the float64 SVD truncation W_r; a GPU timing includes the path's device syncs.",
        "",
    ]
    for model_name, scheme in itertools.product(args.models, args.schemes):
        rows, layers, shapes = run(model_name, scheme, args.repeats, device)
        mark = len(lines)
        lines += [f"## {model_name}, {scheme} scheme: {layers} weights ({shapes})", "",
                  "| path | time (ms) | speed-up vs device SVD | max error vs float64 truncation | ranks differ |",
                  "|---|---:|---:|---:|---:|"]
        lines += [f"| {r['path']} | {r['ms']:.2f} | {r['speedup']:.2f}× | {r['error']:.1e} | {r['ranks']} |"
                  for r in rows]
        lines.append("")
        if scheme != "decoupled":
            rules = rule_rows(model_name, scheme, args.repeats, device)
            lines += ["Whole projections by rank rule (the same weights; ranks of both budget paths equal):", "",
                      "| rank rule | time (ms) | vs the energy rule |", "|---|---:|---:|"]
            lines += [f"| {r['rule']} | {r['ms']:.2f} | {r['ratio']:.2f}× |" for r in rules]
            lines.append("")
        print("\n".join(lines[mark:]), flush=True)
    text = "\n".join(lines)
    write_result(args.out or RESULTS / f"trp_projection_{device_slug(device)}.md", text)
    print(f"wrote {args.out or RESULTS / f'trp_projection_{device_slug(device)}.md'}")


if __name__ == "__main__":
    main()
