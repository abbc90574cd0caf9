"""TRP's nuclear sub-gradient λ·U_r V_rᵀ on ResNet-56's eligible weights: three ways, timed side by side.

- ``loop``: one ``torch.linalg.svd`` per layer (what the official code does), mask, add to the gradient;
- ``batched SVD``: ``TRP(subgradient="svd").before_step()``: one batched SVD per group of equal shapes;
- ``Newton–Schulz``: ``TRP(subgradient="newton_schulz").before_step()``: the polar factor by matrix
  products only (quintic warm-up, then cubic steps);
- and, for reference, the cubic Newton–Schulz iteration alone (16 steps), to show what the warm-up buys.

Every path writes its sub-gradient (λ = 1) into the weights' ``.grad``; its error is the relative Frobenius
distance per layer to two float64 references: the full polar factor U Vᵀ, and U_r V_rᵀ truncated to the
numerical rank (σ > TRP.tol·σ₁), which is what TRP's SVD paths compute by design. The paths are timed
round-robin (one call of each in turn, repeated), so a machine shared with other work slows them alike; the
median is kept. Where tiny singular values make the references disagree, what matters is that G is a
sub-gradient of the nuclear norm: ‖G‖₂ ≤ 1 and ⟨G, W⟩ = ‖W‖_*, so the relative gap 1 − ⟨G, W⟩/‖W‖_* is
reported too.

    PYTHONPATH=src python benchmarks/trp_subgradient.py --threads 1
    PYTHONPATH=src python3 benchmarks/trp_subgradient.py --device cuda --commit SHA   # the GPU machine

Results go to benchmarks/results/trp_subgradient_<device>.md and, with $OUT set, to $OUT too (the GPU
machine keeps nothing else).
"""

from __future__ import annotations

import argparse
import itertools
import statistics
import time
from pathlib import Path

import torch

import lrtrain as lr
from lrtrain import linalg
from lrtrain.methods.matrices import group_weights
from lrtrain.methods.trp import TRP

from bench_common import add_timing_args, device_slug, sync, timing_header, write_result

RESULTS = Path(__file__).parent / "results"


def loop_subgradient(convs: list[torch.nn.Conv2d], scheme, tol: float) -> None:
    """The per-layer way: one SVD per weight."""
    for conv in convs:
        w = conv.weight.detach()
        U, S, Vh = torch.linalg.svd(scheme.to_matrix(w), full_matrices=False)
        keep = (S > tol * S[..., :1]).to(U.dtype)
        sub = scheme.from_matrix((U * keep.unsqueeze(-2)) @ Vh, w.shape)
        conv.weight.grad = sub if conv.weight.grad is None else conv.weight.grad + sub


def cubic_only_subgradient(convs: list[torch.nn.Conv2d], scheme, names: list[str]) -> None:
    for group in group_weights(list(zip(names, convs)), scheme):
        group.add_to_grad(linalg.polar_newton_schulz(group.matrices(), steps=16))


def errors(convs, reference) -> list[float]:
    return [float((c.weight.grad.double() - ref).norm() / ref.norm()) for c, ref in zip(convs, reference)]


def subgradient_checks(convs, scheme) -> tuple[float, float]:
    """Largest 1 − ⟨G, W⟩/‖W‖_* and largest ‖G‖₂ over the layers (a sub-gradient has 0 and ≤ 1)."""
    gap, norm = 0.0, 0.0
    for c in convs:
        w = scheme.to_matrix(c.weight.detach().double())
        g = scheme.to_matrix(c.weight.grad.double())
        nuclear = torch.linalg.matrix_norm(w, "nuc").sum()
        gap = max(gap, float(1 - (g * w).sum() / nuclear))
        norm = max(norm, float(torch.linalg.matrix_norm(g, 2).max()))
    return gap, norm


def references(convs, scheme) -> tuple[list[torch.Tensor], list[torch.Tensor], int]:
    """Float64 U Vᵀ and U_r V_rᵀ of every weight, and how many weights are numerically rank-deficient."""
    full, truncated, deficient = [], [], 0
    for c in convs:
        U, S, Vh = torch.linalg.svd(scheme.to_matrix(c.weight.detach().double()), full_matrices=False)
        keep = (S > TRP.tol * S[..., :1]).double()
        deficient += int(keep.sum() < keep.numel())
        full.append(scheme.from_matrix(U @ Vh, c.weight.shape))
        truncated.append(scheme.from_matrix((U * keep.unsqueeze(-2)) @ Vh, c.weight.shape))
    return full, truncated, deficient


@torch.no_grad()
def as_in_training(method: TRP, convs: list[torch.nn.Conv2d], step: float = 1e-3) -> None:
    """The weights TRP sees between projections: a projection (90 % energy), then a small full-rank update."""
    method.project()
    for c in convs:
        w = c.weight
        w.add_(step * w.norm() / w.numel() ** 0.5 * torch.randn_like(w))


def run_scheme(scheme_name: str, state: str, repeats: int,
               device: torch.device) -> tuple[list[dict], int, int, int]:
    torch.manual_seed(0)
    model = lr.models.create("resnet56").to(device)
    methods = {kind: TRP(model, scheme=scheme_name, nuclear=1.0, period=0, subgradient=kind)
               for kind in ("svd", "newton_schulz")}
    probe = methods["svd"]
    names, scheme = probe.layers, probe.scheme
    convs = [model.get_submodule(n) for n in names]
    if state == "training":
        as_in_training(TRP(model, scheme=scheme_name, energy=0.9, nuclear=0.0), convs)
    full, truncated, deficient = references(convs, scheme)
    groups = len(group_weights(list(zip(names, convs)), scheme))

    paths = {
        "per-layer torch.linalg.svd loop": lambda: loop_subgradient(convs, scheme, TRP.tol),
        "batched SVD, one per shape (subgradient='svd')": methods["svd"].before_step,
        "Newton–Schulz, warm-up 10 + 6 (subgradient='newton_schulz')": methods["newton_schulz"].before_step,
        "Newton–Schulz, cubic only, 16 steps (reference)": lambda: cubic_only_subgradient(convs, scheme, names),
    }
    times: dict[str, list[float]] = {label: [] for label in paths}
    errs: dict[str, tuple] = {}
    for i in range(repeats + 1):  # the first round warms up and is not timed
        for label, path in paths.items():
            for c in convs:
                c.weight.grad = None
            sync(device)
            start = time.perf_counter()
            path()
            sync(device)
            elapsed = time.perf_counter() - start
            if i:
                times[label].append(elapsed)
            else:
                errs[label] = errors(convs, full), errors(convs, truncated), subgradient_checks(convs, scheme)
    base = statistics.median(times["per-layer torch.linalg.svd loop"])
    rows = []
    for label in paths:
        t = statistics.median(times[label])
        rows.append({"path": label, "ms": 1e3 * t, "speedup": base / t, "full": max(errs[label][0]),
                     "truncated": max(errs[label][1]), "median": statistics.median(errs[label][1]),
                     "gap": errs[label][2][0], "norm": errs[label][2][1]})
    return rows, len(convs), groups, deficient


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_timing_args(parser, "trp_subgradient", repeats=15)
    args = parser.parse_args(argv)
    device, lines = timing_header("TRP nuclear sub-gradient on ResNet-56's eligible weights: per-layer SVD vs "
                                  "batched SVD vs Newton–Schulz", args)
    lines += [
        f"- protocol: ResNet-56 (Kaiming normal init, seed 0), TRP's default eligibility (every conv "
        f"but where factorizing cannot save FLOPs); each path adds U_r V_rᵀ (λ = 1) to the weights' gradients; "
        f"median of {args.repeats} round-robin calls; error = ‖G − R‖_F / ‖R‖_F per layer for the float64 "
        f"references R = U_r V_rᵀ (σ > {TRP.tol:g}·σ₁, TRP's numerical rank) and R = U Vᵀ (max, median over layers).",
        "",
    ]
    states = {"init": "at initialization",
              "training": "between projections: projected to 90 % energy, then a full-rank step of relative size 1e-3"}
    for (state, what), scheme in itertools.product(states.items(), ("channel", "spatial")):
        rows, layers, groups, deficient = run_scheme(scheme, state, args.repeats, device)
        lines += [f"## {scheme} scheme, {what}: {layers} weights in {groups} shape groups ({deficient} with "
                  f"σ_min < {TRP.tol:g}·σ₁)", "",
                  "| path | time (ms) | speed-up vs loop | max error vs U_r V_rᵀ | median error vs U_r V_rᵀ "
                  "| max error vs U Vᵀ | max 1 − ⟨G,W⟩/‖W‖_* | max ‖G‖₂ |",
                  "|---|---|---|---|---|---|---|---|"]
        for r in rows:
            lines.append(f"| {r['path']} | {r['ms']:.2f} | {r['speedup']:.2f}× | {r['truncated']:.1e} | "
                         f"{r['median']:.1e} | {r['full']:.1e} | {r['gap']:.1e} | {r['norm']:.6f} |")
        lines.append("")
    text = "\n".join(lines)
    print(text)
    write_result(args.out or RESULTS / f"trp_subgradient_{device_slug(device)}.md", text)


if __name__ == "__main__":
    main()
