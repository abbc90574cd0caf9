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
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch

from . import export, models
from .config import differences, flatten, load_recipe, read_mapping, resolve
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
            cfg = resolve({**spec.recipe, "name": spec.name, "out_dir": str(run_dir)},
                          source=f"benchmark {spec.name}")
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


def _label_points(ax, points: list[tuple[float, float, str]], fontsize: float = 7) -> list:
    """Label each (x, y, text) of `ax` beside its point: right of it and a little above, or left of it
    where the panel's right edge would cut the text; a label that would cover one placed before it moves
    a line down, else up, then two..., as far as the panel reaches. Returns the annotations."""
    ax.autoscale_view()  # the limits the labels are placed against
    to_points = 72 / ax.figure.dpi
    panel = ax.get_window_extent()
    right, low, high = panel.x1 * to_points, panel.y0 * to_points, panel.y1 * to_points
    line = 1.3 * fontsize
    placed: list[tuple[float, float, float]] = []  # each label's left, bottom, right, in points
    texts = []
    for x, y, text in sorted(points, key=lambda p: (p[0], -p[1])):
        px, py = (v * to_points for v in ax.transData.transform((x, y)))
        width = 0.62 * fontsize * len(text)  # about a character's width
        dx = 4 if px + 4 + width <= right else -4 - width
        left = px + dx

        def clear(level: int) -> bool:
            bottom = py + 2 - level * line
            inside = low <= bottom and bottom + line <= high
            return inside and not any(left < r and left + width > l and abs(bottom - b) < line
                                      for l, b, r in placed)

        levels = [0, *(k * sign for k in range(1, 40) for sign in (1, -1))]  # 1: a line down
        level = next((k for k in levels if clear(k)), 0)
        placed.append((left, py + 2 - level * line, left + width))
        texts.append(ax.annotate(text, (x, y), fontsize=fontsize, xytext=(dx if dx > 0 else -4, 2 - level * line),
                                 textcoords="offset points", ha="left" if dx > 0 else "right"))
    return texts


def plot(rows: list[dict[str, Any]], path: Path, title: str, dense_label: str | None = "dense",
         paper_points: list[dict[str, Any]] | None = None, panels: str | None = None,
         colours: dict[str, str] | None = None) -> None:
    """Top-1 against FLOPs speedup, one marker per method; the dense run as a horizontal line.

    With ``dense_label=None`` every row is a marker (a dense run sits at speedup 1). A paper point
    ``{label, speedup, top1}`` is a black cross; one that also names a ``method`` gets that method's
    marker and colour, hollow. ``panels`` names a key (e.g. "model"): one panel per value, each row and
    paper point in the panel of its value. ``colours`` fixes a method's colour (to match other plots).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    points = paper_points or []
    groups = list(dict.fromkeys(x[panels] for x in [*rows, *points])) if panels else [None]
    fig, axes = plt.subplots(1, len(groups), figsize=(7 * len(groups), 4.5), squeeze=False)
    markers = itertools.cycle("osD^v<>pPX*h")  # colours still tell apart methods beyond twelve
    cycle = itertools.cycle(plt.rcParams["axes.prop_cycle"].by_key()["color"])
    style: dict[str, tuple[str, str]] = {}  # method -> (marker, colour), the same in every panel

    def style_of(method: str) -> tuple[str, str]:
        if method not in style:
            colour = "grey" if method == dense_label else (colours or {}).get(method) or next(cycle)
            style[method] = (next(markers), colour)
        return style[method]

    crosses: dict[Any, list[tuple[float, float, str]]] = {}  # the paper points labelled beside them, per panel
    for ax, group in zip(axes[0], groups):
        for r in (r for r in rows if panels is None or r[panels] == group):
            if r["method"] == dense_label:
                ax.axhline(r["top1_final"], color="grey", linestyle="--",
                           label=f"{dense_label} ({r['top1_final']:.2f}%)")
            else:
                marker, colour = style_of(r["method"])
                ax.scatter(r["flops_speedup"], r["top1_final"], marker=marker, color=colour, s=60, label=r["method"])
        crosses[ax] = []
        for p in (p for p in points if panels is None or p[panels] == group):
            if "method" in p:
                marker, colour = style_of(p["method"])
                ax.scatter(p["speedup"], p["top1"], marker=marker, facecolors="none", edgecolors=colour, s=80,
                           linewidths=1.5, label=p["label"])
            else:
                ax.scatter(p["speedup"], p["top1"], marker="x", color="black", s=50)
                crosses[ax].append((p["speedup"], p["top1"], p["label"]))
        speedups = [x for c in ax.collections for x in c.get_offsets()[:, 0]]
        if speedups and max(speedups) < 1.2 * min(speedups):  # a narrow axis would magnify a 0.1 % difference
            middle = (max(speedups) + min(speedups)) / 2
            ax.set_xlim(middle / 1.1, middle * 1.1)
        ax.set_xlabel("FLOPs speedup (dense / compact)")
        ax.set_ylabel("top-1 (%)")
        ax.set_title(title if group is None else f"{title}: {group}")
        ax.grid(alpha=0.3)
        entries = dict(zip(*ax.get_legend_handles_labels()[::-1]))  # one entry per method, not per seed
        ax.legend(entries.values(), entries.keys(), fontsize=7, loc="best")
    fig.tight_layout()
    for ax, labelled in crosses.items():  # placed once the panels have their final size
        _label_points(ax, labelled)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
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
        asked = absolute_paths(resolve({**spec.recipe, "name": spec.name, "out_dir": str(run_dir)},
                                       source=f"benchmark {spec.name}"))
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
