"""How TRP's ranks evolve under its energy rule: ours (reproduction runs) beside the official code's.

Each projection keeps the fewest singular values that hold ``energy`` (0.9) of Σσ². A projected weight has
no energy beyond its rank, and the few SGD steps until the next projection add little, so a rank survives
only while its smallest kept σ² holds about 10 % of the layer's energy: the ranks ratchet down. This script
reads the runs' ranks.csv (every layer's rank wherever a projection changed it), tabulates the mean rank of each stage
at chosen steps, computes the compact model's FLOPs speedup at the last projection's ranks (the layers the
run's `final` decomposes), and plots the mean ranks against the step; with ``--official-log`` it adds the
official code's ranks at the same steps, from a log of lines ``STEP [r1, r2, ...]`` (its eligible convs in
module order, which for the CIFAR ResNets is ours).

    python benchmarks/trp_rank_collapse.py --official-log benchmarks/results/trp_rank_collapse_official.log

Results: benchmarks/results/trp_rank_collapse.md and .png.
"""

from __future__ import annotations

import argparse
import ast
import csv
import sys
from collections import defaultdict
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from lrtrain.config import load_recipe  # noqa: E402
from lrtrain import count, models  # noqa: E402
from lrtrain.methods import create_method  # noqa: E402
from lrtrain.provenance import commit, today  # noqa: E402
from lrtrain.train import rank_log  # noqa: E402

HERE = Path(__file__).resolve().parent
RUNS = [HERE / "checkpoints" / "reproduce" / f"resnet20_trp_{s}" for s in
        ("channel_nuclear", "channel", "spatial_nuclear", "spatial")]
STEPS = [5, 10, 20, 50, 100, 200, 300, 1950, 7800, 31200, 63960]  # 63960: the end of 164 epochs


def rank_history(run_dir: Path) -> tuple[list[str], dict[int, list[int]]]:
    """The layers in the order of their first rows and, at each step where a rank changed and at the run's
    last step (metrics.csv's), every layer's rank (a layer's rank holds until its next row:
    `lrtrain.train.rank_log`)."""
    layers, current, by_step = [], {}, {}
    for row in rank_log.read(run_dir / "ranks.csv") or []:
        if row["layer"] not in current:
            layers.append(row["layer"])
        current[row["layer"]] = int(row["rank"])
        by_step[int(row["step"])] = dict(current)
    metrics = run_dir / "metrics.csv"
    if by_step and metrics.exists():
        with open(metrics, newline="") as f:
            last = max((int(r["step"]) for r in csv.DictReader(f)), default=0)
        if last > max(by_step):
            by_step[last] = dict(current)
    return layers, {s: [r[name] for name in layers] for s, r in by_step.items() if len(r) == len(layers)}


def max_ranks(run_dir: Path) -> dict[str, int]:
    """Each layer's max rank, from the run's ranks.csv (channel and spatial schemes differ: 16 vs 48)."""
    return {row["layer"]: int(row["max_rank"]) for row in rank_log.read(run_dir / "ranks.csv") or []}


def official_history(path: Path) -> dict[int, list[int]]:
    history = {}
    for line in path.read_text().splitlines():
        step, sep, ranks = line.partition(" ")
        if step.isdigit() and ranks.startswith("["):
            history[int(step)] = list(ast.literal_eval(ranks[:ranks.index("]") + 1]))
    return history


def stage_means(layers: list[str], ranks: list[int]) -> dict[str, float]:
    stages = defaultdict(list)
    for name, r in zip(layers, ranks):
        stages[name.split(".")[0]].append(r)
    return {s: sum(v) / len(v) for s, v in stages.items()}


def stage_fractions(layers: list[str], ranks: list[int], top: dict[str, int]) -> dict[str, float]:
    """Each stage's mean of rank / max rank: one scale for schemes of different max ranks."""
    return stage_means(layers, [r / top[name] for name, r in zip(layers, ranks)])


def speedup_at(run_dir: Path, ranks: dict[str, int]) -> float:
    """Dense / compact FLOPs when the run's eligible layers are decomposed at ``ranks``."""
    cfg = load_recipe(run_dir / "config.yaml")
    model = models.create(cfg["model"]["name"])
    params = dict(cfg["method"])
    method = create_method(params.pop("name"), model, **params)
    compact = method.finalize({n: r for n, r in ranks.items() if n in method._final_names})
    return count(model).flops / count(compact).flops


def at(history: dict[int, list[int]], step: int) -> list[int] | None:
    """The ranks of the last projection at or before ``step``."""
    done = [s for s in history if s <= step]
    return history[max(done)] if done else None


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--runs", nargs="+", type=Path, default=RUNS)
    p.add_argument("--official-log", type=Path, help="the official code's ranks, lines STEP [r1, r2, ...]")
    p.add_argument("--official-label", default="official code (ResNet-20 channel, period 5, λ 3e-4, CPU)")
    p.add_argument("--official-period", type=int, default=5,
                   help="its projection period: it projects before a step, ours after, so its curve is drawn "
                        "that many steps later to line up")
    p.add_argument("--out", type=Path, default=HERE / "results" / "trp_rank_collapse")
    args = p.parse_args(argv)

    series = []  # (label, layers, history)
    top = {}  # max rank per run label and layer
    for run in args.runs:
        layers, history = rank_history(run)
        series.append((run.name, layers, history))
        top[run.name] = max_ranks(run)
    if args.official_log:
        layers = series[0][1]
        official = official_history(args.official_log)
        if any(len(r) != len(layers) for r in official.values()):
            raise SystemExit(f"{args.official_log}: a line's ranks do not match the {len(layers)} layers of "
                             f"{series[0][0]}")
        series.append((args.official_label, layers, official))
        top[args.official_label] = top[series[0][0]]

    stages = sorted({name.split(".")[0] for name in series[0][1]})
    lines = ["# TRP's ranks under the 0.9-energy rule: ours and the official code's", "",
             f"- command: `python benchmarks/trp_rank_collapse.py {' '.join(sys.argv[1:] if argv is None else argv)}`",
             f"- commit: {commit()}", f"- date: {today()}",
             "- ours: the reproduction runs' ranks.csv (benchmarks/checkpoints/reproduce, H200, bf16, full "
             "CIFAR-10, ResNet-20 official eligibility: the 18 3×3 convs but the first); they project after "
             "steps 5, 10, ..., the official code before the forward of steps 0, 5, ..., so at step s it has "
             "projected once more", "",
             "Mean rank of each stage's convs (max rank: channel 16/32/64, spatial 48/96/192) at the last "
             "projection at or before the step:", "",
             "| run | " + " | ".join(f"step {s}" for s in STEPS) + " |",
             "|---|" + "---:|" * len(STEPS)]
    for label, layers, history in series:
        cells = []
        for s in STEPS:
            ranks = at(history, s) if s <= max(history) else None
            cells.append("—" if ranks is None else
                         " / ".join(f"{m:.1f}" for m in stage_means(layers, ranks).values()))
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    lines += ["", "FLOPs speedup of the compact model at the last projection's ranks (stride-2 convs dense, as the "
              "official decomposition leaves them):", "", "| run | last step | speedup |", "|---|---:|---:|"]
    for run, (label, layers, history) in zip(args.runs, series):
        last = max(history)
        lines.append(f"| {label} | {last} | {speedup_at(run, dict(zip(layers, history[last]))):.2f}x |")
    lines.append("")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".md").write_text("\n".join(lines))

    fig, axes = plt.subplots(1, len(stages), figsize=(4 * len(stages), 3.4), sharey=True, squeeze=False)
    axes = axes[0]
    shift = f" (drawn at step + {args.official_period}: it projects before the step, ours after)"
    colours: dict[str, str] = {}  # a run with the nuclear term in the colour of the same run without it
    for ax, stage in zip(axes, stages):
        for label, layers, history in series:
            official = label == args.official_label
            steps = sorted(history)
            colour = colours.setdefault(label.removesuffix("_nuclear"), f"C{len(colours)}")
            # the nuclear runs' ranks are the others' to the step: wide and pale underneath, not hidden
            look = ({"linestyle": "--", "color": "black"} if official else
                    {"linewidth": 5, "alpha": 0.35, "zorder": 1, "color": colour} if label.endswith("_nuclear")
                    else {"color": colour})
            ax.plot([s + args.official_period if official else s for s in steps],
                    [stage_fractions(layers, history[s], top[label])[stage] for s in steps],
                    label=label + (shift if official else ""), drawstyle="steps-post", **look)
        ax.set_xscale("log")
        ax.set_title(stage)
        ax.set_xlabel("step")
    axes[0].set_ylabel("mean rank / max rank")
    fig.suptitle("TRP, 0.9-energy projection every 5 steps: ranks of ResNet-20's 3×3 convs")
    # below the panels: inside one it covered the curves of its first hundred steps
    legend = fig.legend(*axes[0].get_legend_handles_labels(), loc="lower center", ncol=2, fontsize=8,
                        bbox_to_anchor=(0.5, 0))
    fig.tight_layout(rect=(0, 0.14, 1, 1))
    fig.savefig(args.out.with_suffix(".png"), dpi=110, bbox_extra_artists=[legend])
    print("\n".join(lines))


if __name__ == "__main__":
    main()
