"""Run a list of trainings resumably, one after another, and tabulate and plot what they give.

Used by the accuracy benchmarks (``benchmarks/cpu_budget.py``, ``benchmarks/reproduce.py``): each run is a
resolved config with a run directory; a run whose ``summary.json`` exists is done, any other one is
resumed from its newest checkpoint, so a table can be built across many sessions. Rows carry what a
reader needs to trust a figure: device, command, commit and date.
"""

from __future__ import annotations

import csv
import itertools
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any


from . import export, models
from .config import resolve
from .metrics import latency
from .provenance import commit, cpu_name, today

ROW_FIELDS = ["run", "method", "model", "top1_final", "top1_best", "top1_before_finalize", "dense_mflops",
              "compact_mflops", "flops_speedup", "dense_params_m", "compact_params_m", "cpu_speedup_b32",
              "epochs", "wall_s", "device", "command", "commit", "date"]


@dataclass
class RunSpec:
    """One training of a benchmark: a name (its folder under the benchmark's root) and its recipe."""

    name: str
    label: str  # how the table and the plot call it
    recipe: dict[str, Any]


def run_all(specs: list[RunSpec], root: Path, time_limit: float | None = None) -> list[str]:
    """Train every unfinished run of `specs` under `root`, in order; returns the names finished now.

    Stops (each run with a checkpoint to resume from) once `time_limit` seconds have passed.
    """
    from .train import Trainer

    started = time.perf_counter()
    done = []
    for spec in specs:
        run_dir = root / spec.name
        if (run_dir / "summary.json").exists():
            continue
        left = None if time_limit is None else time_limit - (time.perf_counter() - started)
        if left is not None and left <= 0:
            break
        cfg = resolve({**spec.recipe, "name": spec.name, "out_dir": str(run_dir)}, source=f"benchmark {spec.name}")
        summary = Trainer(cfg).fit(resume=True, time_limit=left)
        if not summary.get("finished", True):
            break
        done.append(spec.name)
    return done


def _compact_speedup(run_dir: Path, model_name: str, num_classes: int, batch: int, threads: int,
                     iters: int) -> float | None:
    """Measured CPU forward-pass speedup of the run's compact model over the dense model."""
    path = run_dir / "compact.pt"
    if not path.exists():
        return None
    compact = export.load(path)
    dense = models.create(model_name, num_classes=num_classes).eval()
    size = (batch, *models.default_input_size(model_name)[1:])
    warmup = max(1, iters // 4)
    return (latency(dense, size, warmup, iters, threads=threads)
            / latency(compact, size, warmup, iters, threads=threads))


def collect(specs: list[RunSpec], root: Path, command: str, threads: int = 2,
            latency_iters: int = 20) -> list[dict[str, Any]]:
    """One row per finished run (its summary.json), with measured CPU inference speedup at batch 32."""
    rows = []
    for spec in specs:
        path = root / spec.name / "summary.json"
        if not path.exists():
            continue
        s = json.loads(path.read_text())
        dense, compact = s["dense"], s["compact"]
        model = spec.recipe["model"]["name"]
        rows.append({
            "run": spec.name, "method": spec.label, "model": model,
            "top1_final": s["final_acc"], "top1_best": s["best_acc"], "top1_before_finalize": s.get("pre_finalize_acc"),
            "dense_mflops": dense["flops"] / 1e6, "compact_mflops": compact["flops"] / 1e6,
            "flops_speedup": dense["flops"] / compact["flops"],
            "dense_params_m": dense["params"] / 1e6, "compact_params_m": compact["params"] / 1e6,
            "cpu_speedup_b32": _compact_speedup(root / spec.name, model, s.get("num_classes", 10), 32, threads,
                                                latency_iters),
            "epochs": s["epochs"], "wall_s": s["wall_time_s"], "device": s["device"],
            "command": command, "commit": s.get("commit") or commit(), "date": s.get("date") or today(),
        })
    return rows


def _fmt(v: Any) -> str:
    if v is None:
        return "—"
    if isinstance(v, float):
        return f"{v:.2f}"
    return str(v)


def write_table(rows: list[dict[str, Any]], stem: Path, title: str, notes: str = "") -> None:
    """`stem`.csv with every field and `stem`.md with the fields a reader compares."""
    stem.parent.mkdir(parents=True, exist_ok=True)
    with open(stem.with_suffix(".csv"), "w", newline="") as f:
        writer = csv.DictWriter(f, ROW_FIELDS)
        writer.writeheader()
        writer.writerows(rows)
    shown = ["method", "top1_final", "top1_best", "compact_mflops", "flops_speedup", "compact_params_m",
             "cpu_speedup_b32", "epochs", "wall_s"]
    lines = [f"# {title}", "", notes.strip(), "",
             "| " + " | ".join(shown) + " |", "|" + "---|" * len(shown)]
    lines += ["| " + " | ".join(_fmt(r[k]) for k in shown) + " |" for r in rows]
    if rows:
        first = rows[0]
        lines += ["", f"Device: {first['device']}. Commit: {first['commit']}. Date: {first['date']}.",
                  f"Command: `{first['command']}`"]
    stem.with_suffix(".md").write_text("\n".join(lines) + "\n")


def plot(rows: list[dict[str, Any]], path: Path, title: str, dense_label: str | None = "dense",
         paper_points: list[dict[str, Any]] | None = None) -> None:
    """Top-1 against FLOPs speedup, one marker per method; the dense run as a horizontal line.

    With ``dense_label=None`` every row is a marker (a dense run sits at speedup 1).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    markers = itertools.cycle("osD^v<>pPX*h")  # colours still tell apart rows beyond twelve
    for r in rows:
        if r["method"] == dense_label:
            ax.axhline(r["top1_final"], color="grey", linestyle="--", label=f"{dense_label} ({r['top1_final']:.2f}%)")
        else:
            ax.scatter(r["flops_speedup"], r["top1_final"], marker=next(markers), s=60, label=r["method"])
    for p in paper_points or []:
        ax.scatter(p["speedup"], p["top1"], marker="x", color="black", s=50)
        ax.annotate(p["label"], (p["speedup"], p["top1"]), fontsize=7, xytext=(4, 2), textcoords="offset points")
    ax.set_xlabel("FLOPs speedup (dense / compact)")
    ax.set_ylabel("top-1 (%)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="best")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def command_line() -> str:
    return " ".join([Path(sys.executable).name, *sys.argv])


__all__ = ["RunSpec", "collect", "command_line", "commit", "cpu_name", "plot", "run_all", "write_table"]
