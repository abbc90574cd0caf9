"""Speed of the methods, as ratios measured side by side in one run (issue 8, part B).

- **B.1** training step of each method vs dense training, same model and batch (ResNet-56, batch 128):
  TRP (projection every 5 steps; the nuclear sub-gradient after each projection as its recipes do, or every
  step by batched SVD or by Newton–Schulz; and with ``overlap``, the host's decomposition of a projection
  run while the device trains the next step), LRPET, ELRT (Tucker-2 and channel). Each configuration is a
  `Trainer` built from its recipe, stepped through `Trainer.train_step` (the step training runs) on
  generated 32×32 images held on the device (benchmarks/train_throughput.py's helpers), in interleaved
  rounds (a drift of a shared machine hits all alike), median round kept. A window is a whole number of
  TRP periods, so TRP's projections are inside it; LRPET projects once per CIFAR-10 epoch (390 steps at
  batch 128), too rarely for a window: its projection is timed alone and spread over its period.
- **B.3** inference latency of each compact model vs the dense one: CPU batch 1 and 32 (``--threads``
  threads, pinned to as many cores), and on CUDA batch 256 in bf16, eager and torch.compile'd; the
  measured speedup beside the FLOPs speedup. Compact models come from benchmarks/reproduce.py's finished
  runs where there are (trained ranks), else from the method's own ``finalize()`` on fresh weights at the
  recipe's target (TRP, whose ranks come out of training: at the paper's speedup). Where a model falls
  short of its FLOPs speedup, a profile says where its time goes: per conv kernel shape (k×k, 1×1, k×1,
  1×k) its MACs, time and MAC rate, and everything else (batch norm, ReLU, additions, pooling) together.
- **B.4** dense ResNet-20/56 training throughput: our Trainer at its device defaults vs a plain PyTorch
  loop (a Dataset of uint8 images through torchvision transforms in a DataLoader, fp32, no
  channels_last, no compile), on the same generated images and device.

B.2 (TRP's nuclear sub-gradient paths) is benchmarks/trp_subgradient.py, ELRT's step time per layer kind
benchmarks/elrt_step.py, the trainer's speed options benchmarks/train_throughput.py: speed.md links their
results beside this one's.

    PYTHONPATH=src python benchmarks/speed.py --threads 2            # CPU: a few minutes
    PYTHONPATH=src python3 benchmarks/speed.py --budget 420          # the GPU machine (benchmarks/gpu/README.md)

- **B.3, deployed** (``--sections deploy``, CPU only): each compact model as `lr.deploy` leaves it for this
  CPU at each batch size (a factorized conv kept only where it times faster than its dense form) beside
  the model as trained, both with BatchNorm folded.

Writes benchmarks/results/speed_<section>_<device>[_<tag>].md (section: train, inference, deploy, throughput; a run of
some sections leaves the others' files alone), rewritten after every B.3 column (so a run stopped by its
budget or its call's limit keeps what it measured; with $OUT set a copy goes there), and refreshes the
index benchmarks/results/speed.md. ``--budget`` is checked before every section, model and
column, and before each compilation of B.3's compiled column.
"""

from __future__ import annotations

import argparse
import copy
import os
import statistics
import sys
import tempfile
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from lrtrain import export, models
from lrtrain.config import load_recipe, resolve
from lrtrain.data import make_sample
from lrtrain.deployment import deploy, layout_of
from lrtrain.fold import fold_batchnorm
from lrtrain.methods import create_method
from lrtrain.metrics import count, latency
from lrtrain.provenance import commit, cpu_name, today
from lrtrain.train import Trainer
from lrtrain.devices import device_name, resolve_device
from lrtrain.train.trainer import auto_option, compile_mode

import reproduce
from bench_common import device_slug, raise_recompile_limit, sync, write_result
from train_throughput import make_data, time_steps

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
CIFAR_TRAIN = 50_000
TRP_R56 = "cifar10_resnet56_trp_channel.yaml"

B1 = [  # (label, recipe, overrides): ResNet-56, the recipes' own settings unless said
    ("dense", "cifar10_resnet56_dense.yaml", ()),
    ("TRP channel, λ after each projection (recipe)", TRP_R56, ()),
    ("TRP channel, the same, projection overlapped with the next step", TRP_R56, ("method.overlap=true",)),
    ("TRP channel, λ every step (batched SVD)", TRP_R56, ("method.subgradient=svd",)),
    ("TRP channel, λ every step (Newton–Schulz)", TRP_R56, ("method.subgradient=newton_schulz",)),
    ("TRP spatial, λ after each projection", TRP_R56, ("method.scheme=spatial",)),
    ("LRPET (goal 0.54)", "cifar10_resnet56_lrpet.yaml", ()),
    ("ELRT tucker2", "cifar10_resnet56_elrt_tucker2.yaml", ()),
    ("ELRT channel", "cifar10_resnet56_elrt_channel.yaml", ()),
]
# ResNet-56's TRP spatial row is its ramp run (at its recipe's 2.31x): it has no 0.9-energy spatial run.
B3_RUNS = ("svd_finetune", "trp_channel_nuclear", "trp_spatial_nuclear", "lrpet", "elrt_tucker2", "elrt_channel",
           "resnet56_trp_spatial_ramp")
# TRP's 0.9-energy ranks come out of training; untrained, its compact model is cut at the published speedup.
TRP_SPEEDUP = {"resnet20_trp_channel_nuclear": 2.17, "resnet20_trp_spatial_nuclear": 2.84,
               "resnet56_trp_channel_nuclear": 2.31}
# The image-folder models (no reproduction run: fresh weights) at their recipes' targets, the ELRT formats at
# LRPET's ResNet-50 FLOPs (2.16x, 46 %) for comparison.
R50 = ("model.name=resnet50", "method.input_size=[1,3,224,224]", "method.rank=flops:0.46")
FOLDER_B3 = {
    "resnet18": [("LRPET", "imagenet_resnet18_lrpet.yaml", ())],
    "resnet50": [("TRP channel + nuclear", "imagenet_resnet50_trp_channel.yaml", ("model.weights=null",)),
                 ("LRPET", "imagenet_resnet50_lrpet.yaml", ()),
                 ("ELRT tucker2", "cifar10_resnet56_elrt_tucker2.yaml", R50),
                 ("ELRT channel", "cifar10_resnet56_elrt_channel.yaml", R50)],
}


class Report:
    """The results file, rewritten after every section (B.3: every column) so that a stopped run keeps what
    it measured."""

    def __init__(self, path: Path, header: list[str], deadline: float | None):
        self.path, self.sections, self.deadline = path, [header], deadline

    def over_budget(self) -> bool:
        return self.deadline is not None and time.monotonic() > self.deadline

    def add(self, lines: list[str]) -> None:
        self.sections.append(lines)
        self._write(lines)

    def update(self, lines: list[str]) -> None:
        """Replace the last section with a fuller one."""
        self.sections[-1] = lines
        self._write(lines)

    def _write(self, lines: list[str]) -> None:
        write_result(self.path, "\n\n".join("\n".join(s) for s in self.sections) + "\n")
        print("\n".join(lines), flush=True)


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header), *("| " + " | ".join(r) + " |" for r in rows)]


def _timed(fn, device: torch.device) -> float:
    sync(device)
    start = time.perf_counter()
    fn()
    sync(device)
    return time.perf_counter() - start


# -- B.1 ----------------------------------------------------------------------------------------------

def _trainer(recipe: str, sets: tuple[str, ...], device: torch.device, batch: int, tensors, compile_: str,
             run_dir: str, mode: str = "default") -> Trainer:
    cfg = load_recipe(reproduce.RECIPES / recipe, [*sets, f"train.device={device}", "train.progress=false",
                                                   f"data.batch_size={batch}", f"train.compile_mode={mode}"])
    if compile_ != "auto":
        cfg["train"]["compile"] = compile_ == "on"
    cfg["out_dir"] = run_dir
    channels_last = auto_option("channels_last", cfg["train"]["channels_last"], device)
    data = make_data(tensors, batch, batch, channels_last, device)
    return Trainer(cfg, data=data)


def train_steps(args, device: torch.device, report: Report) -> None:
    """B.1. Each trainer is compiled (CUDA graphs recorded) in untimed steps before the first round, and
    only while the budget lasts; the table is rewritten after every round, so a call cut off keeps it."""
    steps = -(-args.steps // 5) * 5  # whole TRP periods
    lrpet_period = CIFAR_TRAIN // args.batch
    tensors = make_sample(args.batch * (args.warmup + steps), 64, image_size=32, num_classes=10, seed=0)
    trainers = {}
    # LRPET's own period would be the generated set's tiny epoch: it is timed apart, at CIFAR-10's.
    apart = {label for label, recipe, _ in B1 if "lrpet" in recipe}
    built: list[str] = []  # written after each build: a call cut off while compiling still says how far it got

    def building() -> list[str]:
        return [f"## B.1 Training step vs dense (ResNet-56, batch {args.batch})", "",
                f"Building the trainers (compile {args.compile}, mode {args.compile_mode}; build and "
                f"{args.warmup + 3} untimed steps each): {', '.join(built) or 'none yet'}. No step timed yet."]

    report.add(building())
    for label, recipe, sets in B1:
        if report.over_budget():
            break
        started = time.perf_counter()
        extra = ("method.period=1000000000",) if label in apart else ()
        trainers[label] = _trainer(recipe, (*sets, *extra), device, args.batch, tensors, args.compile,
                                   args.scratch, args.compile_mode)
        time_steps(trainers[label], 0, args.warmup + 3)  # compilation and graph recording, untimed
        built.append(f"{label} {time.perf_counter() - started:.0f} s")
        report.update(building())
    macs = {label: count(trainer.model).flops for label, trainer in trainers.items()}  # once, not per table
    left_out = [label for label, _, _ in B1 if label not in trainers]
    rates: dict[str, list[float]] = {label: [] for label in trainers}
    projections: dict[str, float] = {}

    def section() -> list[str]:
        rows, dense_ms = [], None
        for label, trainer in trainers.items():
            ms = 1000 * args.batch / statistics.median(rates[label])
            projection = projections.get(label)
            every = (lrpet_period if label in apart else trainer.method.period) if projection is not None else None
            if label in apart and projection is not None:
                ms += projection / every
            dense_ms = dense_ms or ms
            rows.append([label, f"{macs[label] / 1e6:.1f}", f"{ms:.1f}", f"{ms / dense_ms:.2f}x",
                         "—" if projection is None else f"{projection:.1f}", "—" if every is None else str(every)])
        cut = (f" The budget ran out before {', '.join(left_out)} was built: not measured." if left_out else "")
        return [f"## B.1 Training step vs dense (ResNet-56, batch {args.batch})", "",
                f"Mean step time over {steps} steps (after {args.warmup} warm-up), median of {len(rates['dense'])} "
                f"interleaved rounds, through `Trainer.train_step` at the recipes' settings on {device_name(device)} "
                f"(compile {args.compile}, mode {args.compile_mode}"
                f"{'; compiled before the first round' if args.compile != 'off' else ''}). The TRP "
                f"windows hold their projections; LRPET's step adds its projection (timed alone) / {lrpet_period}. "
                f"MMACs: the model being trained (ELRT trains factorized).{cut}", "",
                *_table(["method", "trained MMACs", "step ms", "vs dense", "projection ms (alone)", "every (steps)"],
                        rows)]

    for r in range(args.rounds):
        if r and report.over_budget():
            break
        for label, trainer in trainers.items():
            rates[label].append(time_steps(trainer, steps, args.warmup))
        report.update(section())
    for label, trainer in trainers.items():
        if hasattr(trainer.method, "project") and not report.over_budget():
            times = [_timed(trainer.method.project, device) for _ in range(args.rounds + 1)]
            trainer.method.rank_log.clear()
            projections[label] = 1000 * statistics.median(times[1:])
    report.update(section())


# -- B.3 ----------------------------------------------------------------------------------------------

def compact_models(model_name: str, runs_root: Path) -> list[tuple[str, nn.Module, str]]:
    """(label, compact model, where its ranks come from) for the reproduce runs of `model_name` in B3_RUNS,
    or for an image-folder model the recipes of FOLDER_B3."""
    if model_name in FOLDER_B3:
        return [(label, _finalized(model_name, load_recipe(reproduce.RECIPES / recipe, sets)),
                 "fresh weights, the recipe's ranks") for label, recipe, sets in FOLDER_B3[model_name]]
    out = []
    for run in reproduce.RUNS:
        listed = {run.name, run.name.removeprefix(model_name + "_")} & set(B3_RUNS)
        if not run.name.startswith(model_name + "_") or not listed:
            continue
        path = runs_root / run.name / "compact.pt"
        if path.exists():
            out.append((run.label, export.load(path), "trained run"))
            continue
        cfg = load_recipe(reproduce.RECIPES / run.recipe, reproduce.overrides(run, [], 1.0))
        source = "fresh weights, the recipe's ranks"
        if run.name in TRP_SPEEDUP:
            cfg["method"]["final"] = f"flops:{1 / TRP_SPEEDUP[run.name]:.4f}"
            source = f"fresh weights, cut at the paper's {TRP_SPEEDUP[run.name]}x"
        out.append((run.label, _finalized(model_name, cfg), source))
    return out


def _finalized(model_name: str, cfg: dict) -> nn.Module:
    """The compact model `cfg`'s method makes of a freshly initialized `model_name` (ranks from its targets)."""
    params = {k: v for k, v in cfg["method"].items() if k != "name"}
    torch.manual_seed(0)
    method = create_method(cfg["method"]["name"], models.create(model_name), **params)
    method.setup(CIFAR_TRAIN // 128, CIFAR_TRAIN // 128 * cfg["train"]["epochs"])
    return method.finalize().eval()


def _size(model_name: str, batch: int = 1) -> tuple[int, int, int, int]:
    return (batch, *models.default_input_size(model_name)[1:])


@contextmanager
def pinned(threads: int):
    """``threads`` torch threads on as many of this process's cores, for the block."""
    cores = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    if cores:
        os.sched_setaffinity(0, cores[:threads])
    try:
        yield
    finally:
        torch.set_num_threads(before)
        if cores:
            os.sched_setaffinity(0, cores)


def cpu_latencies(nets: dict[str, nn.Module], size: tuple[int, ...], args) -> dict[str, float]:
    times: dict[str, list[float]] = {label: [] for label in nets}
    with pinned(args.threads):
        for _ in range(args.rounds):
            for label, net in nets.items():
                times[label].append(latency(net, size, warmup=2, iters=args.iters))
    return {label: statistics.median(t) for label, t in times.items()}


def gpu_latencies(nets: dict[str, nn.Module], size: tuple[int, ...], device: torch.device, args, compiled: bool,
                  report: Report) -> dict[str, float]:
    """Seconds per forward pass on `size` (batch ``args.gpu_batch``) in bf16, channels_last (a mean over a
    loop); the nets not yet prepared when the report's budget runs out are left out (a compilation takes a
    while)."""
    x = torch.randn(size, device=device, dtype=torch.bfloat16).to(memory_format=torch.channels_last)
    torch.backends.cudnn.benchmark = True  # as in training, whether or not a Trainer ran in this process first
    ready = {}
    with torch.no_grad():
        for label, net in nets.items():
            if report.over_budget():
                break
            net = copy.deepcopy(net).to(device, torch.bfloat16, memory_format=torch.channels_last).eval()
            ready[label] = torch.compile(net) if compiled else net
            for _ in range(3):  # compilation, cudnn autotuning
                ready[label](x)
        times: dict[str, list[float]] = {label: [] for label in ready}
        for _ in range(args.rounds):
            for label, net in ready.items():
                times[label].append(_timed(lambda: [net(x) for _ in range(args.iters)], device) / args.iters)
    return {label: statistics.median(t) for label, t in times.items()}


def _kernel(shape: list[int]) -> str:
    return f"{shape[2]}×{shape[3]}"


def _rate(macs: float, ms: float) -> str:
    """GMAC/s; a dash where the profile gave no time (no kernel timing from the device's tracer)."""
    return f"{macs / ms / 1e6:.3g}" if ms > 0 else "—"


@dataclass
class Breakdown:
    """Where a forward pass spends its time, from a profile: MACs and ms per conv kernel shape, the rest."""

    conv: dict[str, tuple[float, float]]  # kernel shape -> (MACs over the batch, ms)
    other_ms: float

    def rows(self) -> list[list[str]]:
        rows = [[f"conv {k}", f"{macs / 1e6:.0f}", f"{ms:.2f}", _rate(macs, ms)]
                for k, (macs, ms) in sorted(self.conv.items(), key=lambda kv: -kv[1][1])]
        return rows + [["everything else", "—", f"{self.other_ms:.2f}", "—"]]

    def versus(self, dense: "Breakdown") -> str:
        """One line: how far the convs' time follows their MACs, and what the rest costs, against dense."""
        macs, ms = (sum(v[i] for v in self.conv.values()) for i in (0, 1))
        dense_macs, dense_ms = (sum(v[i] for v in dense.conv.values()) for i in (0, 1))
        rates = ", ".join(f"{k} at {_rate(m, t)}" for k, (m, t) in self.conv.items())
        dense_rates = ", ".join(f"{k} at {_rate(m, t)}" for k, (m, t) in dense.conv.items())
        share = f"{ms / dense_ms:.2f}" if dense_ms > 0 else "—"
        return (f"Convs: {macs / dense_macs:.2f} of dense's MACs in {share} of its time (GMAC/s: "
                f"{rates}; dense {dense_rates}). Everything else: {self.other_ms:.2f} ms (dense "
                f"{dense.other_ms:.2f} ms).")


def profiled_total_us(events, cuda: bool) -> float:
    """The time of a profile's `events` (`key_averages()`), in µs: on CUDA the device's, where each kernel
    is an event of its own and also counts in the self time of the op that launched it, so the kernels'
    events alone hold it once (as torch's own table sums it); else the CPU's self times."""
    from torch.autograd import DeviceType

    if cuda:
        return sum(e.self_device_time_total for e in events if e.device_type == DeviceType.CUDA)
    return sum(e.self_cpu_time_total for e in events)


def breakdown(net: nn.Module, size: tuple[int, ...], device: torch.device, dtype: torch.dtype) -> Breakdown:
    from torch.profiler import ProfilerActivity, profile

    cuda = device.type == "cuda"
    layout = torch.channels_last if cuda else torch.contiguous_format  # as the GPU column it explains ran
    net = copy.deepcopy(net).to(device, dtype, memory_format=layout).eval()
    macs: dict[str, int] = {}
    convs = {name: m for name, m in net.named_modules() if isinstance(m, nn.Conv2d)}
    for name, layer in count(net, (1, *size[1:])).layers.items():
        if name in convs:
            key = _kernel([0, 0, *convs[name].kernel_size])
            macs[key] = macs.get(key, 0) + layer.flops * size[0]
    x = torch.randn(size, device=device, dtype=dtype).to(memory_format=layout)
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    reps = 10
    with torch.no_grad():
        net(x)
        sync(device)
        with profile(activities=activities, record_shapes=True) as prof:
            for _ in range(reps):
                net(x)
            sync(device)
    events = prof.key_averages(group_by_input_shape=True)
    total_us = profiled_total_us(events, cuda)
    conv_us: dict[str, float] = {}
    for e in events:
        if e.key == "aten::conv2d" and e.input_shapes and len(e.input_shapes[1]) == 4:
            key = _kernel(e.input_shapes[1])
        elif e.key in ("aten::bmm", "aten::baddbmm"):  # a PointwiseConv2d on NCHW input: one matrix product
            key = "1×1"
        else:
            continue
        conv_us[key] = conv_us.get(key, 0.0) + (e.device_time_total if cuda else e.cpu_time_total)
    conv = {k: (macs.get(k, 0), us / reps / 1000) for k, us in conv_us.items()}
    return Breakdown(conv, (total_us - sum(conv_us.values())) / reps / 1000)


def inference(args, device: torch.device, report: Report) -> None:
    for i, model_name in enumerate(args.models):
        if report.over_budget():
            report.add([f"(B.3 of {', '.join(args.models[i:])} skipped: the {args.budget:.0f} s budget was spent)"])
            return
        dense, one = models.create(model_name).eval(), _size(model_name)
        dense_macs = count(dense, one).flops
        compacts = compact_models(model_name, args.runs_root)
        nets = {"dense": dense, **{label: net for label, net, _ in compacts}}
        if args.fold_bn:  # the inference form, for dense and compact alike
            nets = {label: fold_batchnorm(net, one) for label, net in nets.items()}
        sources = {"dense": "—", **{label: src for label, _, src in compacts}}
        macs = {label: count(net, one).flops for label, net in nets.items()}
        measures = [(f"CPU b{batch}", lambda b=batch: cpu_latencies(nets, _size(model_name, b), args))
                    for batch in args.cpu_batches]
        if device.type == "cuda":
            measures += [(f"GPU b{args.gpu_batch} bf16 {'compiled' if compiled else 'eager'}",
                          lambda c=compiled: gpu_latencies(nets, _size(model_name, args.gpu_batch), device, args, c,
                                                           report)) for compiled in (False, True)]
        columns: dict[str, dict[str, float]] = {}

        def table() -> list[str]:
            header = ["method", "ranks from", "MMACs", "FLOPs speedup", *(f"{c} ms (speedup)" for c in columns)]
            rows = []
            for label, net in nets.items():
                cells = [label, sources[label], f"{macs[label] / 1e6:.1f}", f"{dense_macs / macs[label]:.2f}x"]
                cells += [f"{1000 * t[label]:.2f} ({t['dense'] / t[label]:.2f}x)" if label in t else "—"
                          for t in columns.values()]
                rows.append(cells)
            cut = (f" The {args.budget:.0f} s budget ran out during this model: what is missing (a column, a "
                   "profile, a cell marked —) was not measured.") if report.over_budget() else ""
            return [f"## B.3 Inference latency: {model_name} at {'×'.join(map(str, one[2:]))}, compact vs dense", "",
                    f"CPU: {cpu_name()}, {args.threads} thread(s) pinned to as many cores, fp32, median of "
                    f"{args.rounds} interleaved rounds of the median of {args.iters} forward passes. GPU: mean of "
                    f"{args.iters} forward passes in a loop, median of {args.rounds} rounds, bf16 weights and "
                    f"inputs, channels_last. BatchNorm "
                    f"{'folded into the convs (lrtrain.fold_batchnorm) in every model' if args.fold_bn else 'not folded'}."
                    f"{cut}", "", *_table(header, rows)]

        # Written after every column: a call cut off by its limit keeps the columns measured.
        report.add(table())
        for name, measure in measures:
            if report.over_budget():
                break
            times = measure()
            if times:
                columns[name] = times
            report.update(table())
        # Where the time goes, for the models that fall short of their FLOPs speedup by more than 20 % on the
        # CPU at the largest batch (batch 1 is dominated by per-layer overheads any model has).
        batch = max(args.cpu_batches)
        cpu = columns.get(f"CPU b{batch}", {})
        short = [label for label in cpu if label != "dense" and cpu["dense"] / cpu[label] < 0.8 * dense_macs / macs[label]]
        places = [("CPU", f"batch {batch}", torch.device("cpu"), torch.float32, _size(model_name, batch))]
        if device.type == "cuda":
            places.append(("GPU", f"batch {args.gpu_batch} bf16 eager", device, torch.bfloat16,
                           _size(model_name, args.gpu_batch)))
        profiles = []
        for where, what, dev, dtype, size in places if short else []:
            if report.over_budget():
                break
            dense_parts = breakdown(nets["dense"], size, dev, dtype)  # folded as the others are
            profiles += ["", f"### {model_name}, {where} {what}: where the time goes (profiler)", "",
                         f"dense: {dense_parts.other_ms + sum(v[1] for v in dense_parts.conv.values()):.2f} ms", "",
                         *_table(["part", "MMACs (batch)", "ms", "GMAC/s"], dense_parts.rows())]
            for label in short:
                parts = breakdown(nets[label], size, dev, dtype)
                profiles += ["", f"{label}: {parts.versus(dense_parts)}", "",
                             *_table(["part", "MMACs (batch)", "ms", "GMAC/s"], parts.rows())]
            report.update(table() + profiles)


# -- B.3, deployed ------------------------------------------------------------------------------------

def deployed(args, device: torch.device, report: Report) -> None:
    """Each compact model as measured (BN folded) and as `lr.deploy` leaves it for this CPU at each batch
    size: its factorized convs kept only where they time faster than their dense form."""
    if device.type != "cpu":
        print("section deploy skipped: it measures CPU latency (run it with --device cpu)", flush=True)
        return
    for i, model_name in enumerate(args.models):
        if report.over_budget():
            report.add([f"(deploy of {', '.join(args.models[i:])} skipped: the {args.budget:.0f} s budget was spent)"])
            return
        one = _size(model_name)
        dense = fold_batchnorm(models.create(model_name).eval(), one)
        dense_macs = count(dense, one).flops
        rows = []
        for batch in args.cpu_batches:
            nets, kept = {"dense": dense}, {}
            size = _size(model_name, batch)
            with pinned(args.threads):
                nets["dense, deployed"], _ = deploy(dense, size, layout="auto")  # its faster layout
                for label, net, _ in compact_models(model_name, args.runs_root):
                    nets[label] = fold_batchnorm(net, one)
                    nets[f"{label}, deployed"], choices = deploy(net, size, layout="auto")
                    kept[f"{label}, deployed"] = f"{sum(c.factorized for c in choices)}/{len(choices)}"
            times = cpu_latencies(nets, size, args)
            rows += [[f"b{batch}", label, kept.get(label, "—"), layout_of(net), f"{count(net, one).flops / 1e6:.1f}",
                      f"{dense_macs / count(net, one).flops:.2f}x", f"{1000 * times[label]:.2f}",
                      f"{times['dense'] / times[label]:.2f}x"] for label, net in nets.items()]
        report.add([f"## B.3 Deployed for this CPU: {model_name} at {'×'.join(map(str, one[2:]))}", "",
                    f"CPU: {cpu_name()}, {args.threads} thread(s) pinned, fp32, BatchNorm folded everywhere; "
                    f"median of {args.rounds} interleaved rounds of the median of {args.iters} forward passes. "
                    "\"deployed\": `lr.deploy(..., layout=\"auto\")` at that batch size, each factorized conv kept "
                    "only where it timed faster than its dense form, in NCHW (contiguous) or channels-last, "
                    "whichever ran the whole model faster (same outputs; the convs put back dense cost their "
                    "dense MACs). Speedups are against the dense model in NCHW.", "",
                    *_table(["batch", "model", "factorized convs kept", "layout", "MMACs", "FLOPs speedup",
                             "CPU ms", "speedup"], rows)])


# -- B.4 ----------------------------------------------------------------------------------------------

class _Images(torch.utils.data.Dataset):
    """uint8 images through torchvision transforms, one PIL image at a time, as a plain CIFAR loop does."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, transform):
        self.images = images.permute(0, 2, 3, 1).contiguous().numpy()
        self.labels = labels.tolist()
        self.transform = transform

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i):
        from PIL import Image

        return self.transform(Image.fromarray(self.images[i])), self.labels[i]


def plain_loop(model_name: str, tensors, device: torch.device, args) -> float:
    """Images/s of a plain PyTorch loop: DataLoader + torchvision transforms, fp32, SGD."""
    import torchvision.transforms as T

    from lrtrain.data.cifar import channel_stats

    images, labels = tensors[0], tensors[1]
    mean, std = channel_stats(images)
    transform = T.Compose([T.RandomCrop(32, padding=4), T.RandomHorizontalFlip(), T.ToTensor(),
                           T.Normalize((mean / 255).tolist(), (std / 255).tolist())])
    loader = torch.utils.data.DataLoader(_Images(images, labels, transform), batch_size=args.batch, shuffle=True,
                                         num_workers=args.workers, pin_memory=device.type == "cuda",
                                         drop_last=True)
    torch.manual_seed(0)
    model = models.create(model_name).to(device).train()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4)
    batches = iter(loader)

    def step():
        x, y = next(batches)
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        loss = F.cross_entropy(model(x), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    for _ in range(args.warmup):
        step()
    return args.batch * args.steps / _timed(lambda: [step() for _ in range(args.steps)], device)


def throughput(args, device: torch.device, report: Report) -> None:
    tensors = make_sample(args.batch * (args.warmup + args.steps), 64, image_size=32, num_classes=10, seed=0)
    rows = []
    for model_name in args.models:
        if report.over_budget():
            break
        cfg = resolve({"out_dir": args.scratch, "model": {"name": model_name}, "data": {"batch_size": args.batch},
                       "train": {"device": str(device), "progress": False}})
        channels_last = auto_option("channels_last", cfg["train"]["channels_last"], device)
        data = make_data(tensors, args.batch, args.batch, channels_last, device)
        torch.manual_seed(0)
        trainer = Trainer(cfg, data=data)
        ours, plain = [], []
        for _ in range(args.rounds):
            ours.append(time_steps(trainer, args.steps, args.warmup))
            plain.append(plain_loop(model_name, tensors, device, args))
        o, p = statistics.median(ours), statistics.median(plain)
        rows.append([model_name, f"{o:.0f}", f"{p:.0f}", f"{o / p:.2f}x"])
    mode = compile_mode(resolve({})["train"]["compile_mode"], device, distributed=False) or "default"
    settings = (f"channels_last, bf16 autocast, torch.compile in its {mode} mode; cudnn.benchmark, which it "
                "sets, is then on for the plain loop too" if device.type == "cuda" else "fp32, no compile")
    report.add([f"## B.4 Dense training throughput: our trainer vs a plain PyTorch loop (batch {args.batch})", "",
                f"Ours: `Trainer.train_step` at its {device.type} defaults ({settings}), images resident on the "
                f"device, augmentation there. Plain: a Dataset of uint8 images → PIL → RandomCrop(32, 4), "
                f"RandomHorizontalFlip, ToTensor, Normalize in a DataLoader ({args.workers} workers), fp32, "
                f"SGD. {args.warmup} warm-up + {args.steps} timed steps, median of {args.rounds} interleaved "
                "rounds, the same generated images.", "",
                *_table(["model", "ours img/s", "plain img/s", "ours / plain"], rows)])


# -- files ----------------------------------------------------------------------------------------------

def write_index() -> None:
    """benchmarks/results/speed.md: every speed result file, this script's and the related benchmarks'."""
    groups = [("B.1 training step vs dense (benchmarks/speed.py)", "speed_train_*.md"),
              ("B.3 compact-model latency vs dense (benchmarks/speed.py)", "speed_inference_*.md"),
              ("B.3 compact models deployed for the CPU, lr.deploy (benchmarks/speed.py)", "speed_deploy_*.md"),
              ("B.4 trainer vs a plain PyTorch loop (benchmarks/speed.py)", "speed_throughput_*.md"),
              ("TRP projection paths (benchmarks/trp_projection.py)", "trp_projection_*.md"),
              ("B.2 TRP's nuclear sub-gradient paths (benchmarks/trp_subgradient.py)", "trp_subgradient_*.md"),
              ("ELRT step time per layer kind (benchmarks/elrt_step.py)", "elrt_step_*.md"),
              ("Trainer speed options (benchmarks/train_throughput.py)", "train_throughput_*.md"),
              ("Training under CUDA graphs vs the default compile mode, weights compared "
               "(benchmarks/compile_modes.py)", "compile_modes_*.md"),
              ("Low-rank convs in NCHW vs channels-last, BatchNorm folding (benchmarks/conv_layouts.py)",
               "conv_layouts_*.md"),
              ("Ranks in multiples of the channel block (benchmarks/rank_multiples.py)", "rank_multiples_*.md"),
              ("ELRT initializations compared (benchmarks/elrt_init.py)", "elrt_init_*.md"),
              ("TRP's ranks under the energy rule, ours and the official code's (benchmarks/trp_rank_collapse.py)",
               "trp_rank_collapse*.md"),
              ("One projection beside the official code's, on the same weights", "*_vs_official.md")]
    lines = ["# Speed results", "", "Ratios measured side by side within one run; one file per device. The "
             "measurements of the methods' behaviour that explain them follow.", ""]
    for title, pattern in groups:
        files = sorted(RESULTS.glob(pattern))
        lines += [f"- {title}: " + (", ".join(f"[{f.name}]({f.name})" for f in files) or "none yet")]
    (RESULTS / "speed.md").write_text("\n".join(lines) + "\n")


SECTIONS = {
    "train": (train_steps, "B.1 Speed: each method's training step vs dense (issue 8)"),
    "inference": (inference, "B.3 Speed: compact-model latency vs dense (issue 8)"),
    "deploy": (deployed, "B.3 Speed: compact models deployed for this CPU (issue 8)"),
    "throughput": (throughput, "B.4 Speed: our trainer vs a plain PyTorch loop (issue 8)"),
}


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sections", nargs="+", default=["train", "inference", "throughput"],
                   choices=["train", "inference", "deploy", "throughput"],
                   help="B.1, B.3, B.3 with lr.deploy for this CPU, B.4")
    p.add_argument("--device", default="auto")
    p.add_argument("--threads", type=int, default=2, help="CPU threads (B.3 pins them; all sections use them)")
    p.add_argument("--batch", type=int, default=128, help="training batch (B.1, B.4)")
    p.add_argument("--steps", type=int, default=10, help="timed steps per round (B.1 rounds up to TRP periods)")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--iters", type=int, default=20, help="forward passes per latency measurement (B.3)")
    p.add_argument("--models", nargs="+", default=["resnet20", "resnet56"], help="B.3 and B.4 models")
    p.add_argument("--cpu-batches", type=int, nargs="+", default=[1, 32])
    p.add_argument("--no-fold-bn", dest="fold_bn", action="store_false",
                   help="B.3 measures the models as trained, not with their BatchNorms folded into the convs")
    p.add_argument("--gpu-batch", type=int, default=256)
    p.add_argument("--compile", choices=["auto", "on", "off"], default="auto", help="torch.compile in B.1")
    p.add_argument("--compile-mode", default="default",
                   help="torch.compile mode in B.1, e.g. reduce-overhead (CUDA graphs: what the GPU runs may use)")
    p.add_argument("--workers", type=int, help="DataLoader workers of B.4's plain loop (default: 8 on CUDA, 0 on CPU)")
    p.add_argument("--runs-root", type=Path, default=HERE / "checkpoints" / "reproduce",
                   help="reproduce.py's run folders: a RUN/compact.pt there is B.3's trained model for that run "
                        "(default: %(default)s; fresh weights for the runs without one)")
    p.add_argument("--budget", type=float, help="seconds; the sections, B.3 models, columns and compilations past it are skipped")
    p.add_argument("--commit", help="the commit measured (the GPU machine has no .git)")
    p.add_argument("--note", default="", help="a line for the header, e.g. the machine's load")
    p.add_argument("--index-only", action="store_true", help="only refresh benchmarks/results/speed.md")
    p.add_argument("--tag", help="ends the results files' names (speed_SECTION_DEVICE_TAG.md), so that a run of "
                                 "other models (e.g. imagenet) leaves the default ones alone")
    args = p.parse_args(argv)
    if args.index_only:
        write_index()
        return
    device = resolve_device(args.device)
    torch.set_num_threads(args.threads)
    if args.workers is None:
        args.workers = 8 if device.type == "cuda" else 0
    raise_recompile_limit()
    started = time.monotonic()
    deadline = None if args.budget is None else started + args.budget
    header = [
        f"- device: {device_name(device)}" + (f"; CPU {cpu_name()}" if device.type == "cpu" else ""),
        f"- command: `python {' '.join(sys.argv)}`",
        f"- commit: {args.commit or commit()}",
        f"- date: {today()}",
        f"- torch {torch.__version__}" + (f"; {args.note}" if args.note else "")]
    written = []
    # The trainers' run folder: they write ranks.csv there when a method projects.
    with tempfile.TemporaryDirectory(prefix="lrtrain-speed-") as args.scratch:
        for name in args.sections:
            # one file per section, so that a run of some sections leaves the others' results alone
            run, title = SECTIONS[name]
            tag = f"_{args.tag}" if args.tag else ""
            report = Report(RESULTS / f"speed_{name}_{device_slug(device)}{tag}.md", [f"# {title}", "", *header],
                            deadline)
            if report.over_budget():
                print(f"section {name} skipped: the {args.budget:.0f} s budget was spent", flush=True)
                continue
            run(args, device, report)
            if len(report.sections) > 1:  # a section may find nothing to measure here
                written.append(report.path.name)
    write_index()
    print(f"wrote {', '.join(written)} and speed.md in {RESULTS} in {time.monotonic() - started:.0f} s")


if __name__ == "__main__":
    main()
