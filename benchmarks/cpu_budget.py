"""Every method at one FLOPs budget on real CIFAR-10 ResNet-20, trained on the CPU with one schedule.

Each low-rank run targets a compact model of at most 45 % of the dense FLOPs (a 2.22x speedup, past the
2.17x of TRP's ResNet-20 channel row). Methods whose own rank rule does not aim at a FLOPs figure get the
global FlopsBudget policy in its place: TRP projects with FlopsBudget(0.45) instead of the 0.9-energy
rule, LRPET with FlopsBudget(0.45) instead of one goal ratio for every layer. A last TRP run reaches the
budget over the first half of training (`ramp`), the others impose it from the first projection.

The runs go one after another and resume from their checkpoints, so the table can be built over several
sessions:

    python benchmarks/cpu_budget.py                      # train what is unfinished, then tabulate and plot
    python benchmarks/cpu_budget.py --time-limit 3000    # stop (resumably) after about 50 minutes
    python benchmarks/cpu_budget.py --report-only        # only rebuild the table and the plot

Run folders live in benchmarks/checkpoints/cpu_budget/ (small: commit an unfinished one so the next
session resumes it; delete them when the table is complete). Results: benchmarks/results/cifar10_cpu_budget.*
"""

from __future__ import annotations

import argparse
import copy
from pathlib import Path

import torch

from lrtrain import benchmark

HERE = Path(__file__).resolve().parent
BUDGET = 0.45

# One schedule for every run: 20 epochs, SGD momentum 0.9, cosine with a one-epoch warm-up, batch 128.
COMMON = {
    "seed": 0,
    "model": {"name": "resnet20"},
    "data": {"name": "cifar10", "batch_size": 128, "eval_batch_size": 1000},
    "optim": {"lr": 0.1, "momentum": 0.9, "nesterov": True, "weight_decay": 5e-4},
    "schedule": {"name": "cosine", "warmup_epochs": 1},
    # bf16 autocast is off: this CPU has no bf16 matrix units (119 img/s against 232 fp32). The runs were
    # trained in NCHW, as a first measurement under load had it faster for dense (232 img/s, 212 NHWC); the
    # ELRT runs switch channels_last on (CHANNELS_LAST below). Measured again on a quiet machine
    # (benchmarks/results/train_throughput_cpu.md, 2026-11-28), channels-last trains every method 1.15-1.3x
    # faster, and it is now the trainer's CPU default; these finished runs keep the layout they had.
    "train": {"epochs": 20, "device": "cpu", "amp": False, "channels_last": False, "compile": False,
              "keep_checkpoints": 1, "progress": False,
              # Projections leave BatchNorm statistics behind the weights (LRPET projects at the end of an
              # epoch): every compact model, dense included, gets them re-estimated on 50 batches.
              "bn_recalibrate": 50},
}

METHODS = [  # (run folder, label, method parameters)
    ("dense", "dense", {"name": "dense"}),
    ("svd_finetune", "SVD + fine-tune", {"name": "svd_finetune", "rank": f"flops:{BUDGET}", "scheme": "channel",
                                         "dense_fraction": 0.5}),
    ("trp_channel", "TRP channel + nuclear", {"name": "trp", "scheme": "channel", "rank": f"flops:{BUDGET}",
                                              "period": 20, "nuclear": 3e-4, "final": f"flops:{BUDGET}"}),
    ("trp_spatial", "TRP spatial + nuclear", {"name": "trp", "scheme": "spatial", "rank": f"flops:{BUDGET}",
                                              "period": 20, "nuclear": 3e-4, "final": f"flops:{BUDGET}"}),
    ("lrpet", "LRPET (ET + BN rect.)", {"name": "lrpet", "rank": f"flops:{BUDGET}", "period": "epoch"}),
    ("elrt_tucker2", "ELRT tucker2 + orth", {"name": "elrt", "rank": f"flops:{BUDGET}", "scheme": "tucker2"}),
    ("elrt_tucker2_noorth", "ELRT tucker2, no orth", {"name": "elrt", "rank": f"flops:{BUDGET}", "scheme": "tucker2",
                                                     "orth": 0.0}),
    # The budget reached over the first half of training rather than imposed at the first projection,
    # where it fixes the ranks on near-random weights (TRP's `ramp`).
    ("trp_channel_ramp", "TRP channel + nuclear, ramp", {"name": "trp", "scheme": "channel", "rank": f"flops:{BUDGET}",
                                                         "ramp": 0.5, "period": 20, "nuclear": 3e-4,
                                                         "final": f"flops:{BUDGET}"}),
]

# Memory format changes how a run is executed, not what it computes. The three-conv Tucker-2 layers
# train 1.65x faster channels-last on this CPU (ResNet-20, batch 128, 2 threads: 2.43 s vs 4.02 s a step,
# benchmarks/elrt_step.py, measured while the dense run shared the cores), while the dense-weight runs keep NCHW (232 vs 212 img/s for dense).
CHANNELS_LAST = {"elrt_tucker2", "elrt_tucker2_noorth"}


def specs(common: dict | None = None) -> list[benchmark.RunSpec]:
    base = common or COMMON
    runs = []
    for name, label, params in METHODS:
        cfg = {**copy.deepcopy(base), "method": params}
        if name in CHANNELS_LAST:
            cfg["train"]["channels_last"] = True
        runs.append(benchmark.RunSpec(name, label, cfg))
    return runs


def report(runs: list[benchmark.RunSpec], root: Path, out_stem: Path, threads: int) -> list[dict]:
    # the command that trains every run (resumably; --time-limit and --only only split the work)
    # the CPU speedups of an earlier table are kept while their run is unchanged: a second timing on a
    # shared CPU moves them by ±15 % and would rewrite the table for nothing
    rows = benchmark.collect(runs, root, f"python benchmarks/cpu_budget.py --threads {threads}", threads=threads,
                             measured=benchmark.earlier_rows(out_stem.with_suffix(".csv")))
    notes = (f"ResNet-20 on the real CIFAR-10 test set (10,000 images), trained on the CPU "
             f"({benchmark.cpu_name()}, {threads} threads) with one schedule for every run: "
             f"{COMMON['train']['epochs']} epochs, SGD lr {COMMON['optim']['lr']} (Nesterov momentum 0.9, wd "
             f"{COMMON['optim']['weight_decay']}), cosine with a 1-epoch warm-up, batch 128, fp32 (bf16 "
             f"autocast is 2x slower on this CPU), NCHW (channels-last for the ELRT runs: 1.65x faster for "
             f"their Tucker-2 layers), seed 0. Low-rank runs target at most {BUDGET:.0%} of the dense FLOPs "
             f"(>= {1 / BUDGET:.2f}x). cpu_speedup_b32: measured forward-pass speedup of the compact model over "
             f"the dense one at batch 32; {benchmark.DEPLOYED_NOTE}")
    benchmark.write_table(rows, out_stem, "CIFAR-10 ResNet-20: every method at one FLOPs budget (CPU)", notes)
    if rows:
        benchmark.plot(rows, out_stem.with_suffix(".png"), f"ResNet-20, CIFAR-10, {COMMON['train']['epochs']} "
                       "epochs, equal budget")
    return rows


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--root", type=Path, default=HERE / "checkpoints" / "cpu_budget", help="run folders")
    p.add_argument("--out", type=Path, default=HERE / "results" / "cifar10_cpu_budget", help="results stem")
    p.add_argument("--time-limit", type=float, help="seconds; stop resumably after the epoch that passes it")
    p.add_argument("--threads", type=int, default=torch.get_num_threads(), help="torch CPU threads")
    p.add_argument("--report-only", action="store_true", help="only tabulate and plot finished runs")
    p.add_argument("--only", nargs="*", help="run folders to train (default: all)")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    runs = specs()
    chosen = [r for r in runs if not args.only or r.name in args.only]
    if not args.report_only:
        benchmark.run_all(chosen, args.root, args.time_limit)
    for row in report(runs, args.root, args.out, args.threads):
        print(f"{row['method']:24s} top-1 {row['top1_final']:6.2f}  speedup {row['flops_speedup']:.2f}x")


if __name__ == "__main__":
    main()
