"""Run a list of trainings resumably, one after another, and tabulate and plot what they give.

Used by ``lrtrain bench`` (`run`: one run per recipe file) and the accuracy benchmarks
(``benchmarks/cpu_budget.py``, ``benchmarks/reproduce.py``): each run is a resolved config with a run
directory; a run whose ``summary.json`` exists is done, any other one is resumed from its newest
checkpoint, so a table can be built across many sessions. Rows carry what a reader needs to trust a
figure: device, command, commit and date.
"""

from __future__ import annotations

import csv
import itertools
import math
import statistics
import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch

from . import export, models
from .config import differences, flatten, is_resolved, load_recipe, read_mapping, resolve
from .deployment import deploy
from .files import read_summary
from .metrics import latency_ratio
from .provenance import cpu_name

# What the table's deployed column means, in the notes of every table that shows it.
DEPLOYED_NOTE = ("cpu_deployed_speedup_b32: the same, the compact model deployed for that CPU (`lr.deploy`: a "
                 "factorized conv kept only where it timed faster than its dense form, BatchNorm folded, NCHW or "
                 "channels-last, whichever ran faster) against the dense one deployed alike.")

ROW_FIELDS = ["run", "method", "model", "top1_final", "top1_best", "top1_before_finalize", "dense_mflops",
              "compact_mflops", "flops_speedup", "dense_params_m", "compact_params_m", "cpu_speedup_b32",
              "cpu_deployed_speedup_b32", "cpu_timing", "epochs", "wall_s", "device", "command", "commit", "date",
              "flops_reduction", "paper_top1", "top1_diff", "paper_speedup", "paper_source"]


@dataclass
class RunSpec:
    """One training of a benchmark: a name (its folder under the benchmark's root) and its recipe."""

    name: str
    label: str  # how the table and the plot call it
    recipe: dict[str, Any]
    paper: dict[str, Any] | None = None  # the published figure beside it: {"top1", "speedup", "source"}


def _run_config(spec: RunSpec, run_dir: Path) -> dict[str, Any]:
    """`spec`'s recipe resolved as the config of its run in `run_dir`; a recipe resolved already (read by
    load_recipe, bench's) is not warned of again: it said its warnings when it was read."""
    with warnings.catch_warnings():
        if is_resolved(spec.recipe):
            warnings.simplefilter("ignore", UserWarning)
        return resolve({**spec.recipe, "name": spec.name, "out_dir": str(run_dir)}, source=f"benchmark {spec.name}")


def run_all(specs: list[RunSpec], root: Path, time_limit: float | None = None,
            on_run: Callable[[RunSpec, dict[str, Any]], None] | None = None,
            on_error: Callable[[RunSpec, Exception], None] | None = None) -> list[str]:
    """Train every unfinished run of `specs` under `root`, in order; returns the names finished now.

    Stops (each run with a checkpoint to resume from) after the epoch that passes `time_limit` seconds (the
    first run it trains gets at least that epoch, so a call always moves on), or when a run stops
    unfinished (a signal). ``on_run(spec, summary)`` follows each training the call made. A run that
    fails raises, unless ``on_error(spec, error)`` is given: it is told, and the next run goes on.
    """
    from .train import Trainer

    started = time.perf_counter()
    done = []
    trained = False
    for spec in specs:
        run_dir = root / spec.name
        if (run_dir / "summary.json").exists():
            continue
        left = None if time_limit is None else time_limit - (time.perf_counter() - started)
        if left is not None and left <= 0 and trained:
            break
        try:
            cfg = _run_config(spec, run_dir)
            summary = Trainer(cfg).fit(resume=True, time_limit=None if left is None else max(0.0, left))
        except Exception as err:
            if on_error is None:
                raise
            on_error(spec, err)
            continue
        trained = True
        if on_run is not None:
            on_run(spec, summary)
        if not summary.get("finished", True):
            break
        done.append(spec.name)
    return done


def _compact_speedups(run_dir: Path, model_name: str, num_classes: int, batch: int, threads: int,
                      iters: int, dense_cache: dict) -> tuple[float | None, float | None]:
    """Measured CPU forward-pass speedups at `batch` of the run's compact model over the dense model: as
    trained, and deployed for this CPU (`lr.deploy`: each factorized conv kept only where it times faster,
    BatchNorm folded, in the memory layout that runs faster) over the dense model deployed alike (once
    per model, class count and input size: `dense_cache`), at the input size the run trained at. Both are
    1 for a model that is the dense one: timing a model against itself would only measure the machine's
    noise."""
    path = run_dir / "compact.pt"
    if not path.exists():
        return None, None
    compact, arch = export.load_with_arch(path)
    if export.describe(compact, model_name, num_classes)["layers"] == {}:
        return 1.0, 1.0
    size = (batch, *(arch.get("input_size") or models.default_input_size(model_name))[1:])  # as trained
    warmup = max(1, iters // 4)
    saved = torch.get_num_threads()
    torch.set_num_threads(threads)  # deploy's choices hold for the thread count they were timed with
    try:
        if (model_name, num_classes, size) not in dense_cache:
            dense = models.create(model_name, num_classes=num_classes).eval()
            # in the memory layout it runs faster in: BatchNorm folded, no factors to choose
            dense_cache[model_name, num_classes, size] = dense, deploy(dense, size, rounds=3, iters=warmup,
                                                                       layout="auto")[0]
        deployed = deploy(compact, input_size=size, rounds=3, iters=warmup, layout="auto")[0]
    finally:
        torch.set_num_threads(saved)
    dense, dense_deployed = dense_cache[model_name, num_classes, size]
    return (latency_ratio(dense, compact, size, warmup, iters, threads=threads),
            latency_ratio(dense_deployed, deployed, size, warmup, iters, threads=threads))


def collect(specs: list[RunSpec], root: Path, command: str, threads: int = 2,
            latency_iters: int = 20, measured: dict[str, dict[str, Any]] | None = None,
            speed: bool = True) -> list[dict[str, Any]]:
    """One row per finished run (its summary.json), with measured CPU inference speedups at batch 32
    (``speed=False``: not measured, those cells empty).

    ``measured``: rows of an earlier table by run name. A run whose summary still has that row's commit,
    date and top-1 keeps the row's command, and its speedups where they were timed as this call would time
    them (``cpu_timing``: the CPU, threads and passes) or where this call times nothing (``speed=False``),
    rather than being timed again (on a shared CPU a second timing moves them by ±15 %, which would change
    the table at every refresh)."""
    timing = f"{cpu_name()}, {threads} threads, {latency_iters} passes" if speed else None
    rows, dense_cache = [], {}
    for spec in specs:
        path = root / spec.name / "summary.json"
        if not path.exists():
            continue
        s = read_summary(path)
        dense, compact = s["dense"], s["compact"]
        model = spec.recipe["model"]["name"]
        old = (measured or {}).get(spec.name) or {}
        same_run = (old.get("commit"), old.get("date"), _number(old.get("top1_final"))) == (
            str(s.get("commit", "unknown")), str(s.get("date", "unknown")), s["final_acc"])
        kept = _number(old.get("cpu_speedup_b32")), _number(old.get("cpu_deployed_speedup_b32"))
        row_timing = timing
        if same_run and None not in kept and (not speed or old.get("cpu_timing") == timing):
            (as_trained, deployed), row_timing = kept, old.get("cpu_timing") or None
        elif not speed:
            as_trained = deployed = None
        else:
            as_trained, deployed = _compact_speedups(root / spec.name, model, s.get("num_classes", 10), 32, threads,
                                                     latency_iters, dense_cache)
        rows.append({
            "run": spec.name, "method": spec.label, "model": model,
            "top1_final": s["final_acc"], "top1_best": s["best_acc"], "top1_before_finalize": s.get("pre_finalize_acc"),
            "dense_mflops": dense["flops"] / 1e6, "compact_mflops": compact["flops"] / 1e6,
            "flops_speedup": dense["flops"] / compact["flops"],
            "dense_params_m": dense["params"] / 1e6, "compact_params_m": compact["params"] / 1e6,
            "cpu_speedup_b32": as_trained, "cpu_deployed_speedup_b32": deployed, "cpu_timing": row_timing,
            "epochs": s["epochs"], "wall_s": s.get("wall_time_s"), "device": s.get("device", "unknown"),
            "command": old["command"] if same_run and old.get("command") else command,
            "commit": s.get("commit", "unknown"), "date": s.get("date", "unknown"),
            "flops_reduction": 1 - compact["flops"] / dense["flops"],
            **_paper_columns(spec.paper, s["final_acc"]),
        })
    return rows


def _number(value: Any) -> float | None:
    """A csv cell as a number; None for an empty or unreadable one."""
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def _paper_columns(paper: dict[str, Any] | None, top1: float) -> dict[str, Any]:
    if paper is None:
        return {"paper_top1": None, "top1_diff": None, "paper_speedup": None, "paper_source": None}
    return {"paper_top1": paper["top1"], "top1_diff": top1 - paper["top1"], "paper_speedup": paper["speedup"],
            "paper_source": paper["source"]}


def _fmt(v: Any) -> str:
    if v is None:
        return "—"
    if isinstance(v, float):
        return f"{v:.2f}"
    return str(v)


def write_table(rows: list[dict[str, Any]], stem: Path, title: str, notes: str = "",
                columns: list[str] | None = None) -> None:
    """`stem`.csv with every field and `stem`.md with the fields a reader compares (``columns``).

    Device, commit, date and command not among the columns follow the table: once when every row shares
    them, else per run.
    """
    stem.parent.mkdir(parents=True, exist_ok=True)
    with open(stem.with_suffix(".csv"), "w", newline="") as f:
        writer = csv.DictWriter(f, ROW_FIELDS)
        writer.writeheader()
        writer.writerows(rows)
    shown = columns or ["method", "top1_final", "top1_best", "compact_mflops", "flops_speedup",
                        "compact_params_m", "cpu_speedup_b32", "cpu_deployed_speedup_b32", "epochs", "wall_s"]
    lines = [f"# {title}", "", notes.strip(), "",
             "| " + " | ".join(shown) + " |", "|" + "---|" * len(shown)]
    lines += ["| " + " | ".join(_fmt(r[k]) for k in shown) + " |" for r in rows]
    keys = [k for k in ("device", "commit", "date", "command") if rows and k not in shown]
    if keys:
        lines.append("")
    for k in keys:
        quote = (lambda v: f"`{v}`") if k in ("command", "commit") else str
        if all(r[k] == rows[0][k] for r in rows):
            lines.append(f"{k.capitalize()}: {quote(rows[0][k])}.")
        else:
            lines.append(f"{k.capitalize()}, per run: " + "; ".join(f"{r['run']} {quote(r[k])}" for r in rows) + ".")
    lines += _over_seeds(rows)
    stem.with_suffix(".md").write_text("\n".join(lines) + "\n")


def _over_seeds(rows: list[dict[str, Any]]) -> list[str]:
    """Where a model and method were trained more than once (other seeds): their final top-1 summarized."""
    groups: dict[tuple, list[float]] = {}
    for r in rows:
        groups.setdefault((r.get("model"), r["method"]), []).append(float(r["top1_final"]))
    repeated = {k: v for k, v in groups.items() if len(v) > 1}
    if not repeated:
        return []
    lines = ["", "## Over seeds", "", "Rows of one model and method trained more than once, with other seeds: "
             "their final top-1 (sample standard deviation).", "",
             "| model | method | runs | top1_final mean | sd | min | max |", "|---|---|---|---|---|---|---|"]
    for (model, method), accs in repeated.items():
        lines.append(f"| {model} | {method} | {len(accs)} | {statistics.mean(accs):.2f} | "
                     f"{statistics.stdev(accs):.2f} | {min(accs):.2f} | {max(accs):.2f} |")
    return lines


def _boxes_clear(box, taken, panel) -> bool:
    """Whether ``box`` (left, bottom, right, top) lies inside ``panel`` and overlaps none of ``taken``."""
    l, b, r, t = box
    return (panel[0] <= l and r <= panel[2] and panel[1] <= b and t <= panel[3]
            and not any(l < r2 and r > l2 and b < t2 and t > b2 for l2, b2, r2, t2 in taken))


def _markers(ax) -> list[tuple[tuple[float, float], Any]]:
    """Every scatter marker of `ax`: its data point and its centre on the figure, in points."""
    to_points = 72 / ax.figure.dpi
    return [(tuple(xy), ax.transData.transform(xy) * to_points) for c in ax.collections for xy in c.get_offsets()]


def _marker_boxes(ax, half: float = 5.0) -> list[tuple[float, float, float, float]]:
    """Every scatter marker of `ax` as a square box in points (a 60-80 pt² marker is 8-9 points wide)."""
    return [(x - half, y - half, x + half, y + half) for _, (x, y) in _markers(ax)]


def _label_points(ax, points: list[tuple[float, float, str]], fontsize: float = 7) -> list:
    """Label each (x, y, text) of `ax` at the nearest place, tried outward from beside its point, where the
    label covers no marker of the panel and no label placed before it, inside the panel; a thin leader line
    joins it to its point, so a label pushed aside still names the right one. Returns the annotations."""
    ax.autoscale_view()  # the limits the labels are placed against
    to_points = 72 / ax.figure.dpi
    extent = ax.get_window_extent()
    panel = tuple(v * to_points for v in (extent.x0, extent.y0, extent.x1, extent.y1))
    line = 1.3 * fontsize
    taken = _marker_boxes(ax)
    texts = []
    for x, y, text in sorted(points, key=lambda p: (p[0], -p[1])):
        px, py = ax.transData.transform((x, y)) * to_points
        width = 0.62 * fontsize * len(text)  # about a character's width
        # the label's lower left corner, relative to the point: right of it, left, then rows further off
        offsets = [(dx, dy) for k in range(40) for dy in (2 + k * line, 2 - (k + 1) * line)
                   for dx in (7, -7 - width, -width / 2)
                   if dx != -width / 2 or k > 0]  # centred only clear of its own marker
        offsets.sort(key=lambda o: math.hypot(o[0] + width / 2, o[1] + line / 2))
        dx, dy = next((o for o in offsets if _boxes_clear((px + o[0], py + o[1], px + o[0] + width,
                                                          py + o[1] + line), taken, panel)), offsets[0])
        taken.append((px + dx, py + dy, px + dx + width, py + dy + line))
        texts.append(ax.annotate(text, (x, y), fontsize=fontsize, xytext=(dx, dy), textcoords="offset points",
                                 ha="left", va="bottom",
                                 arrowprops={"arrowstyle": "-", "color": "0.45", "linewidth": 0.6,
                                             "shrinkA": 0, "shrinkB": 4}))
    return texts


def _compared(row: dict[str, Any], point: dict[str, Any]) -> bool:
    """Whether `row` was compared with the published `point`: the row's paper columns are the point's."""
    return (row.get("paper_top1"), row.get("paper_speedup")) == (point["top1"], point["speedup"])


def _crowd(ax, reach: float = 14.0) -> list[tuple[float, float]]:
    """The data points of the panel's largest group of three or more markers each within ``reach`` points
    of another of the group (markers that hide one another); none where no three crowd."""
    markers = _markers(ax)
    data, shown = [d for d, _ in markers], [p for _, p in markers]
    left, biggest = set(range(len(data))), set()
    while left:
        group, todo = set(), [left.pop()]
        while todo:
            group.add(i := todo.pop())
            near = {j for j in left if math.dist(shown[i], shown[j]) < reach}
            left -= near
            todo += near
        biggest = max(biggest, group, key=len)
    return [data[i] for i in biggest] if len(biggest) >= 3 else []


def _zoom_inset(ax, draw: Callable) -> Any:
    """Where markers crowd, an inset magnifying them (drawn by ``draw(inset)``) in a corner of the panel that
    covers no marker and no label; none where nothing crowds or no corner is free. Returns the inset."""
    crowd = _crowd(ax)
    if not crowd:
        return None
    renderer = ax.figure.canvas.get_renderer()
    to_points = 72 / ax.figure.dpi
    taken = _marker_boxes(ax) + [tuple(v * to_points for v in t.get_window_extent(renderer).extents)
                                 for t in ax.texts]
    extent = ax.get_window_extent()
    size = (0.36, 0.42)
    for corner in ((0.62, 0.56), (0.02, 0.56), (0.62, 0.04), (0.02, 0.04)):
        left, bottom = (extent.x0 + corner[0] * extent.width, extent.y0 + corner[1] * extent.height)
        # its tick labels, left of and below it, need room too
        box = (left * to_points - 22, bottom * to_points - 12, (left + size[0] * extent.width) * to_points,
               (bottom + size[1] * extent.height) * to_points)
        if _boxes_clear(box, taken, (-math.inf, -math.inf, math.inf, math.inf)):
            break
    else:
        return None
    inset = ax.inset_axes([*corner, *size])
    draw(inset)
    xs, ys = zip(*crowd)
    dx, dy = max(0.02, 0.2 * (max(xs) - min(xs))), max(0.1, 0.2 * (max(ys) - min(ys)))
    inset.set_xlim(min(xs) - dx, max(xs) + dx)
    inset.set_ylim(min(ys) - dy, max(ys) + dy)
    inset.tick_params(labelsize=6)
    inset.grid(alpha=0.3)
    ax.indicate_inset_zoom(inset, edgecolor="0.4")
    return inset


def plot(rows: list[dict[str, Any]], path: Path, title: str, dense_label: str | None = "dense",
         paper_points: list[dict[str, Any]] | None = None, panels: str | None = None,
         colours: dict[str, str] | None = None, started: dict[Any, int] | None = None) -> None:
    """Top-1 against FLOPs speedup, one coloured marker per method; the dense run as a grey horizontal line.

    With ``dense_label=None`` every row is a marker (a dense run sits at speedup 1). A paper point
    ``{label, speedup, top1}`` is a black hollow circle labelled beside it, joined by a dotted line to each
    row compared with it (a row whose ``paper_top1`` and ``paper_speedup`` are the point's). ``panels``
    names a key (e.g. "model"): one panel per value, each row and paper point in the panel of its value (a
    paper point without it in every panel); a panel without rows says so, with ``started[value]`` runs
    started where given. ``colours`` fixes a method's colour (to match other plots). Where three or more
    markers hide one another an inset magnifies them, if a corner of the panel is free for it.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.colors import to_hex

    points = paper_points or []
    groups = list(dict.fromkeys(x[panels] for x in [*rows, *points] if panels in x)) if panels else []
    groups = groups or [None]
    fig, axes = plt.subplots(1, len(groups), figsize=(7 * len(groups), 4.5), squeeze=False)
    markers = itertools.cycle("osD^v<>pPX*h")  # colours still tell apart methods beyond twelve
    palette = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    if len({r["method"] for r in rows} - {dense_label}) > len(palette) - 1:  # a colour each, tab20's
        palette = [to_hex(c) for c in plt.get_cmap("tab20").colors]
    if any(r["method"] == dense_label for r in rows):  # the dense line's greys are no method's colour
        palette = [c for c in palette if to_hex(c) not in ("#7f7f7f", "#c7c7c7")]
    cycle = itertools.cycle(palette)
    style: dict[str, tuple[str, str]] = {}  # method -> (marker, colour), the same in every panel
    paper_label = "published (hollow; dotted: the runs compared with it)"

    def style_of(method: str) -> tuple[str, str]:
        if method not in style:
            style[method] = (next(markers), (colours or {}).get(method) or next(cycle))
        return style[method]

    def in_panel(x: dict[str, Any], group: Any) -> bool:
        return panels is None or x.get(panels, group) == group

    def draw(ax, group: Any) -> None:
        shown = [r for r in rows if in_panel(r, group)]
        for p in (p for p in points if in_panel(p, group)):
            for r in (r for r in shown if _compared(r, p)):
                ax.plot([p["speedup"], r["flops_speedup"]], [p["top1"], r["top1_final"]], ":", color="0.35",
                        linewidth=0.9, zorder=1)
            ax.scatter(p["speedup"], p["top1"], marker="o", facecolors="none", edgecolors="black", s=80,
                       linewidths=1.3, zorder=3, label=paper_label)
        for r in shown:
            if r["method"] == dense_label:
                ax.axhline(r["top1_final"], color="grey", linestyle="--",
                           label=f"{dense_label} ({r['top1_final']:.2f}%)")
            else:
                marker, colour = style_of(r["method"])
                ax.scatter(r["flops_speedup"], r["top1_final"], marker=marker, color=colour, s=60, zorder=2,
                           label=r["method"])

    for ax, group in zip(axes[0], groups):
        draw(ax, group)
        speedups = [x for c in ax.collections for x in c.get_offsets()[:, 0]]
        if speedups and max(speedups) < 1.2 * min(speedups):  # a narrow axis would magnify a 0.1 % difference
            middle = (max(speedups) + min(speedups)) / 2
            ax.set_xlim(middle / 1.1, middle * 1.1)
        ax.set_xlabel("FLOPs speedup (dense / compact)")
        ax.set_ylabel("top-1 (%)")
        heading = title if group is None else f"{title}: {group}"
        if not any(in_panel(r, group) for r in rows):
            count = (started or {}).get(group)
            heading += f"\nno finished run yet{f' ({count} started)' if count else ''}: published results only"
        ax.set_title(heading)
        ax.grid(alpha=0.3)
    # one legend for every panel, below them: inside one it covered the points of its corner
    entries = {label: handle for ax in axes[0] for handle, label in zip(*ax.get_legend_handles_labels())}
    if paper_label in entries:  # last, after the runs
        entries[paper_label] = entries.pop(paper_label)
    if entries:
        columns = min(len(entries), max(2, 7 * len(groups) // 3))  # about 2.3 in a run's name
        extra = 0.2 + 0.18 * math.ceil(len(entries) / columns)
        fig.set_size_inches(7 * len(groups), 4.5 + extra)
        fig.legend(list(entries.values()), list(entries), loc="lower center", ncol=columns, fontsize=7,
                   frameon=False)
        fig.tight_layout(rect=(0, extra / (4.5 + extra), 1, 1))
    else:
        fig.tight_layout()
    for ax, group in zip(axes[0], groups):  # placed once the panels have their final size
        _label_points(ax, [(p["speedup"], p["top1"], p["label"]) for p in points if in_panel(p, group)])
        _zoom_inset(ax, lambda inset, group=group: draw(inset, group))
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120, bbox_inches="tight")  # "tight": long legend entries widen the figure
    plt.close(fig)


def recipe_specs(recipes: list[str | Path], overrides: list[str] = (), data_dir: str | None = None,
                 device: str | None = None) -> list[RunSpec]:
    """One run per recipe file (or run directory), named by the file's stem: the runs of ``lrtrain bench``.

    Every recipe gets the same ``overrides`` (``KEY=VALUE``), data folder and device. Two recipes of one
    name would share a run folder: refused, naming both."""
    specs: dict[str, tuple[Path, RunSpec]] = {}
    for recipe in map(Path, recipes):
        cfg = load_recipe(recipe, overrides)
        if data_dir:
            cfg["data"]["dir"] = data_dir
        if device:
            cfg["train"]["device"] = device
        name = recipe.name if recipe.is_dir() else recipe.stem
        if name in specs:
            raise ValueError(f"{specs[name][0]} and {recipe} would share the run folder {name!r}: give the "
                             "recipes different file names")
        # labelled by the recipe: two recipes of one method (LRPET at two goals) are two rows, not two seeds
        specs[name] = recipe, RunSpec(name, name, cfg)
    return [spec for _, spec in specs.values()]


# Where and how a run executes, not what it trains: a finished run differing only here is still the run asked for.
_EXECUTION_KEYS = {"name", "out_dir", "data.dir", "data.workers", "data.eval_batch_size", "train.device",
                   "train.progress", "train.compile", "train.compile_mode", "train.checkpoint_every",
                   "train.keep_checkpoints", "train.channels_last"}


def check_settings(specs: list[RunSpec], root: Path) -> None:
    """Refuse a run under `root`, finished or with a checkpoint to resume, that was trained with other
    settings than its spec asks: the table would show it as the asked run (a quick ``--set
    train.epochs=2`` try, then the real call), or resuming it would mix the two."""
    from .train.checkpoint import list_checkpoints
    from .train.trainer import absolute_paths

    for spec in specs:
        run_dir = root / spec.name
        finished = (run_dir / "summary.json").exists()
        if not (finished or list_checkpoints(run_dir / "checkpoints")) or not (run_dir / "config.yaml").exists():
            continue
        saved = read_mapping(run_dir / "config.yaml")
        # as the trainer wrote it: files named relative to here (model.weights, ...) made absolute
        asked = absolute_paths(_run_config(spec, run_dir))
        changed = [k for k in differences(saved, asked) if k not in _EXECUTION_KEYS]
        if changed:
            saved, asked = flatten(saved), flatten(asked)
            shown = ", ".join(f"{k}={saved.get(k)!r} (asked {asked.get(k)!r})" for k in changed[:4])
            raise ValueError(f"{run_dir} holds a {'finished' if finished else 'started'} run trained with {shown}"
                             f"{' and more' if len(changed) > 4 else ''}: give another -o, or delete {run_dir} "
                             "to train it again")


def _say_run(spec: RunSpec, summary: dict[str, Any]) -> None:
    if summary.get("finished", True):
        print(f"bench: {spec.name} finished: top-1 {summary['final_acc']:.2f}% at "
              f"{summary.get('speedup') or 1:.2f}x fewer FLOPs", flush=True)
    else:
        print(f"bench: {spec.name} stopped with a checkpoint; the same command resumes it", flush=True)


# Names in a bench folder that are not runs: its report and table.
_NOT_RUNS = ("report", "bench.md", "bench.csv")


def earlier_runs(root: Path, specs: list[RunSpec]) -> list[RunSpec]:
    """The finished runs under `root` that `specs` do not name (trained by earlier calls into the same
    folder, with other recipes), each as its config.yaml describes it: they stay in the table."""
    named = {spec.name for spec in specs}
    found = []
    for run_dir in sorted(p for p in root.iterdir() if p.is_dir()) if root.is_dir() else []:
        if run_dir.name in named or run_dir.name in _NOT_RUNS or not (run_dir / "summary.json").is_file() \
                or not (run_dir / "config.yaml").is_file():
            continue
        found.append(RunSpec(run_dir.name, run_dir.name, read_mapping(run_dir / "config.yaml")))
    return found


def earlier_rows(path: Path) -> dict[str, dict[str, Any]]:
    """The rows of an earlier bench.csv by run name (none where it is missing or unreadable: recomputed)."""
    try:
        with open(path, newline="") as f:
            return {row["run"]: row for row in csv.DictReader(f) if row.get("run")}
    except (OSError, csv.Error, UnicodeDecodeError):
        return {}


def run(args) -> int:
    """``lrtrain bench``: train the recipes' unfinished runs one after another, then tabulate and report
    them with the runs that earlier calls finished in the same folder. A run that fails is said and the
    others go on; the status is then 1."""
    import shlex
    import signal

    from . import report

    if args.time_limit is not None and not args.time_limit >= 0:
        raise ValueError(f"--time-limit is {args.time_limit:g} s: give a number of seconds, 0 or more")
    if args.threads < 1:
        raise ValueError(f"--threads is {args.threads}: give 1 or more")
    if args.paper_points is not None:
        report.load_paper_points(args.paper_points)  # a mistake said now, not after hours of training
    specs = recipe_specs(args.recipes, args.overrides, args.data_dir, args.device)
    clash = [spec.name for spec in specs if spec.name in _NOT_RUNS]
    if clash:
        raise ValueError(f"a recipe named {clash[0]!r} would train in {Path(args.out) / clash[0]}, which lrtrain "
                         "bench writes its table or report to: rename the recipe file")
    root = Path(args.out)
    check_settings(specs, root)
    stopped: dict[str, Any] = {}
    failed: dict[str, str] = {}
    if not args.report_only:
        def on_run(spec: RunSpec, summary: dict[str, Any]) -> None:
            _say_run(spec, summary)
            if summary.get("signal"):
                stopped.update(summary)

        def on_error(spec: RunSpec, err: Exception) -> None:
            if args.debug:
                raise err
            failed[spec.name] = " ".join(str(err).split()) or type(err).__name__
            print(f"bench: {spec.name} failed: {failed[spec.name]}", flush=True)

        run_all(specs, root, args.time_limit, on_run, on_error)
    command = shlex.join(["lrtrain", "bench", *map(str, args.recipes), "-o", str(args.out),
                          *(w for o in args.overrides for w in ("--set", o)),
                          *(w for k in ("data_dir", "device") if (v := getattr(args, k))
                            for w in (f"--{k.replace('_', '-')}", v))])
    tabled = specs + earlier_runs(root, specs)
    rows = collect(tabled, root, command, threads=args.threads, speed=args.speed,
                   measured=earlier_rows(root / "bench.csv"))
    pending = [s.name for s in specs if not (root / s.name / "summary.json").exists()]
    timed = sorted({r["cpu_timing"] for r in rows if r["cpu_timing"]})
    notes = ("top1_final: the compact model's test top-1; top1_best: the best epoch-end top-1 of the model as "
             "trained; flops_speedup = dense / compact multiply-accumulates. " +
             (f"cpu_speedup_b32: measured forward-pass speedup over the dense model on the CPU (batch 32; "
              f"{'; '.join(timed)}: the csv's cpu_timing column says which row); {DEPLOYED_NOTE}" if timed else
              "CPU speedups not measured (lrtrain bench --speed measures them).") +
             (f"\n\nNot finished yet: {', '.join(pending)} (the same command resumes them)." if pending else ""))
    write_table(rows, root / "bench", f"lrtrain bench: {len(rows)} run(s)", notes,
                columns=["run", "model", "top1_final", "top1_best", "compact_mflops", "flops_speedup",
                         "compact_params_m", "cpu_speedup_b32", "cpu_deployed_speedup_b32", "epochs", "wall_s"])
    shown = [root / s.name for s in tabled if (root / s.name).is_dir()]
    if shown:
        report.write_report(shown, root / "report", args.paper_points)
    width = max((len(row["run"]) for row in rows), default=0)
    for row in rows:
        print(f"{row['run']:{width}s}  top-1 {row['top1_final']:6.2f}%  {row['flops_speedup']:.2f}x fewer FLOPs")
    print(f"table: {root / 'bench.md'} (and .csv)" + (f"; plots: {root / 'report' / 'README.md'}" if shown else "") +
          (f"; not finished: {', '.join(pending)}" if pending else ""))
    for name, why in failed.items():
        print(f"lrtrain: error: {name} failed: {why}", file=sys.stderr)
    if stopped.get("signal"):
        return 128 + int(getattr(signal, stopped["signal"]))
    return 1 if failed else 0


__all__ = ["RunSpec", "check_settings", "collect", "cpu_name", "earlier_runs", "plot", "recipe_specs", "run_all",
           "write_table"]
