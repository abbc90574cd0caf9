"""Plots and tables from run directories: what ``lrtrain report`` writes.

`write_report` reads what the `Trainer` left in each run directory (metrics.csv, ranks.csv,
summary.json, checkpoints/, compact.pt) and writes PNG figures and a README.md linking them:

- ``accuracy.png``: train and test top-1 per epoch, one style per run;
- ``accuracy_vs_flops.png``: final top-1 against FLOPs speedup, one point per finished run with finite
  results, a panel per model when there are several, with published points when given
  (`lrtrain.benchmark.plot`);
- per run, ``<run>_ranks.png``: the rank of every layer during training, as a fraction of its maximum
  rank (layers × time);
- per run, ``<run>_spectra.png``: singular values (channel matrix form, out × in·k²) of a few layers in
  the oldest checkpoint kept and in the compact model;
- per run, a Markdown table of the compact model's layers: rank, MACs and parameters.

A file missing from a run directory drops what needs it, with a note in the README. A run is called by its
folder's name everywhere; its image files get an ASCII form of it.
"""

from __future__ import annotations

import argparse
import ast
import csv
import math
import re
import unicodedata
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
from .train.checkpoint import list_checkpoints, load_checkpoint, newest_step

# A directory holding none of these is not a run directory.
_RUN_ENTRIES = ("config.yaml", "metrics.csv", "ranks.csv", "summary.json", "compact.pt", "checkpoints")
_WEIGHT_LAYERS = (LowRankConv2d, LowRankLinear, nn.Conv2d, nn.Linear)
_DEFAULT_SPECTRA = 3


@dataclass
class _Run:
    path: Path
    name: str  # unique within the report, ASCII: the stem of the run's image files
    label: str  # the folder's own name (made unique): how legends, titles and tables call the run
    summary: dict[str, Any] | None
    method: str
    planned_epochs: int | None = None  # config.yaml's train.epochs
    notes: list[str] = field(default_factory=list)


def _file_stem(name: str) -> str:
    """`name` as a file stem that Markdown links need not escape: accents dropped (NFKD), any other
    character outside ``A-Za-z0-9_.-`` a dash; "run" where no letter or digit is left."""
    ascii_name = unicodedata.normalize("NFKD", name).encode("ascii", "ignore").decode()
    stem = re.sub(r"[^A-Za-z0-9_.-]+", "-", ascii_name).strip("-.")  # no leading dot: not a hidden file
    return stem if re.search(r"[A-Za-z0-9]", stem) else "run"


def _unique(base: str, taken: set[str], form: str) -> str:
    """`base`, else `form` filled with it and 2, 3, ... until one is not taken; taken now."""
    found, n = base, 1
    while found in taken:
        n += 1
        found = form.format(base, n)
    taken.add(found)
    return found


def _open_run(path: Path, names: set[str], labels: set[str]) -> _Run:
    if not path.is_dir() or not any((path / entry).exists() for entry in _RUN_ENTRIES):
        raise FileNotFoundError(f"not a run directory: {path} (expected some of {', '.join(_RUN_ENTRIES)})")
    folder = path.resolve().name
    name, label = _unique(_file_stem(folder), names, "{}-{}"), _unique(folder, labels, "{} ({})")
    summary_path = path / "summary.json"
    summary = read_summary(summary_path) if summary_path.exists() else None
    config = read_mapping(path / "config.yaml") if (path / "config.yaml").exists() else {}
    method = summary["method"] if summary is not None else config.get("method", {}).get("name", "?")
    run = _Run(path, name, label, summary, method, config.get("train", {}).get("epochs"))
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


def _styles(labels: list[str]) -> dict[str, tuple[str, str]]:
    """A (colour, line style) per run, in order: the colour cycle solid, then dashed, dotted, dash-dotted,
    so that runs past the cycle's length still differ."""
    palette, dashes = _colours(), ("-", "--", ":", "-.")
    return {label: (palette[i % len(palette)], dashes[i // len(palette) % len(dashes)])
            for i, label in enumerate(labels)}


def _save(fig: Figure, path: Path) -> None:
    fig.tight_layout()
    fig.savefig(path, dpi=120, bbox_inches="tight")  # "tight": legends and colour bars beside the axes too


def _series(rows: list[dict[str, str]], key: str) -> tuple[list[int], list[float], list[int]]:
    """A metrics.csv column: (epochs, values) where it holds a finite number, and the epochs where it holds
    something else (NaN, inf: a diverged run). An empty cell is an epoch the column was not logged."""
    epochs, values, bad = [], [], []
    for r in rows:
        if not r.get(key):
            continue
        try:
            value = float(r[key])
        except ValueError:
            value = math.nan
        if math.isfinite(value):
            epochs.append(int(r["epoch"]))
            values.append(value)
        else:
            bad.append(int(r["epoch"]))
    return epochs, values, bad


def _zoom(series: list[list[float]]) -> tuple[float, float]:
    """Top-1 limits that show where the runs differ: past each run's first tenth (its warm-up climb), and
    from each run's 5th percentile there, so that a dip of a few epochs (SVD + fine-tune's decomposition
    epoch) does not flatten the band the runs end in."""
    late = [sorted(values[len(values) // 10:]) for values in series if values]
    if not late:
        return 0.0, 100.0
    low, high = min(v[len(v) // 20] for v in late), max(v[-1] for v in late)
    return max(0.0, low - 2.0), min(100.0, high + 1.0)


def _lr_drops(rows: list[dict[str, str]]) -> list[int]:
    """Epochs after which the learning rate fell at least fivefold (a step schedule's milestones)."""
    lrs = [(int(r["epoch"]), float(r["lr"])) for r in rows if r.get("lr")]
    return [e for (e, a), (_, b) in zip(lrs, lrs[1:]) if b > 0 and a / b >= 5]


def plot_accuracy(curves: dict[str, list[dict[str, str]]], path: Path,
                  styles: dict[str, tuple[str, str]] | None = None, planned: dict[str, int] | None = None) -> None:
    """Test (left) and train (right) top-1 against epoch; ``curves`` maps a run's label to its metrics.csv
    rows (some).

    ``styles`` fixes each run's (colour, line style) (the report's other plots use the same colours); a run
    whose ``planned`` epochs are more than it has logged ends in a cross, its label says how far it got;
    dotted lines mark the epochs after which a run's learning rate fell (step schedules). A point below a
    panel's zoomed range is a caret on its bottom edge, an epoch whose top-1 is NaN or inf a red cross
    there; a panel without any value says so. The legend lies below the panels, so many runs fit."""
    styles = styles or _styles(list(curves))
    fig = Figure(figsize=(11, 4.5))
    test_ax, train_ax = fig.subplots(1, 2)
    drawn: dict[Any, list] = {test_ax: [], train_ax: []}  # per panel: (epochs, values, bad epochs, colour)
    for name, rows in curves.items():
        colour, dash = styles[name]
        last, total = int(rows[-1]["epoch"]), (planned or {}).get(name)
        label = name if not total or last >= total else f"{name} (unfinished: {last}/{total})"
        marker = "o" if len(rows) <= 20 else None  # a short run's points shown (one epoch: no line to see)
        for ax, key in ((test_ax, "test_acc"), (train_ax, "train_acc")):
            epochs, values, bad = _series(rows, key)
            ax.plot(epochs, values, linestyle=dash, marker=marker, color=colour, label=label, markersize=3)
            drawn[ax].append((epochs, values, bad, colour))
            if label != name and epochs and ax is test_ax:
                ax.plot(epochs[-1], values[-1], "x", color=colour, markersize=8)
        for epoch in _lr_drops(rows):
            test_ax.axvline(epoch, color=colour, linestyle=":", linewidth=0.8, alpha=0.6)
    for ax, what in ((test_ax, "test"), (train_ax, "train")):
        low, high = _zoom([values for _, values, _, _ in drawn[ax]])
        ax.set_ylim(low, high)
        marked = []
        for epochs, values, bad, colour in drawn[ax]:
            later = len(values) // 10  # the warm-up climb starts below the range by design: unmarked
            under = [e for e, v in zip(epochs[later:], values[later:]) if v < low]
            if under:  # off the zoomed range: at its edge, pointing down
                ax.plot(under, [low] * len(under), linestyle="none", marker=7, markersize=7, color=colour,
                        clip_on=False, label="_below the axis")
                marked.append("carets: below the axis")
            if bad:
                ax.plot(bad, [low] * len(bad), linestyle="none", marker="x", markersize=7, color="red",
                        markeredgewidth=1.5, clip_on=False, label="_not finite")
                marked.append("red x: NaN or inf")
        if not any(values for _, values, _, _ in drawn[ax]):
            ax.text(0.5, 0.5, f"no {what} evaluation logged", transform=ax.transAxes, ha="center", va="center")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlabel("epoch")
        ax.set_ylabel(f"{what} top-1 (%)")
        ax.grid(alpha=0.3)
        heading = "Test accuracy (dotted: learning-rate drops)" if ax is test_ax else "Train accuracy"
        ax.set_title(heading + "".join(f"\n{m}" for m in dict.fromkeys(marked)), fontsize=10)
    fig.legend(*train_ax.get_legend_handles_labels(), loc="upper center", bbox_to_anchor=(0.5, 0.0),
               ncol=min(3, len(curves)), fontsize=7, frameon=False)
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


def _rank_text(value: str) -> str:
    """A ranks.csv rank as the tables write it: 9, or 9x9 for a tucker2 pair."""
    value = ast.literal_eval(value)
    return _fmt_rank(tuple(value) if isinstance(value, (list, tuple)) else value)


def plot_rank_heatmap(rows: list[dict[str, str]], path: Path, title: str, steps_per_epoch: int | None = None,
                      last_step: int | None = None) -> None:
    """A heat map of ranks.csv rows: one line per layer, time across (in epochs with ``steps_per_epoch``,
    else steps), colour = rank / max rank (a tucker2 layer's: the mean over its two modes), from step 0. A
    layer's rank holds from its row's step to its next row (`lrtrain.train.rank_log`), the last ones to
    ``last_step``; a layer is dense (1) before its first row.

    Where most rank changes fall in the first 1 % of the run (TRP's collapse in its first few hundred
    steps), time is on a symlog axis: linear up to the first change, logarithmic after. Each row's final
    rank / max is written at its right while every row is labelled. The figure stops growing at 12 inches
    (a deep network's rows are labelled every k-th) and the colour bar keeps its size."""
    layers, steps, grid = rank_grid(rows)
    end = last_step if last_step is not None and last_step > steps[-1] else steps[-1] + max(1, steps[-1] // 50)
    scale = steps_per_epoch or 1
    edges = torch.tensor([*steps, end], dtype=torch.float64) / scale
    height = min(12.0, max(3.0, 1.6 + 0.2 * len(layers)))
    fig = Figure(figsize=(7.5, height))
    ax = fig.subplots()
    image = ax.pcolormesh(edges.numpy(), torch.arange(len(layers) + 1).numpy() - 0.5, grid.numpy(),
                          cmap="viridis", vmin=0, vmax=1)
    ax.invert_yaxis()  # the first layer on top
    every = math.ceil(len(layers) / ((height - 1.4) / 0.14))  # a 7-point name needs about 0.14 in
    ax.set_yticks(range(0, len(layers), every), layers[::every], fontsize=7)
    changes = steps[1:]
    early = changes and sum(s <= end / 100 for s in changes) > len(changes) / 2
    if early:
        ax.set_xscale("symlog", linthresh=changes[0] / scale, linscale=0.5)
        ax.set_xlim(0, end / scale)
    ax.set_xlabel(("epoch" if steps_per_epoch else "step") + (" (symlog: linear up to the first change)"
                                                              if early else ""))
    if every == 1:
        final = {r["layer"]: f"{_rank_text(r['rank'])}/{_rank_text(r['max_rank'])}"
                 for r in sorted(rows, key=lambda r: int(r["step"]))}
        right = ax.secondary_yaxis("right")
        right.set_yticks(range(len(layers)), [final.get(n, "") for n in layers], fontsize=6)
        right.set_ylabel("final rank / max", fontsize=7)
    tucker2 = any(r["rank"].lstrip()[:1] in "[(" for r in rows)
    size = min(1.0, 3.5 / (height - 1.4))  # of the axes' height: at most 3.5 in, at the top
    bar = ax.inset_axes([1.16 if every == 1 else 1.03, 1 - size, 0.03, size])
    fig.colorbar(image, cax=bar, label="rank / max rank" + (" (tucker2: mean of the two modes)" if tucker2 else ""))
    ax.set_title(title)
    _save(fig, path)


def singular_values(weight: torch.Tensor) -> torch.Tensor:
    """Singular values of ``weight`` as an out × (in·k·k) matrix, without the numerically zero ones.

    A rank-r weight has exact zeros beyond r, which round to tiny values that a log scale would stretch.
    """
    s = torch.linalg.svdvals(weight.detach().float().reshape(weight.shape[0], -1))
    return s[s > s[0] * max(weight.shape[0], weight[0].numel()) * torch.finfo(s.dtype).eps]


def plot_spectra(spectra: dict[str, dict[str, torch.Tensor]], path: Path, title: str,
                 layers: dict[str, tuple[str, int]] | None = None) -> list[str]:
    """One panel per layer, three to a row, one log-scale curve per source (``{layer: {label: values}}``).

    ``layers[layer]``: (its rank as the panel's title says it, its largest index, min(out, in·k²)): the
    x-axis spans 1 to that index, a dotted line marks the last curve's length (the compact model's rank).
    A curve equal to the last one (a checkpoint at the run's last step is the compact model) is drawn wide
    and pale underneath it, not hidden by it. Returns the layers where that happened."""
    cols = min(len(spectra), 3)
    rows = math.ceil(len(spectra) / cols)
    fig = Figure(figsize=(4.2 * cols, 0.4 + 3.2 * rows))
    axes = fig.subplots(rows, cols, squeeze=False).ravel()
    for ax in axes[len(spectra):]:
        ax.set_visible(False)
    same = []
    for ax, (layer, curves) in zip(axes, spectra.items()):
        last = list(curves.values())[-1]
        for label, s in curves.items():
            equal = s is not last and len(s) == len(last) and torch.allclose(s, last, rtol=1e-4)
            if equal:
                same.append(layer)
            ax.semilogy(range(1, len(s) + 1), s.numpy(), label=label + (" (the same)" if equal else ""),
                        **({"linewidth": 5, "alpha": 0.35, "zorder": 1} if equal else {}))
        rank, top = (layers or {}).get(layer, ("", len(last)))
        if rank:  # the compact model's
            ax.axvline(len(last), color="0.4", linestyle=":", linewidth=0.9)
        ax.set_xlim(1, max(2, top))
        ax.set_title(f"{layer}: {rank}" if rank else layer, fontsize=9)
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
    return same


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


def _spectra(run: _Run, compact: nn.Module | None, layers: list[str] | None,
             total_steps: int | None) -> tuple[dict, str, dict]:
    """``({layer: {label: singular values}}, where "before" comes from, {layer: (its rank, largest index)})``
    for the run's chosen layers (`plot_spectra`); ``total_steps``: the run's, said beside the checkpoint's."""
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
    # which step of how many: the oldest checkpoint kept may be the last step, then it is the compact model
    checkpoint = f"checkpoint at {source}" + (f" of {total_steps}" if total_steps else "")
    modules = _weight_layers(compact) if compact is not None else {}
    after = {n: m.weight for n, m in modules.items()}
    if layers is None:
        low = [n for n, m in modules.items() if isinstance(m, (LowRankConv2d, LowRankLinear))]
        # The low-rank layers are the ones whose spectra changed on purpose; a dense run shows any.
        layers = _spread(low or list(after) or list(before), _DEFAULT_SPECTRA)
    spectra, shapes = {}, {}
    for name in layers:
        curves = {}
        if name in before:  # without a compact model the checkpoint is the latest state, not a "before"
            curves[f"before: {checkpoint}" if compact is not None else checkpoint] = singular_values(before[name])
        if name in after:
            curves["after (compact)"] = singular_values(after[name])
        if not curves:
            run.notes.append(f"layer {name!r}: not in this run's checkpoint or compact model, skipped")
            continue
        if name in after and name not in before and kept:
            run.notes.append(f"layer {name!r}: the checkpoint holds no dense weight for it (factorized while "
                             "training): compact model only")
        spectra[name] = curves
        weight = after.get(name, before.get(name))
        m = modules.get(name)
        rank = "" if m is None else f"rank {_fmt_rank(m.rank)}/{_fmt_rank(_max_rank(m))}" if isinstance(
            m, (LowRankConv2d, LowRankLinear)) else "dense"
        shapes[name] = rank, min(weight.shape[0], weight[0].numel())
    return spectra, source, shapes


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
        tested = _series(curves.get(run.name, []), "test_acc")[1]
        if not s and tested:
            epochs = f"{curves[run.name][-1]['epoch']}/{run.planned_epochs or '?'} (unfinished)"
            final, best = f"{tested[-1]:.2f} (latest)", f"{max(tested):.2f}"
        speedup = f"{s['speedup']:.2f}×" if s.get("speedup") is not None else "—"
        label = run.label.replace("|", "&#124;")  # a table cell's bar
        lines.append(f"| {label} | {run.method} | {s.get('model', '—')} | {epochs} | {final} | {best} "
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
    names: set[str] = set()
    labels: set[str] = set()
    unique: dict[Path, Path] = {}
    for p in run_dirs:  # a run given twice is shown once, where it first came
        unique.setdefault(Path(p).resolve(), Path(p))
    runs = [_open_run(p, names, labels) for p in unique.values()]
    points = load_paper_points(paper_points) if paper_points is not None else None
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise ValueError(f"{out} is a file: the report is a folder (README.md and its plots); give another -o")
    out.mkdir(parents=True, exist_ok=True)
    metrics = {run.name: _read_metrics(run) for run in runs if (run.path / "metrics.csv").exists()}
    md = ["# Training report", "", *_runs_table(runs, metrics), ""]
    styles = _styles([run.label for run in runs])  # one per run, every plot
    curves = {run.label: metrics[run.name] for run in runs if metrics.get(run.name)}
    if curves:
        plot_accuracy(curves, out / "accuracy.png", styles, {run.label: run.planned_epochs for run in runs})
        md += ["## Accuracy during training", "", "![accuracy during training](accuracy.png)", ""]

    rows = [row for run in runs if (row := _flops_row(run))]
    if rows or points:
        panels = "model" if len({row["model"] for row in rows}) > 1 else None  # one model's runs per panel
        plot_accuracy_vs_flops(rows, out / "accuracy_vs_flops.png", "Top-1 vs FLOPs speedup", dense_label=None,
                               paper_points=points, panels=panels,
                               colours={f"{run.label} ({run.method})": styles[run.label][0] for run in runs})
        md += ["## Accuracy vs FLOPs", "", "![accuracy vs FLOPs speedup](accuracy_vs_flops.png)", ""]

    for run in runs:
        md += [f"## Run {run.label}", "", f"Method {run.method}, directory `{run.path}`.", ""]
        epochs = metrics.get(run.name, [])
        last_step = int(epochs[-1]["step"]) if epochs else _last_step(run)
        first = epochs[0] if epochs else None
        per_epoch = int(first["step"]) // int(first["epoch"]) if first and int(first["epoch"]) else None
        rank_rows = _complete_rank_rows(run.path / "ranks.csv")
        if rank_rows:
            image = f"{run.name}_ranks.png"
            unfinished = (f" (unfinished: {epochs[-1]['epoch']}/{run.planned_epochs} epochs)"
                          if run.summary is None and epochs and run.planned_epochs else "")
            plot_rank_heatmap(rank_rows, out / image, f"{run.label}: rank during training{unfinished}", per_epoch,
                              last_step)
            md += ["### Rank during training", "", f"![{run.label} rank during training]({image})", ""]
        elif rank_rows is None:
            run.notes.append("no ranks.csv (its method logs no ranks, or the run never projected): no rank heat map")
        else:
            run.notes.append("ranks.csv holds no complete row yet: no rank heat map")
        loaded = _load_compact(run)
        compact, arch = loaded if loaded else (None, None)
        planned = run.planned_epochs * per_epoch if run.summary is None and run.planned_epochs and per_epoch else None
        spectra, source, shapes = _spectra(run, compact, layers, planned or last_step)
        if spectra:
            image = f"{run.name}_spectra.png"
            same = plot_spectra(spectra, out / image, f"{run.label}: singular values", shapes)
            if same:
                run.notes.append(f"spectra: the oldest checkpoint kept ({source}) already has the compact "
                                 f"model's singular values in {', '.join(same)}, so its curve there is the "
                                 "compact one (a run that keeps only its last checkpoints)")
            where = f"the oldest checkpoint kept ({source})" if source else "no checkpoint"
            after = "after: the compact model" if compact is not None else "no compact model yet"
            md += ["### Singular values", "", f"Before: {where}; {after}. Channel matrix form (out × in·k²), "
                   "log scale; dotted: the compact model's rank.", "", f"![{run.label} singular values]({image})", ""]
        if compact is not None:
            md += ["### Compact model", "", rank_table(compact, arch), ""]
        if run.notes:
            md += ["### Notes", "", *[f"- {note}" for note in run.notes], ""]
            for note in run.notes:  # on the terminal too: a mistyped --layers name should not pass unseen
                print(f"note: {run.label}: {note}")
    path = out / "README.md"
    path.write_text("\n".join(md))
    return path


def _read_metrics(run: _Run) -> list[dict[str, str]]:
    """The run's metrics.csv rows, with a note for what the accuracy plot cannot show."""
    rows = _read_csv(run.path / "metrics.csv")
    if not rows:
        run.notes.append("metrics.csv holds no epoch yet: not in the accuracy plot")
    elif not any(r.get("test_acc") for r in rows):
        run.notes.append("no test evaluation logged: only its train accuracy is plotted")
    for key, what in (("test_acc", "test"), ("train_acc", "train")):
        bad = _series(rows, key)[2]
        if bad:
            run.notes.append(f"{what} top-1 is NaN or infinite at epoch(s) {', '.join(map(str, bad[:10]))}"
                             f"{', ...' if len(bad) > 10 else ''}: red x at the bottom of the accuracy plot")
    return rows


def _flops_row(run: _Run) -> dict[str, Any] | None:
    """The run's point of the accuracy-vs-FLOPs plot; None (with a note) where it has no finite one."""
    s = run.summary
    if not s or s.get("speedup") is None:
        return None
    values = s.get("final_acc"), s["speedup"]
    if not all(isinstance(v, (int, float)) and math.isfinite(v) for v in values):
        run.notes.append(f"final top-1 {values[0]} or speedup {values[1]} is not a finite number: left out of the "
                         "accuracy-vs-FLOPs plot")
        return None
    return {"method": f"{run.label} ({run.method})", "model": s.get("model", "?"), "top1_final": values[0],
            "flops_speedup": values[1]}


def _last_step(run: _Run) -> int | None:
    """The run's last step without a metrics.csv: its summary's, else its newest checkpoint's."""
    if run.summary and isinstance(run.summary.get("steps"), int):
        return run.summary["steps"]
    return newest_step(run.path / "checkpoints")


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
