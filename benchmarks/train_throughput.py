"""Training throughput (images/s) of dense CIFAR ResNets with each speed option on and off, side by side.

    python benchmarks/train_throughput.py [--models resnet20 resnet56] [--steps 50] [--repeats 3]
        [--compile-modes default]

For every model it builds one `Trainer` per setting: the device's defaults (on a GPU channels_last,
bf16 autocast and torch.compile are on, compiled in ``reduce-overhead`` mode, which replays CUDA graphs and
so takes away the per-kernel launch cost that a CIFAR ResNet's small convolutions are bound by; on a CPU
channels_last alone), each option flipped alone, and all of them flipped, and with ``--compile-modes`` the
defaults compiled in other torch.compile modes (``default``: torch's own, without CUDA graphs); with
``--methods``, for each method named. The settings are then timed in interleaved rounds (so slow drifts of the
machine hit all of them alike) through `Trainer.train_step`, the step real training runs, on 32×32 generated
images held on the device exactly like CIFAR-10, and the median round is reported. Evaluation is timed at
batch 128 and at the default large batch. Results go to benchmarks/results/train_throughput_<device>.md
(and, with $OUT set, a copy to $OUT: the GPU machine keeps nothing else; pass ``--commit SHA`` there when it
has no .git).
"""

from __future__ import annotations

import argparse
import datetime
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

from lrtrain import models
from lrtrain.config import resolve
from lrtrain.provenance import commit
from lrtrain.data import Data, DeviceLoader, make_sample
from lrtrain.data.cifar import channel_stats
from lrtrain.train import Trainer
from lrtrain.train.trainer import auto_option
from lrtrain.devices import device_name, resolve_device

from bench_common import device_slug, raise_recompile_limit, sync, write_result

ROOT = Path(__file__).resolve().parents[1]
OPTIONS = {"channels_last": "channels_last", "amp": "bf16 autocast", "compile": "torch.compile"}
# --methods: each trained as its CIFAR recipes do (TRP's projection every 5 steps with the sub-gradient after
# it; LRPET projects once an epoch, so not within these steps; ELRT at 2.2x fewer FLOPs)
METHODS = {"dense": {"name": "dense"},
           "trp": {"name": "trp", "period": 5, "nuclear": 3e-4, "subgradient": "projection"},
           "lrpet": {"name": "lrpet", "goal": 0.5},
           "elrt_tucker2": {"name": "elrt", "rank": "flops:0.45", "scheme": "tucker2"},
           "elrt_channel": {"name": "elrt", "rank": "flops:0.45", "scheme": "channel"}}


def settings(device: torch.device, options: list[str], modes: list[str] = ()) -> list[tuple[str, dict]]:
    default = {o: auto_option(o, "auto", device) for o in OPTIONS}
    out = [("default", default)]
    # other torch.compile modes, the rest at the device's defaults (reduce-overhead: CUDA graphs)
    out += [(f"torch.compile mode {mode}", {**default, "compile": True, "compile_mode": mode}) for mode in modes]
    for o in options:
        out.append((f"{OPTIONS[o]} {'off' if default[o] else 'on'}", {**default, o: not default[o]}))
    if len(options) > 1:
        label = " + ".join(f"{OPTIONS[o]} {'off' if default[o] else 'on'}" for o in options)
        out.append((label, {o: (not default[o]) if o in options else default[o] for o in OPTIONS}))
    return out


def make_data(tensors, batch_size: int, eval_batch_size: int, channels_last: bool, device) -> Data:
    images, labels, test_images, test_labels = tensors
    mean, std = channel_stats(images)
    common = dict(mean=mean, std=std, channels_last=channels_last)
    train = DeviceLoader(images.to(device), labels, batch_size, shuffle=True, augment=True, **common)
    test = DeviceLoader(test_images.to(device), test_labels, eval_batch_size, shuffle=False, augment=False,
                        drop_last=False, **common)
    return Data(train, test, 10, (1, 3, 32, 32), "generated 32×32")


def time_steps(trainer: Trainer, steps: int, warmup: int) -> float:
    batches = trainer.data.train.batches(epoch=0)
    for _ in range(warmup):
        trainer.train_step(*next(batches))
    sync(trainer.device)
    start = time.perf_counter()
    images = 0
    for _ in range(steps):
        x, y = next(batches)
        trainer.train_step(x, y)
        images += len(y)
    sync(trainer.device)
    return images / (time.perf_counter() - start)


def time_eval(trainer: Trainer, count: int) -> float:
    trainer.evaluate()  # warm-up (cudnn autotuning of the batch shape)
    start = time.perf_counter()
    trainer.evaluate()
    return count / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", nargs="+", default=["resnet20", "resnet56"])
    parser.add_argument("--methods", nargs="+", default=["dense"], choices=list(METHODS),
                        help="methods trained, each with every setting (default: dense)")
    parser.add_argument("--options", nargs="+", default=list(OPTIONS), choices=list(OPTIONS),
                        help="options to flip (torch.compile on a CPU compiles for minutes)")
    parser.add_argument("--compile-modes", nargs="+", default=[],
                        choices=["reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs"],
                        help="also time torch.compile in these modes (reduce-overhead: CUDA graphs; GPU only)")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--eval-batch-sizes", type=int, nargs="+", default=[128, 1024])
    parser.add_argument("--steps", type=int, default=50, help="timed steps per round")
    parser.add_argument("--warmup", type=int, default=10, help="untimed steps first (compilation, autotuning)")
    parser.add_argument("--repeats", type=int, default=3, help="interleaved rounds; the median is reported")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    parser.add_argument("--commit", help="the commit measured (default: git's; 'unknown' without a checkout)")
    parser.add_argument("--budget", type=float, help="seconds: no model is started past it (the results of the "
                        "models done are written after each one)")
    args = parser.parse_args()
    deadline = None if args.budget is None else time.monotonic() + args.budget

    device = resolve_device(args.device)
    raise_recompile_limit()
    per_round = args.batch_size * (args.warmup + args.steps)
    test_count = max(args.eval_batch_sizes) * 4
    tensors = make_sample(per_round, test_count, image_size=32, num_classes=10, seed=0)
    run_dir = tempfile.mkdtemp(prefix="lrtrain-bench-")
    train_rows, eval_rows = [], []
    for name, method in [(n, m) for n in args.models for m in args.methods]:
        if deadline is not None and time.monotonic() > deadline:
            print(f"budget spent: {name} {method} and the runs after it not measured", flush=True)
            break
        trainers = {}
        for label, flags in settings(device, args.options, args.compile_modes):
            cfg = resolve({"out_dir": run_dir, "model": {"name": name}, "data": {"batch_size": args.batch_size},
                           "method": METHODS[method], "train": {"device": str(device), "progress": False, **flags}})
            data = make_data(tensors, args.batch_size, max(args.eval_batch_sizes), flags["channels_last"], device)
            torch.manual_seed(0)
            trainers[label] = (flags, Trainer(cfg, model=models.create(name), data=data))
        rates: dict[str, list[float]] = {label: [] for label in trainers}
        for _ in range(args.repeats):
            for label, (_, trainer) in trainers.items():
                rates[label].append(time_steps(trainer, args.steps, args.warmup))
        default_rate = statistics.median(rates["default"])
        for label, (flags, _) in trainers.items():
            rate = statistics.median(rates[label])
            train_rows.append((name, method, label, flags, rate, rate / default_rate))
            print(f"{name:9s} {method:12s} {label:44s} {rate:9.0f} img/s  ({rate / default_rate:.2f}x default)",
                  flush=True)
        default_trainer = trainers["default"][1]
        for size in args.eval_batch_sizes:
            default_trainer.data.test = make_data(tensors, args.batch_size, size, default_trainer.channels_last,
                                                  device).test
            rate = time_eval(default_trainer, test_count)
            eval_rows.append((name, method, size, rate))
            print(f"{name:9s} {method:12s} eval batch {size:<33d} {rate:9.0f} img/s", flush=True)
        del trainers
        write_report(args, device, train_rows, eval_rows)  # after each model: a call cut off keeps what it had


def write_report(args, device, train_rows, eval_rows) -> None:
    dev = device_name(device)
    lines = [
        "# Training throughput: CIFAR ResNets, each speed option on and off",
        "",
        f"- device: {dev}",
        f"- command: `python {' '.join(sys.argv)}`",
        f"- commit: {args.commit or commit()}",
        f"- date: {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M UTC}",
        f"- torch {torch.__version__}; batch {args.batch_size}, 32×32 images resident on the device, random "
        f"crop + flip on the device; {args.warmup} warm-up + {args.steps} timed steps per round, "
        f"median of {args.repeats} interleaved rounds",
        "",
        "| model | method | setting | channels_last | bf16 | compile | train img/s | vs default |",
        "|---|---|---|---|---|---|---:|---:|",
    ]
    for name, method, label, flags, rate, ratio in train_rows:
        marks = ["on" if flags[o] else "off" for o in OPTIONS]
        lines.append(f"| {name} | {method} | {label} | {' | '.join(marks)} | {rate:.0f} | {ratio:.2f}x |")
    lines += ["", "Evaluation through `Trainer.evaluate`, which runs the model uncompiled (as training's test passes "
              "do), at the default setting's layout and bf16:", "",
              "| model | method | eval batch | eval img/s |", "|---|---|---:|---:|"]
    lines += [f"| {name} | {method} | {size} | {rate:.0f} |" for name, method, size, rate in eval_rows]
    path = args.out / f"train_throughput_{device_slug(device)}.md"
    write_result(path, "\n".join(lines) + "\n")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
