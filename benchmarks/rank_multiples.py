"""Ranks in multiples of the hardware's channel block vs free ranks, at one FLOPs budget, side by side.

A conv's kernels work on blocks of channels: oneDNN on an AVX-512 CPU pads channels to 16, cuDNN's
bf16/fp16 tensor-core kernels want multiples of 8. A factorized conv of rank 6 then costs what rank 8 or
16 would, and `FlopsBudget` counts it as cheaper than it runs. ``FlopsBudget(f, multiple=m)`` spends the
budget in steps of m instead. This script decomposes one trained (or fresh) model with
``lr.factorize(rank=FlopsBudget(f, multiple=m))`` for each m of ``--multiples``, and reports per model
its ranks, MACs, FLOPs speedup, the energy its truncation keeps, the test accuracy of the decomposition
without fine-tuning (with ``--data-dir``), and its inference time beside the dense model's, measured in
turns in one run: CPU batch sizes ``--batches`` with ``--threads`` threads pinned, or on CUDA batch
``--gpu-batch`` in bf16, eager and (``--compile``) compiled. BatchNorm is folded into the convs
everywhere, the layout is channels-last (the faster one for factorized convs on both devices).

The block sizes are what the first section of the results file measures: the time of a 3×3 conv
C→r plus its 1×1 r→C factor for every r up to C, at the widths of a CIFAR ResNet's stages.

    PYTHONPATH=src python benchmarks/rank_multiples.py --threads 2 --data-dir ../shared/data/cifar-10-batches-py
    PYTHONPATH=src python3 benchmarks/rank_multiples.py --device cuda --compile --commit SHA   # GPU machine

Writes benchmarks/results/rank_multiples_<device>.md (with $OUT set, a copy goes there).
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

import lrtrain as lr
from lrtrain import export, models
from lrtrain.data.cifar import channel_stats, find_cifar, normalize, read_cifar
from lrtrain.fold import fold_batchnorm
from lrtrain.layers import LowRankConv2d

from bench_common import add_timing_args, device_slug, raise_recompile_limit, timing_header
from speed import Report, _size, _table, _timed, cpu_latencies, gpu_latencies, pinned

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"


def block_sweep(device: torch.device, args) -> list[str]:
    """Forward time of a 3×3 conv C→r then a 1×1 conv r→C for every r ≤ C, per CIFAR ResNet stage."""
    fmt = torch.channels_last
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    batch = args.gpu_batch if device.type == "cuda" else max(args.batches)
    rows = []
    for channels, side in ((16, 32), (32, 16), (64, 8)):
        x = torch.randn(batch, channels, side, side, device=device, dtype=dtype).to(memory_format=fmt)
        weights = {}
        for r in range(1, channels + 1):
            first = torch.randn(r, channels, 3, 3, device=device, dtype=dtype).to(memory_format=fmt)
            second = torch.randn(channels, r, 1, 1, device=device, dtype=dtype).to(memory_format=fmt)
            weights[r] = (first, second)
        dense = torch.randn(channels, channels, 3, 3, device=device, dtype=dtype).to(memory_format=fmt)

        def factorized(r):
            return F.conv2d(F.conv2d(x, weights[r][0], padding=1), weights[r][1])

        calls = {"dense": lambda: F.conv2d(x, dense, padding=1),
                 **{r: (lambda r=r: factorized(r)) for r in weights}}
        times = {k: [] for k in calls}
        with torch.inference_mode(), pinned(args.threads or torch.get_num_threads()):
            for fn in calls.values():
                fn()
            for _ in range(args.repeats):  # round-robin, so that drift hits every rank alike
                for k, fn in calls.items():
                    times[k].append(_timed(lambda: [fn() for _ in range(args.iters)], device) / args.iters)
        base = statistics.median(times["dense"])
        cells = [f"{statistics.median(times[r]) / base:.2f}" for r in weights]
        rows.append([f"{channels}@{side}²", f"{base * 1e3:.3f}", " ".join(cells)])
    return [f"Time of a factorized 3×3 conv C→r, 1×1 r→C, over the dense 3×3 C→C (batch {batch}, "
            f"{'bf16' if dtype == torch.bfloat16 else 'fp32'}, channels-last, median of {args.repeats} "
            f"round-robin rounds of {args.iters} calls); the cells are r = 1, 2, ..., C:", "",
            *_table(["stage", "dense ms", "ratio to dense at r = 1 ... C"], rows)]


def load_model(args) -> tuple[nn.Module, str]:
    if args.weights:
        return export.load(args.weights).eval(), str(args.weights)
    default = HERE / "checkpoints" / "reproduce" / f"{args.model}_dense" / "compact.pt"
    if default.exists():
        return export.load(default).eval(), str(default.relative_to(HERE.parent))
    torch.manual_seed(0)
    return models.create(args.model).eval(), "fresh weights (seed 0): the energies and accuracies mean nothing"


def energy_kept(dense: nn.Module, compact: nn.Module) -> float:
    """Mean over the factorized convs of ‖W_r‖²/‖W‖², W_r the factorized layer's weight as one conv."""
    shares = []
    for name, module in compact.named_modules():
        if isinstance(module, LowRankConv2d):
            w = dense.get_submodule(name).weight.detach().double()
            shares.append(float(module.weight.detach().double().square().sum() / w.square().sum()))
    return statistics.fmean(shares) if shares else 1.0


def test_accuracy(net: nn.Module, images: torch.Tensor, labels: torch.Tensor, device: torch.device) -> float:
    net = copy.deepcopy(net).to(device).eval()
    correct = 0
    with torch.inference_mode():
        for i in range(0, len(images), 500):
            correct += int((net(images[i:i + 500].to(device)).argmax(1) == labels[i:i + 500].to(device)).sum())
    return correct / len(images)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default="resnet20", help="a CIFAR model of lrtrain.models")
    p.add_argument("--weights", type=Path, help="a saved model (export.save / a run's compact.pt); default: "
                   "the reproduce run <model>_dense's, else fresh weights")
    p.add_argument("--flops", type=float, default=0.45, help="FLOPs budget, fraction of the dense FLOPs")
    p.add_argument("--schemes", nargs="+", default=["channel", "spatial"])
    p.add_argument("--multiples", type=int, nargs="+", default=[1, 8, 16])
    p.add_argument("--data-dir", help="CIFAR-10 folder: adds the test accuracy without fine-tuning")
    p.add_argument("--batches", type=int, nargs="+", default=[1, 32], help="CPU batch sizes")
    p.add_argument("--gpu-batch", type=int, default=256)
    p.add_argument("--compile", action="store_true", help="CUDA: also time torch.compile'd models")
    p.add_argument("--rounds", type=int, default=7)
    p.add_argument("--iters", type=int, default=10)
    p.add_argument("--budget", type=float, help="seconds: no compilation starts past it (CUDA)")
    add_timing_args(p, "rank_multiples", repeats=15)
    args = p.parse_args(argv)
    device, header = timing_header("Ranks in multiples of the channel block vs free ranks, at one FLOPs budget",
                                   args)
    if args.threads is None:
        args.threads = torch.get_num_threads()
    if device.type == "cuda":  # the rank sweep picks cuDNN's algorithms as the model timings (and training) do
        torch.backends.cudnn.benchmark = True
    raise_recompile_limit()
    deadline = time.monotonic() + args.budget if args.budget else None
    report = Report(args.out or RESULTS / f"rank_multiples_{device_slug(device)}.md", header, deadline)
    dense, source = load_model(args)  # before any timing: a wrong --weights path fails at once
    report.add(["## Conv time against its rank", "", *block_sweep(device, args)])

    dense_flops = lr.count(dense).flops
    data = None
    if args.data_dir:
        train_x, _, test_x, test_y = read_cifar("cifar10", find_cifar("cifar10", args.data_dir))
        data = (normalize(test_x, *channel_stats(train_x)), test_y)
    nets = {"dense": fold_batchnorm(dense)}
    rows = [["dense", "—", f"{dense_flops / 1e6:.1f}", "1.00x", "1.000",
             f"{test_accuracy(dense, *data, device):.2%}" if data else "—"]]
    for scheme in args.schemes:
        for multiple in args.multiples:
            label = f"{scheme}, multiple {multiple}"
            try:
                compact = lr.factorize(copy.deepcopy(dense), rank=lr.FlopsBudget(args.flops, multiple=multiple),
                                       scheme=scheme)
            except ValueError as e:  # the budget cannot be met in steps of this multiple
                rows.append([label, "unreachable", "—", "—", "—", "—"])
                print(f"{label}: {e}")
                continue
            flops = lr.count(compact).flops
            ranks = sorted({m.rank for m in compact.modules() if isinstance(m, LowRankConv2d)})
            rows.append([label, " ".join(map(str, ranks)), f"{flops / 1e6:.1f}", f"{dense_flops / flops:.2f}x",
                         f"{energy_kept(dense, compact):.3f}",
                         f"{test_accuracy(compact, *data, device):.2%}" if data else "—"])
            nets[label] = fold_batchnorm(compact)
    for net in nets.values():
        net.to(memory_format=torch.channels_last)
    report.add([f"## {args.model} at {args.flops:g} of the dense FLOPs", "",
                f"Weights: {source}. Decomposed by `lr.factorize(rank=FlopsBudget({args.flops:g}, multiple=m))` "
                "(spectra of the trained weights: the greedy budget), no fine-tuning; energy kept: mean over "
                "the factorized convs of ‖W_r‖²/‖W‖².", "",
                *_table(["model", "conv ranks", "MMACs", "FLOPs speedup", "energy kept", "test top-1"], rows)])

    timing = []
    columns = []
    if device.type == "cuda":
        for compiled in ([False, True] if args.compile else [False]):
            columns.append(f"b{args.gpu_batch} bf16 {'compiled' if compiled else 'eager'}")
            timing.append(gpu_latencies(nets, _size(args.model, args.gpu_batch), device, args, compiled, report))
    else:
        for batch in args.batches:
            columns.append(f"CPU b{batch}")
            timing.append(cpu_latencies(nets, _size(args.model, batch), args))
    lines = []
    for label in nets:
        cells = []
        for times in timing:
            if label in times:
                cells.append(f"{times[label] * 1e3:.2f} ms, {times['dense'] / times[label]:.2f}x")
            else:
                cells.append("—")
        lines.append([label, *cells])
    report.add(["## Inference time (BatchNorm folded, channels-last; speedup over the dense model)", "",
                f"Median of {args.rounds} interleaved rounds of {args.iters} passes"
                + (f", {args.threads} thread(s) pinned" if device.type == "cpu" else "") + ".", "",
                *_table(["model", *columns], lines)])


if __name__ == "__main__":
    main()
