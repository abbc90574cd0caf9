"""The convs of a low-rank layer vs the dense conv, in NCHW and channels-last, and BatchNorm folding.

Why a compact CIFAR ResNet is not faster in proportion to its FLOPs on a CPU, layer by layer: for each
ResNet-20 stage (16 channels at 32×32, 32 at 16×16, 64 at 8×8) it times the dense 3×3 conv c→c, the channel
scheme's 3×3 factor c→r and its 1×1 factor r→c (as `F.conv2d` and as lrtrain's `PointwiseConv2d`, one
matrix product), each in NCHW and in channels-last; then the whole dense ResNet-20 with and without its
BatchNorm folded (`lr.fold_batchnorm`). The variants of a row group run round-robin (one call of each in
turn, repeated), so a shared machine slows them alike; medians are reported with the MAC rate.

    PYTHONPATH=src python benchmarks/conv_layouts.py --threads 2          # results/conv_layouts_cpu.md

This is what `lr.deploy(..., layout="auto")` acts on: it times each factorized layer against its dense
conv and the whole model in both layouts, and keeps the faster.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

import lrtrain as lr
from lrtrain.layers import pointwise_conv

from bench_common import add_timing_args, device_slug, sync, timing_header, write_result

RESULTS = Path(__file__).parent / "results"
STAGES = ((16, 32), (32, 16), (64, 8))  # ResNet-20: channels, feature map side


def round_robin(calls: dict[str, Callable[[], object]], repeats: int, device: torch.device) -> dict[str, float]:
    """Median milliseconds of each call, the calls taken in turns `repeats` times after two warm-ups."""
    times: dict[str, list[float]] = {name: [] for name in calls}
    with torch.inference_mode():
        for _ in range(2):
            for call in calls.values():
                call()
        for _ in range(repeats):
            for name, call in calls.items():
                sync(device)
                start = time.perf_counter()
                call()
                sync(device)
                times[name].append(1000 * (time.perf_counter() - start))
    return {name: statistics.median(t) for name, t in times.items()}


def layer_rows(batch: int, rank_div: int, repeats: int, device: torch.device) -> list[str]:
    rows = []
    cl = torch.channels_last
    for c, side in STAGES:
        r = max(1, c // rank_div)
        g = torch.Generator().manual_seed(0)
        x = torch.randn(batch, c, side, side, generator=g).to(device)
        mid = torch.randn(batch, r, side, side, generator=g).to(device)
        dense = torch.randn(c, c, 3, 3, generator=g).to(device)
        first = torch.randn(r, c, 3, 3, generator=g).to(device)
        second = torch.randn(c, r, 1, 1, generator=g).to(device)
        layouts = {"NCHW": (x, mid, dense, first, second),
                   "channels-last": tuple(t.contiguous(memory_format=cl) for t in (x, mid, dense, first, second))}
        calls, macs = {}, {}
        for name, (xx, mm, wd, w1, w2) in layouts.items():
            calls[f"dense 3×3 {c}→{c}, {name}"] = lambda xx=xx, wd=wd: F.conv2d(xx, wd, padding=1)
            calls[f"factor 3×3 {c}→{r}, {name}"] = lambda xx=xx, w1=w1: F.conv2d(xx, w1, padding=1)
            calls[f"factor 1×1 {r}→{c}, {name}, F.conv2d"] = lambda mm=mm, w2=w2: F.conv2d(mm, w2)
            macs.update({f"dense 3×3 {c}→{c}, {name}": c * c * 9, f"factor 3×3 {c}→{r}, {name}": r * c * 9,
                         f"factor 1×1 {r}→{c}, {name}, F.conv2d": r * c})
        calls[f"factor 1×1 {r}→{c}, NCHW, PointwiseConv2d"] = lambda: pointwise_conv(mid, second, None)
        macs[f"factor 1×1 {r}→{c}, NCHW, PointwiseConv2d"] = r * c
        for name, ms in round_robin(calls, repeats, device).items():
            mmacs = macs[name] * side * side * batch / 1e6
            rows.append(f"| {c}@{side}² | {name} | {mmacs:.1f} | {ms:.3f} | {mmacs / ms:.1f} |")
    return rows


def fold_rows(batch: int, repeats: int, device: torch.device) -> list[str]:
    torch.manual_seed(0)
    size = (batch, 3, 32, 32)
    model = lr.models.create("resnet20").to(device).eval()
    with torch.no_grad():  # BatchNorm statistics of a trained model, not the identity of a fresh one
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
    folded = lr.fold_batchnorm(model, size)
    x = torch.randn(size, device=device)
    nets = {"BatchNorm kept": model, "BatchNorm folded": folded}
    nets.update({f"{k}, channels-last": copy.deepcopy(v).to(memory_format=torch.channels_last)
                 for k, v in list(nets.items())})
    times = round_robin({k: (lambda net=net: net(x)) for k, net in nets.items()}, 3 * repeats, device)
    base = times["BatchNorm kept"]
    return [f"| {k} | {ms:.2f} | {base / ms:.2f}x |" for k, ms in times.items()]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_timing_args(p, "conv_layouts", repeats=30)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--rank-div", type=int, default=4, help="factor rank = channels / this (TRP's ranks: ~4)")
    args = p.parse_args()
    device, lines = timing_header("Low-rank convs vs dense, NCHW vs channels-last; BatchNorm folding", args)
    lines += ["", f"Batch {args.batch}, fp32, inference mode; factor rank = channels / {args.rank_div}; median of "
              f"{args.repeats} round-robin calls per row group (one stage).", "",
              "| stage | conv | MMACs | ms | GMAC/s |", "|---|---|---:|---:|---:|"]
    lines += layer_rows(args.batch, args.rank_div, args.repeats, device)
    lines += ["", f"Dense ResNet-20, batch {args.batch}: BatchNorm kept vs folded into the convs "
              f"(`lr.fold_batchnorm`), each in NCHW and channels-last, median of {3 * args.repeats} round-robin "
              "calls.", "",
              "| model | ms | speedup |", "|---|---:|---:|"]
    lines += fold_rows(args.batch, args.repeats, device)
    text = "\n".join(lines) + "\n"
    print(text)
    write_result(args.out or RESULTS / f"conv_layouts_{device_slug(device)}.md", text)


if __name__ == "__main__":
    main()
