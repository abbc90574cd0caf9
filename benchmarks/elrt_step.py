"""Training step time of dense vs ELRT training, side by side: does the step scale with the compact FLOPs?

One step is what a training loop does with the method: forward, loss, backward, ``method.before_step()``
(the orthogonality gradient), ``optimizer.step()`` (SGD, momentum, weight decay), ``method.after_step()``.
The configurations are timed round-robin (one step of each in turn, repeated), so a machine shared with
other work slows all of them alike; the median per configuration is reported next to its FLOPs.

``--breakdown`` also times every conv leaf alone (forward + backward at the shape it sees in the model)
and sums the times by kind (k×k vs 1×1), which says where the time goes that the FLOPs do not predict.

    PYTHONPATH=src python benchmarks/elrt_step.py                         # ResNet-56, CPU, batch 32
    PYTHONPATH=src python benchmarks/elrt_step.py --device cuda --batch 128 --bf16 --channels-last
    PYTHONPATH=src python benchmarks/elrt_step.py --model resnet50 --image-size 224 --batch 8 --threads 2

Results go to benchmarks/results/elrt_step_<cpu or the GPU's name>[_bf16][_channels_last].md and, with $OUT set, to $OUT
too (the GPU machine keeps nothing else; pass ``--commit SHA`` there, it has no .git).

What it found on CPU (results/elrt_step_cpu*.md): the step does not scale with the FLOPs. At CIFAR widths
(16–64 channels) a conv's CPU time follows the activation volume it reads and writes more than its MACs:
a 3×3 conv 8→8 takes about half the time of 16→16 for a quarter of the MACs, and 1×1 convs run at a
small fraction of the k×k MAC rate. Tucker-2 adds two activation tensors per layer (about 2× the conv
activations at −50 % FLOPs), so its 1×1 convs take about half of the conv time for a quarter of the FLOPs;
and the rest of the step (batch norms, ReLUs, the optimizer) does not shrink with the ranks at all.
The channel format, with one extra activation per layer, stays within about 15 % of dense either way.

At ImageNet widths (results/elrt_step_cpu_resnet18.md, _resnet50.md: 224², batch 8) the convs do scale:
ResNet-50's conv time falls to 0.59 of dense at −50 % FLOPs (Tucker-2) and 0.40 at −70 %, and the step to
0.73 and 0.53 (channel 0.73, 0.56; ResNet-18 0.81/0.62, channel 0.75/0.55). What keeps the step above the
FLOPs ratio is the rest of the step, which does not shrink (ResNet-50: 205 ms dense, 234–281 ms ELRT, the
orthogonality gradient's 21–59 ms on this CPU included).
"""

from __future__ import annotations

import argparse
import datetime
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

import lrtrain as lr
from lrtrain.provenance import commit, device_label
from lrtrain.methods.base import Method
from lrtrain.methods.elrt import ELRT
from lrtrain.metrics import trace_shapes

from bench_common import device_slug, raise_recompile_limit, sync, write_result

RESULTS = Path(__file__).parent / "results"


@dataclass
class Config:
    label: str
    model: nn.Module
    method: Method
    optimizer: torch.optim.Optimizer
    flops: int
    params: int
    activations: int  # conv output elements per sample: what the convs write, and keep for backward
    pointwise_flops: int  # MACs of the 1×1 convs
    shapes: dict  # conv leaf -> (input shape, output shape), batch 1
    forward: nn.Module  # the model, or its compiled form
    times: list[float] = field(default_factory=list)
    hook_times: list[float] = field(default_factory=list)


def build(args, label: str, method_kw: dict | None, device: torch.device) -> Config:
    torch.manual_seed(0)
    model = lr.models.create(args.model)
    size = (1, 3, args.image_size, args.image_size)
    method = ELRT(model, **method_kw, input_size=size) if method_kw is not None else Method(model)
    counts = lr.count(model, size)
    shapes = {n: s for n, s in trace_shapes(model, size).items() if isinstance(model.get_submodule(n), nn.Conv2d)}
    activations = sum(_numel(out[1:]) for _, out in shapes.values())
    pointwise = sum(counts.layers[n].flops for n in shapes if model.get_submodule(n).kernel_size == (1, 1))
    fmt = torch.channels_last if args.channels_last else torch.contiguous_format
    model.to(device, memory_format=fmt).train()
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=1e-4)
    forward = torch.compile(model) if args.compile else model
    return Config(label, model, method, opt, counts.flops, counts.params, activations, pointwise, shapes, forward)


def _ranks(method: Method) -> str:
    """The distinct ranks of an ELRT model (a tied tucker2 pair as one number), or — for dense."""
    if not isinstance(method, ELRT):
        return "—"
    ranks = {r[0] if isinstance(r, tuple) and r[0] == r[1] else r for r in method.ranks().values()}
    return " ".join(map(str, sorted(ranks, key=lambda r: r if isinstance(r, int) else r[0])))


def _numel(shape) -> int:
    out = 1
    for s in shape:
        out *= int(s)
    return out


def step(cfg: Config, x: torch.Tensor, y: torch.Tensor, args, device: torch.device) -> None:
    """One training step, timed whole (a sync before and after); `before_step` timed inside it by CUDA
    events on a GPU, so that no sync in the middle leaves the GPU idle as training would not."""
    cuda = device.type == "cuda"
    sync(device)
    start = time.perf_counter()
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=args.bf16):
        logits = cfg.forward(x)
    F.cross_entropy(logits.float(), y).backward()
    if cuda:
        events = [torch.cuda.Event(enable_timing=True) for _ in range(2)]
        events[0].record()
    hook = time.perf_counter()
    cfg.method.before_step()
    if cuda:
        events[1].record()
    hook = time.perf_counter() - hook
    cfg.optimizer.step()
    cfg.optimizer.zero_grad(set_to_none=True)
    cfg.method.after_step()
    sync(device)
    cfg.times.append(time.perf_counter() - start)
    cfg.hook_times.append(events[0].elapsed_time(events[1]) / 1000 if cuda else hook)


def conv_breakdown(cfg: Config, args, device: torch.device) -> dict[str, float]:
    """Seconds of forward + backward of every conv leaf run alone, summed by kind."""
    fmt = torch.channels_last if args.channels_last else torch.contiguous_format
    sums: dict[str, float] = {}
    for name, (in_shape, _) in cfg.shapes.items():
        conv = cfg.model.get_submodule(name)
        kind = "1x1" if conv.kernel_size == (1, 1) else "kxk"
        x = torch.randn(args.batch, *in_shape[1:], device=device).to(memory_format=fmt).requires_grad_()
        with torch.no_grad():  # a dense output gradient, as in training (sum()'s is a stride-0 broadcast)
            grad = torch.randn_like(conv(x))
        times = []
        for i in range(args.warmup + args.iters):
            sync(device)
            start = time.perf_counter()
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=args.bf16):
                out = conv(x)
            out.backward(grad.to(out.dtype))
            sync(device)
            if i >= args.warmup:
                times.append(time.perf_counter() - start)
        sums[kind] = sums.get(kind, 0.0) + statistics.median(times)
    return sums


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default="resnet56")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--image-size", type=int, default=32, help="input side (224 for the ImageNet ResNets)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=1, help="CPU threads (torch.set_num_threads)")
    p.add_argument("--reductions", type=float, nargs="+", default=[0.5, 0.7],
                   help="FLOPs reductions of the ELRT models (0.5: half the dense FLOPs)")
    p.add_argument("--schemes", nargs="+", default=["tucker2"], choices=["tucker2", "channel"])
    p.add_argument("--multiples", type=int, nargs="+", default=[1],
                   help="rank multiples of the ELRT models (FlopsBudget(..., multiple=m)): 8 for tensor cores")
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--iters", type=int, default=15)
    p.add_argument("--bf16", action="store_true", help="bf16 autocast")
    p.add_argument("--channels-last", action="store_true")
    p.add_argument("--compile", action="store_true", help="torch.compile each model")
    p.add_argument("--breakdown", action="store_true", help="also time each conv leaf alone, by kind")
    p.add_argument("--no-write", action="store_true", help="print only; do not write the results file")
    p.add_argument("--commit", help="the commit measured (default: git's; the GPU machine has no .git)")
    args = p.parse_args(argv)
    device = torch.device(args.device)
    torch.set_num_threads(args.threads)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    raise_recompile_limit()

    configs = [build(args, "dense", None, device)]
    for scheme in args.schemes:
        for red in args.reductions:
            for multiple in args.multiples:
                aligned = f", ranks ×{multiple}" if multiple > 1 else ""
                configs.append(build(args, f"ELRT {scheme} −{red:.0%} FLOPs{aligned}", {
                    "rank": f"flops:{1 - red:g},multiple:{multiple}", "scheme": scheme}, device))
    gen = torch.Generator(device="cpu").manual_seed(0)
    x = torch.randn(args.batch, 3, args.image_size, args.image_size, generator=gen).to(device)
    if args.channels_last:
        x = x.to(memory_format=torch.channels_last)
    y = torch.randint(0, 10, (args.batch,), generator=gen).to(device)

    for _ in range(args.warmup):
        for cfg in configs:
            step(cfg, x, y, args, device)
    for cfg in configs:
        cfg.times.clear()
        cfg.hook_times.clear()
    for _ in range(args.iters):  # round-robin: background load hits every configuration alike
        for cfg in configs:
            step(cfg, x, y, args, device)

    dense = configs[0]
    base = statistics.median(dense.times)
    options = ", ".join(o for o, on in (("bf16 autocast", args.bf16), ("channels_last", args.channels_last),
                                        ("torch.compile", args.compile)) if on) or "fp32"
    lines = [
        f"# ELRT training step time vs dense ({args.model}, {args.image_size}², batch {args.batch}, {options})", "",
        f"- device: {device_label(device, args.threads)}",
        f"- command: `PYTHONPATH=src python benchmarks/elrt_step.py {' '.join(sys.argv[1:])}`",
        f"- commit: {args.commit or commit()}",
        f"- date: {datetime.datetime.now().isoformat(timespec='seconds')}; torch {torch.__version__}",
        f"- step = forward + backward + before_step + SGD step + after_step; median of {args.iters} "
        "round-robin steps after warm-up", "",
        "| model | ranks | MFLOPs | FLOPs ratio | params | conv activations ratio | step ms | step ratio | "
        "before_step ms |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for cfg in configs:
        t = statistics.median(cfg.times)
        lines.append(f"| {cfg.label} | {_ranks(cfg.method)} | {cfg.flops / 1e6:.1f} | "
                     f"{cfg.flops / dense.flops:.2f} | "
                     f"{cfg.params / 1e6:.3f} M | {cfg.activations / dense.activations:.2f} | {t * 1e3:.1f} | "
                     f"{t / base:.2f} | {statistics.median(cfg.hook_times) * 1e3:.2f} |")
    if args.breakdown:
        lines += ["", "Conv leaves timed alone (forward + backward, summed by kind, ms); the rest of the step "
                  "(norms, activations, loss, optimizer) is the step time minus the convs:", "",
                  "| model | k×k convs | 1×1 convs | rest of the step | 1×1 share of conv time | "
                  "1×1 share of FLOPs |",
                  "|---|---|---|---|---|---|"]
        for cfg in configs:
            sums = conv_breakdown(cfg, args, device)
            total = sums.get("kxk", 0.0) + sums.get("1x1", 0.0)
            rest = statistics.median(cfg.times) - total
            lines.append(f"| {cfg.label} | {sums.get('kxk', 0.0) * 1e3:.1f} | {sums.get('1x1', 0.0) * 1e3:.1f} | "
                         f"{rest * 1e3:.1f} | {sums.get('1x1', 0.0) / total:.0%} | "
                         f"{cfg.pointwise_flops / cfg.flops:.0%} |")
    text = "\n".join(lines) + "\n"
    print(text)
    if not args.no_write:
        # every option that changes what the table measures names the file: two runs do not overwrite each other
        multiples = "" if args.multiples == [1] else "_multiples" + "-".join(map(str, args.multiples))
        suffix = device_slug(device) + ("" if args.model == "resnet56" else f"_{args.model}") + \
            ("_bf16" if args.bf16 else "") + ("_channels_last" if args.channels_last else "") + \
            ("_compiled" if args.compile else "") + ("" if args.batch == 32 else f"_b{args.batch}") + multiples
        write_result(RESULTS / f"elrt_step_{suffix}.md", text)


if __name__ == "__main__":
    main()
