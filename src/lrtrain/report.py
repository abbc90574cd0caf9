"""Plots and tables from run directories: what ``lrtrain report`` writes.

`write_report` reads what the `Trainer` left in each run directory (metrics.csv, ranks.csv,
summary.json, checkpoints/, compact.pt) and writes PNG figures and a README.md linking them:

- ``accuracy.png``: train and test top-1 per epoch, one colour per run;
- ``accuracy_vs_flops.png``: final top-1 against FLOPs speedup, one point per finished run, with
  published points when given (`lrtrain.benchmark.plot`);
- per run, ``<run>_ranks.png``: the rank of every layer during training, as a fraction of its maximum
  rank (layers × time);
- per run, ``<run>_spectra.png``: singular values (channel matrix form, out × in·k²) of a few layers in
  the oldest checkpoint kept and in the compact model;
- per run, a Markdown table of the compact model's layers: rank, MACs and parameters.

A file missing from a run directory drops what needs it, with a note in the README.
"""

from __future__ import annotations

import argparse
import ast
import csv
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import yaml
from matplotlib import rcParams
from matplotlib.figure import Figure
from matplotlib.ticker import FormatStrFormatter, MaxNLocator
from torch import Tensor, nn

from . import export, models
from .benchmark import plot as plot_accuracy_vs_flops
from .config import read_mapping
from .files import read_summary
from .inspection import _fmt_rank
from .layers import LowRankConv2d, LowRankLinear
from .metrics import count
from .train import rank_log
from .train.checkpoint import list_checkpoints, load_checkpoint

# A directory holding none of these is not a run directory.
_RUN_ENTRIES = ("config.yaml", "metrics.csv", "ranks.csv", "summary.json", "compact.pt", "checkpoints")
_WEIGHT_LAYERS = (LowRankConv2d, LowRankLinear, nn.Conv2d, nn.Linear)
_DEFAULT_SPECTRA = 3


@dataclass
class _Run:
    path: Path
    name: str  # unique within the report: also the stem of the run's image files
    summary: dict[str, Any] | None
    method: str
    planned_epochs: int | None = None  # config.yaml's train.epochs
    notes: list[str] = field(default_factory=list)


def _open_run(path: Path, taken: set[str]) -> _Run:
    if not path.is_dir() or not any((path / entry).exists() for entry in _RUN_ENTRIES):
        raise FileNotFoundError(f"not a run directory: {path} (expected some of {', '.join(_RUN_ENTRIES)})")
    # Image names go into Markdown links: keep them to characters that need no escaping.
    base = re.sub(r"[^A-Za-z0-9_.-]+", "-", path.resolve().name) or "run"
    name, n = base, 1
    while name in taken:
        n += 1
        name = f"{base}-{n}"
    taken.add(name)
    summary_path = path / "summary.json"
    summary = read_summary(summary_path) if summary_path.exists() else None
    config = read_mapping(path / "config.yaml") if (path / "config.yaml").exists() else {}
    method = summary["method"] if summary is not None else config.get("method", {}).get("name", "?")
    run = _Run(path, name, summary, method, config.get("train", {}).get("epochs"))
    if summary is None:
        run.notes.append("no summary.json (unfinished run?): left out of the accuracy-vs-FLOPs plot")
    return run


def _read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def _complete_rank_rows(path: Path) -> list[dict[str, str]] | None:
    """The whole, readable rows of a ranks.csv; None without it."""
    rows = rank_log.read(path)
    if rows is None:
        return None
    readable = []
    for row in rows:
        try:
            _rank_fraction(row["rank"], row["max_rank"])
            readable.append(row)
        except (ValueError, TypeError, SyntaxError, ZeroDivisionError):
            continue
    return readable


def _colours() -> list[str]:
    return rcParams["axes.prop_cycle"].by_key()["color"]


def _save(fig: Figure, path: Path) -> None:
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def _zoom(series: list[list[float]]) -> tuple[float, float]:
    """Top-1 limits that show where the runs differ: past each run's first tenth (its warm-up climb)."""
    late = [v for values in series for v in values[len(values) // 10:]] or [0.0, 100.0]
    return max(0.0, min(late) - 2.0), min(100.0, max(late) + 1.0)


def _lr_drops(rows: list[dict[str, str]]) -> list[int]:
    """Epochs after which the learning rate fell at least fivefold (a step schedule's milestones)."""
    lrs = [(int(r["epoch"]), float(r["lr"])) for r in rows if r.get("lr")]
    return [e for (e, a), (_, b) in zip(lrs, lrs[1:]) if b > 0 and a / b >= 5]


def plot_accuracy(curves: dict[str, list[dict[str, str]]], path: Path, colours: dict[str, str] | None = None,
                  planned: dict[str, int] | None = None) -> None:
    """Test (left) and train (right) top-1 against epoch; ``curves`` maps a run name to its metrics.csv rows.

    ``colours`` fixes each run's colour (the report's other plots use the same); a run whose ``planned``
    epochs are more than it has logged ends in a cross, its label says how far it got; dotted lines mark
    the epochs after which a run's learning rate fell (step schedules)."""
    fig = Figure(figsize=(11, 4.5))
    test_ax, train_ax = fig.subplots(1, 2)
    default = _colours()
    tests, trains = [], []
    for i, (name, rows) in enumerate(curves.items()):
        colour = (colours or {}).get(name, default[i % len(default)])
        epochs = [int(r["epoch"]) for r in rows]
        last, total = (epochs[-1] if epochs else 0), (planned or {}).get(name)
        label = name if not total or last >= total else f"{name} (unfinished: {last}/{total})"
        # Test accuracy is empty in epochs the run did not evaluate (train.eval_every > 1).
        tested = [r for r in rows if r["test_acc"]]
        test = [float(r["test_acc"]) for r in tested]
        style = "-o" if len(rows) <= 20 else "-"  # a short run's points shown (one epoch: no line to see)
        test_ax.plot([int(r["epoch"]) for r in tested], test, style, color=colour, label=label, markersize=3)
        train = [float(r["train_acc"]) for r in rows]
        train_ax.plot(epochs, train, style, color=colour, label=label, markersize=3)
        if label != name and tested:
            test_ax.plot(int(tested[-1]["epoch"]), test[-1], "x", color=colour, markersize=8)
        for epoch in _lr_drops(rows):
            test_ax.axvline(epoch, color=colour, linestyle=":", linewidth=0.8, alpha=0.6)
        tests.append(test)
        trains.append(train)
    for ax, series, what in ((test_ax, tests, "test"), (train_ax, trains, "train")):
        ax.set_ylim(*_zoom(series))
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlabel("epoch")
        ax.set_ylabel(f"{what} top-1 (%)")
        ax.grid(alpha=0.3)
    test_ax.set_title("Test accuracy (dotted: learning-rate drops)")
    train_ax.set_title("Train accuracy")
    test_ax.legend(fontsize=7, loc="lower right")
    _save(fig, path)


def _rank_fraction(rank: str, max_rank: str) -> float:
    """rank / max_rank of a ranks.csv row; a tucker2 pair such as "[9, 9]" (or "(9, 9)", as older SVD +
    fine-tune runs wrote it) gives the mean over its modes."""
    r, top = ast.literal_eval(rank), ast.literal_eval(max_rank)
    if isinstance(r, (list, tuple)):
        return sum(a / b for a, b in zip(r, top)) / len(r)
    return r / top


def rank_grid(rows: list[dict[str, str]]) -> tuple[list[str], list[int], Tensor]:
    """ranks.csv rows as a layers × steps grid of rank / max rank, one column from step 0 and one per step
    where a rank changed, each value holding until the layer's next row; 1 (dense) before its first."""
    rows = rank_log.changes(sorted(rows, key=lambda r: int(r["step"])))  # every projection's rows: the same
    layers = list(dict.fromkeys(r["layer"] for r in rows))
    steps = sorted({0} | {int(r["step"]) for r in rows})
    row_of, col_of = {n: i for i, n in enumerate(layers)}, {s: j for j, s in enumerate(steps)}
    grid = torch.ones(len(layers), len(steps))
    for r in rows:
        grid[row_of[r["layer"]], col_of[int(r["step"])]:] = _rank_fraction(r["rank"], r["max_rank"])
    return layers, steps, grid


def plot_rank_heatmap(rows: list[dict[str, str]], path: Path, title: str, steps_per_epoch: int | None = None,
                      last_step: int | None = None) -> None:
    """A heat map of ranks.csv rows: one line per layer, time across (in epochs with ``steps_per_epoch``,
    else steps), colour = rank / max rank (a tucker2 layer's: the mean over its two modes), from step 0. A
    layer's rank holds from its row's step to its next row (`lrtrain.train.rank_log`), the last ones to
    ``last_step``; a layer is dense (1) before its first row."""
    layers, steps, grid = rank_grid(rows)
    end = last_step if last_step is not None and last_step > steps[-1] else steps[-1] + max(1, steps[-1] // 50)
    scale = steps_per_epoch or 1
    edges = torch.tensor([*steps, end], dtype=torch.float64) / scale
    fig = Figure(figsize=(7.5, max(3.0, 1.6 + 0.2 * len(layers))))
    ax = fig.subplots()
    image = ax.pcolormesh(edges.numpy(), torch.arange(len(layers) + 1).numpy() - 0.5, grid.numpy(),
                          cmap="viridis", vmin=0, vmax=1)
    fig.colorbar(image, ax=ax, label="rank / max rank")
    ax.invert_yaxis()  # the first layer on top
    every = math.ceil(len(layers) / 60)  # at most 60 readable layer names
    ax.set_yticks(range(0, len(layers), every), layers[::every], fontsize=7)
    ax.set_xlabel("epoch" if steps_per_epoch else "step")
    ax.set_title(title)
    _save(fig, path)


def singular_values(weight: torch.Tensor) -> torch.Tensor:
    """Singular values of ``weight`` as an out × (in·k·k) matrix, without the numerically zero ones.

    A rank-r weight has exact zeros beyond r, which round to tiny values that a log scale would stretch.
    """
    s = torch.linalg.svdvals(weight.detach().float().reshape(weight.shape[0], -1))
    return s[s > s[0] * max(weight.shape[0], weight[0].numel()) * torch.finfo(s.dtype).eps]


def plot_spectra(spectra: dict[str, dict[str, torch.Tensor]], path: Path, title: str) -> None:
    """One panel per layer, three to a row, one log-scale curve per source (``{layer: {label: values}}``)."""
    cols = min(len(spectra), 3)
    rows = math.ceil(len(spectra) / cols)
    fig = Figure(figsize=(4.2 * cols, 0.4 + 3.2 * rows))
    axes = fig.subplots(rows, cols, squeeze=False).ravel()
    for ax in axes[len(spectra):]:
        ax.set_visible(False)
    for ax, (layer, curves) in zip(axes, spectra.items()):
        for label, s in curves.items():
            ax.semilogy(range(1, len(s) + 1), s.numpy(), label=label)
        ax.set_title(layer, fontsize=9)
        low, high = ax.get_ylim()
        if high < 10 * low:  # within a decade matplotlib labels the minor ticks as 3.8×10⁰: plain numbers
            ax.yaxis.set_minor_formatter(FormatStrFormatter("%.3g"))
            ax.yaxis.set_major_formatter(FormatStrFormatter("%.3g"))
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlabel("index")
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=7)
    for ax in axes[::cols]:
        ax.set_ylabel("singular value")
    fig.suptitle(title)
    _save(fig, path)


def _weight_layers(model: nn.Module) -> dict[str, nn.Module]:
    """Conv and linear layers by name, a low-rank layer as one (not its factors), in model order."""
    found: dict[str, nn.Module] = {}
    for name, module in model.named_modules():
        if isinstance(module, _WEIGHT_LAYERS) and not any(name.startswith(f + ".") for f in found):
            found[name] = module
    return found


def _max_rank(module: nn.Module):
    if isinstance(module, LowRankConv2d):
        return module.scheme.max_rank(module.geometry)
    return min(module.in_features, module.out_features)


def _load_compact(run: _Run) -> tuple[nn.Module, dict[str, Any]] | None:
    """The run's compact model and its description, or None (with a note saying why)."""
    path = run.path / "compact.pt"
    if not path.exists():
        run.notes.append("no compact.pt: no rank table, no spectra after training")
        return None
    try:
        arch = load_checkpoint(path).get("arch", {})
        if "layers" not in arch:
            run.notes.append(f"compact.pt of model {arch.get('model', '?')!r} has no layer description (not a "
                             "registry model): no rank table, no spectra after training")
            return None
        return export.load(path), arch
    except ValueError as err:
        run.notes.append(f"compact.pt cannot be read or rebuilt: {err}")
        return None


def rank_table(model: nn.Module, arch: dict[str, Any]) -> str:
    """Markdown table of `model`'s conv and linear layers: rank, MACs (compact and dense) and parameters."""
    size = tuple(arch.get("input_size") or models.default_input_size(arch["model"]))
    small = count(model, size)
    dense = count(models.create(arch["model"], num_classes=arch["num_classes"]), size)
    lines = ["| layer | type | rank / max | MACs | dense MACs | params |", "|---|---|---|---:|---:|---:|"]
    for name, m in _weight_layers(model).items():
        low = isinstance(m, (LowRankConv2d, LowRankLinear))
        kind = type(m).__name__ + (f" ({m.scheme.name})" if isinstance(m, LowRankConv2d) else "")
        rank = f"{_fmt_rank(m.rank)} / {_fmt_rank(_max_rank(m))}" if low else "dense"
        macs = sum(c.flops for leaf, c in small.layers.items() if leaf == name or leaf.startswith(name + "."))
        before = dense.layers[name].flops if name in dense.layers else None
        params = sum(p.numel() for p in m.parameters())
        lines.append(f"| {name} | {kind} | {rank} | {macs:,} | {'—' if before is None else f'{before:,}'} "
                     f"| {params:,} |")
    lines.append(f"| **total** | | | {small.flops:,} | {dense.flops:,} | {small.params:,} |")
    return "\n".join(lines)


def _spread(names: list[str], k: int) -> list[str]:
    """k names evenly spread from the first to the last."""
    if len(names) <= k:
        return names
    return [names[round(i * (len(names) - 1) / (k - 1))] for i in range(k)]


def _spectra(run: _Run, compact: nn.Module | None, layers: list[str] | None) -> tuple[dict, str]:
    """``({layer: {label: singular values}}, where "before" comes from)`` for the run's chosen layers."""
    before: dict[str, torch.Tensor] = {}
    source = ""
    kept = list_checkpoints(run.path / "checkpoints")
    state = None
    if kept:
        try:  # damaged, or deleted by the running training since it was listed
            state = load_checkpoint(kept[0])
        except ValueError as err:
            run.notes.append(f"{' '.join(str(err).split())[:200]}: no spectra before training ends")
    else:
        run.notes.append("no checkpoint: no spectra before training ends")
    if state is not None:
        before = {k.removesuffix(".weight"): v for k, v in state["model"].items()
                  if k.endswith(".weight") and v.ndim >= 2}
        source = f"step {state['step']}"
    after = {n: m.weight for n, m in _weight_layers(compact).items()} if compact is not None else {}
    if layers is None:
        low = [n for n, m in (compact.named_modules() if compact is not None else ())
               if isinstance(m, (LowRankConv2d, LowRankLinear))]
        # The low-rank layers are the ones whose spectra changed on purpose; a dense run shows any.
        layers = _spread(low or list(after) or list(before), _DEFAULT_SPECTRA)
    spectra = {}
    for name in layers:
        curves = {}
        if name in before:  # without a compact model the checkpoint is the latest state, not a "before"
            label = f"before ({source})" if compact is not None else f"checkpoint ({source})"
            curves[label] = singular_values(before[name])
        if name in after:
            curves["after (compact)"] = singular_values(after[name])
        if not curves:
            run.notes.append(f"layer {name!r}: not in this run's checkpoint or compact model, skipped")
        elif name in after and name not in before and kept:
            run.notes.append(f"layer {name!r}: the checkpoint holds no dense weight for it (factorized while "
                             "training): compact model only")
        if curves:
            spectra[name] = curves
    return spectra, source


def load_paper_points(path: str | Path) -> list[dict[str, Any]]:
    """Published results from a YAML list of ``{label, speedup, top1}``, checked: a text label, a FLOPs
    speedup above 0, a top-1 in 0-100."""
    try:
        points = yaml.safe_load(Path(path).read_text())
    except OSError as err:  # missing, a folder, unreadable: named as the paper points it should be
        raise ValueError(f"paper points {path}: {err.strerror or err}") from None
    except yaml.YAMLError as err:
        raise ValueError(f"{path}: not valid YAML: {' '.join(str(err).split())}") from None
    if not isinstance(points, list):
        raise ValueError(f"{path}: expected a list of {{label, speedup, top1}}, got {type(points).__name__}")
    for i, p in enumerate(points):
        ok = (isinstance(p, dict) and {"label", "speedup", "top1"} <= p.keys() and isinstance(p["label"], str)
              and all(isinstance(p[k], (int, float)) and not isinstance(p[k], bool) for k in ("speedup", "top1"))
              and 0 < p["speedup"] < float("inf") and 0 <= p["top1"] <= 100)
        if not ok:
            raise ValueError(f"{path}: item {i + 1} must be {{label: text, speedup: a number above 0, top1: "
                             f"0-100}}, got {p!r}")
    return points


def _fmt(value: Any, spec: str = ".2f") -> str:
    return "—" if value is None else format(value, spec)


def _runs_table(runs: list[_Run], curves: dict[str, list[dict[str, str]]]) -> list[str]:
    """One row per run; an unfinished one shows how far it got and its latest and best test top-1."""
    lines = ["| run | method | model | epochs | final top-1 | best top-1 | speedup | MMACs | params (M) | directory |",
             "|---|---|---|---:|---:|---:|---:|---:|---:|---|"]
    for run in runs:
        s = run.summary or {}
        compact = s.get("compact", {})
        mmacs = compact["flops"] / 1e6 if compact else None
        mparams = compact["params"] / 1e6 if compact else None
        epochs, final, best = s.get("epochs", "—"), _fmt(s.get("final_acc")), _fmt(s.get("best_acc"))
        tested = [float(r["test_acc"]) for r in curves.get(run.name, []) if r["test_acc"]]
        if not s and tested:
            epochs = f"{curves[run.name][-1]['epoch']}/{run.planned_epochs or '?'} (unfinished)"
            final, best = f"{tested[-1]:.2f} (latest)", f"{max(tested):.2f}"
        speedup = f"{s['speedup']:.2f}×" if s.get("speedup") is not None else "—"
        lines.append(f"| {run.name} | {run.method} | {s.get('model', '—')} | {epochs} | {final} | {best} "
                     f"| {speedup} | {_fmt(mmacs)} | {_fmt(mparams, '.3f')} | `{run.path}` |")
    lines += ["", "Final top-1: the compact model's, after the method's final cut; best top-1: the best epoch-end "
                  "evaluation of the model as it trained, before that cut (a cut or a BatchNorm re-estimate can "
                  "make the final one higher)."]
    return lines


def write_report(run_dirs: list[str | Path], out_dir: str | Path, paper_points: str | Path | None = None,
                 layers: list[str] | None = None) -> Path:
    """Write the plots of `run_dirs` and a README.md linking them into `out_dir`; returns the README's path.

    ``paper_points``: a YAML file of published ``{label, speedup, top1}`` to show beside the runs.
    ``layers``: the layers whose singular values to plot (default: three spread across each network;
    names a run lacks are skipped with a note). Raises FileNotFoundError for a path that is not a run
    directory.
    """
    taken: set[str] = set()
    unique: dict[Path, Path] = {}
    for p in run_dirs:  # a run given twice is shown once, where it first came
        unique.setdefault(Path(p).resolve(), Path(p))
    runs = [_open_run(p, taken) for p in unique.values()]
    points = load_paper_points(paper_points) if paper_points is not None else None
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise ValueError(f"{out} is a file: the report is a folder (README.md and its plots); give another -o")
    out.mkdir(parents=True, exist_ok=True)
    curves = {}
    for run in runs:
        if (run.path / "metrics.csv").exists():
            curves[run.name] = _read_csv(run.path / "metrics.csv")
        else:
            run.notes.append("no metrics.csv: not in the accuracy plot")
    md = ["# Training report", "", *_runs_table(runs, curves), ""]
    palette = _colours()
    colours = {run.name: palette[i % len(palette)] for i, run in enumerate(runs)}  # one per run, every plot
    if curves:
        plot_accuracy(curves, out / "accuracy.png", colours, {run.name: run.planned_epochs for run in runs})
        md += ["## Accuracy during training", "", "![accuracy during training](accuracy.png)", ""]

    rows = [{"method": f"{run.name} ({run.method})", "top1_final": run.summary["final_acc"],
             "flops_speedup": run.summary["speedup"]}
            for run in runs if run.summary and run.summary.get("speedup") is not None]
    if rows or points:
        plot_accuracy_vs_flops(rows, out / "accuracy_vs_flops.png", "Top-1 vs FLOPs speedup", dense_label=None,
                               paper_points=points,
                               colours={f"{run.name} ({run.method})": colours[run.name] for run in runs})
        md += ["## Accuracy vs FLOPs", "", "![accuracy vs FLOPs speedup](accuracy_vs_flops.png)", ""]

    for run in runs:
        md += [f"## Run {run.name}", "", f"Method {run.method}, directory `{run.path}`.", ""]
        rank_rows = _complete_rank_rows(run.path / "ranks.csv")
        if rank_rows:
            image = f"{run.name}_ranks.png"
            epochs = curves.get(run.name, [])
            first = epochs[0] if epochs else None
            per_epoch = int(first["step"]) // int(first["epoch"]) if first and int(first["epoch"]) else None
            plot_rank_heatmap(rank_rows, out / image, f"{run.name}: rank during training", per_epoch,
                              int(epochs[-1]["step"]) if epochs else None)
            md += ["### Rank during training", "", f"![{run.name} rank during training]({image})", ""]
        elif rank_rows is None:
            run.notes.append("no ranks.csv (its method logs no ranks, or the run never projected): no rank heat map")
        else:
            run.notes.append("ranks.csv holds no complete row yet: no rank heat map")
        loaded = _load_compact(run)
        compact, arch = loaded if loaded else (None, None)
        spectra, source = _spectra(run, compact, layers)
        if spectra:
            image = f"{run.name}_spectra.png"
            plot_spectra(spectra, out / image, f"{run.name}: singular values")
            where = f"the oldest checkpoint kept ({source})" if source else "no checkpoint"
            after = "after: the compact model" if compact is not None else "no compact model yet"
            md += ["### Singular values", "", f"Before: {where}; {after}. Channel matrix form (out × in·k²), "
                   "log scale.", "", f"![{run.name} singular values]({image})", ""]
        if compact is not None:
            md += ["### Compact model", "", rank_table(compact, arch), ""]
        if run.notes:
            md += ["### Notes", "", *[f"- {note}" for note in run.notes], ""]
            for note in run.notes:  # on the terminal too: a mistyped --layers name should not pass unseen
                print(f"note: {run.name}: {note}")
    path = out / "README.md"
    path.write_text("\n".join(md))
    return path


def run(args: argparse.Namespace) -> int:
    """``lrtrain report``: write the report and say where it is."""
    folders = [name for name in args.layers or [] if Path(name).is_dir()]
    if folders:  # `report RUN --layers NAME RUN2`: --layers took the second run
        raise ValueError(f"--layers {folders[0]}: a folder, not a layer name (a run directory after --layers? "
                         "--layers takes every word that follows it: give the run directories before it, or "
                         "end its names with --)")
    path = write_report(args.run_dirs, args.out, args.paper_points, args.layers)
    print(f"report written to {path}")
    return 0
