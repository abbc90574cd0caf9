"""Is CUDA-graph training the same training, and how much faster is it for each method?

On an H200, dense ResNet-20 training at batch 128 runs at the same speed compiled (mode "default") as
eager, and 3.2x faster with ``mode="reduce-overhead"`` (CUDA graphs: results/train_throughput_nvidia-h200.md):
the step is bound by kernel launches, not by the GPU. Whether the reproduction runs may use that mode
depends on whether it trains every method the same way: TRP writes its projections into the weights and its
sub-gradient into the gradients between steps, LRPET projects once an epoch, SVD + fine-tune swaps in new
layers halfway, ELRT adds its orthogonality gradient to factors.

For each run of benchmarks/reproduce.py's `RUNS` (by default one ResNet-20 row of each kind), one
process trains the run's recipe, schedule shortened to ``--epochs`` epochs of ``--steps-per-epoch`` steps
on generated 32×32 images, three times from the same seed: with the reference mode twice (how far two runs drift
apart anyway, through nondeterministic kernels) and with the candidate mode once. It reports the largest
relative difference of any trained tensor between the candidate and the reference beside the reference's
own drift, the final test losses, and the median step time of each mode (its epochs after the first,
which compiles). A run whose candidate differs from the reference by more than ``--tolerance`` times the
reference's own drift (at least 1e-4) fails, and so does the script (exit status 1).

    PYTHONPATH=src python3 benchmarks/compile_modes.py --commit SHA       # the GPU machine, ~2 minutes

Results: benchmarks/results/compile_modes_<device>.md (with $OUT set, a copy there).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from lrtrain.config import load_recipe
from lrtrain.data import make_sample
from lrtrain.provenance import commit, today
from lrtrain.train import Trainer
from lrtrain.devices import device_name, resolve_device
from lrtrain.train.trainer import auto_option

import reproduce
from bench_common import device_slug, raise_recompile_limit, write_result
from train_throughput import make_data

HERE = Path(__file__).resolve().parent
BATCH = 128
# One ResNet-20 run of each way of touching the weights between steps (the other rows repeat one of them).
DEFAULT_RUNS = ["resnet20_dense", "resnet20_svd_finetune", "resnet20_trp_channel_nuclear", "resnet20_trp_spatial",
                "resnet20_lrpet", "resnet20_elrt_tucker2", "resnet20_elrt_channel"]


def config(run: reproduce.Run, args, mode: str, out_dir: Path) -> dict:
    """The run's recipe with its schedule scaled to ``args.epochs`` epochs, compiled in ``mode``."""
    epochs = load_recipe(reproduce.RECIPES / run.recipe, list(run.overrides))["train"]["epochs"]
    sets = reproduce.overrides(run, [], args.epochs / epochs)
    cfg = load_recipe(reproduce.RECIPES / run.recipe,
                      [*sets, f"train.device={args.device}", "train.progress=false", f"data.batch_size={BATCH}",
                       f"train.compile={args.compile}", f"train.compile_mode={mode}"])
    cfg["out_dir"] = str(out_dir)
    return cfg


def train(run: reproduce.Run, args, mode: str, out_dir: Path) -> dict:
    """Train the shortened run once; its trained tensors, final test loss and median step time."""
    device = resolve_device(args.device)
    tensors = make_sample(BATCH * args.steps_per_epoch, 256, image_size=32, num_classes=10, seed=0)
    cfg = config(run, args, mode, out_dir)
    data = make_data(tensors, BATCH, 256, auto_option("channels_last", cfg["train"]["channels_last"], device), device)
    trainer = Trainer(cfg, data=data)
    summary = trainer.fit()
    times = [row["epoch_time_s"] / args.steps_per_epoch for row in trainer.history[1:]]
    return {"state": {k: v.detach().float().cpu() for k, v in trainer.model.state_dict().items()
                      if v.is_floating_point()},
            "final_loss": summary["final_loss"],
            "step_ms": 1000 * statistics.median(times) if times else float("nan")}


def drift(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    """The largest ‖a − b‖ / ‖a‖ over the tensors of two trained models (inf when their layers differ)."""
    if a.keys() != b.keys() or any(a[k].shape != b[k].shape for k in a):
        return float("inf")
    return max(((a[k] - b[k]).norm() / a[k].norm().clamp_min(1e-12)).item() for k in a)


def worker(name: str, args) -> dict:
    run = next(r for r in reproduce.RUNS if r.name == name)
    raise_recompile_limit()
    with tempfile.TemporaryDirectory() as tmp:
        ref = train(run, args, args.reference, Path(tmp) / "ref")
        again = train(run, args, args.reference, Path(tmp) / "again")
        cand = train(run, args, args.candidate, Path(tmp) / "cand")
    floor, diff = drift(ref["state"], again["state"]), drift(ref["state"], cand["state"])
    return {"run": name, "drift_reference": floor, "drift_candidate": diff,
            "same": diff <= max(args.tolerance * floor, 1e-4),
            "final_loss": [ref["final_loss"], cand["final_loss"]],
            "step_ms": [statistics.median([ref["step_ms"], again["step_ms"]]), cand["step_ms"]]}


def launch(names: list[str], argv: list[str], tmp: Path, budget: float | None = None) -> list[dict]:
    """One worker process per run, all at once (compilation is CPU-bound; the GPU has room), each writing
    its log to a file; workers still running after `budget` seconds are stopped and reported as cut off, so
    the table of the others is written before the call's own limit."""
    procs = {}
    env = reproduce.worker_env(len(names))
    for name in names:
        out, log = tmp / f"{name}.json", open(tmp / f"{name}.log", "w")
        procs[name] = (subprocess.Popen([sys.executable, __file__, *argv, "--worker", name, "--json", str(out)],
                                        stdout=log, stderr=subprocess.STDOUT, env=env), out, log)
    deadline = None if budget is None else time.monotonic() + budget
    while any(proc.poll() is None for proc, _, _ in procs.values()):
        if deadline is not None and time.monotonic() > deadline:
            running = [p for p, _, _ in procs.values() if p.poll() is None]
            for p in running:
                p.terminate()
            reproduce.wait_all(running, 5)
            break
        time.sleep(0.5)
    results = []
    for name, (proc, out, log) in procs.items():
        log.close()
        text = (tmp / f"{name}.log").read_text(errors="replace")
        if proc.returncode or not out.exists():
            why = (f"cut off by the {budget:.0f} s budget" if deadline is not None and time.monotonic() > deadline
                   and proc.returncode in (-15, -9) else f"exit {proc.returncode}")
            print(f"{name}: worker failed ({why}):\n{text[-3000:]}", flush=True)
            results.append({"run": name, "error": f"{why}: {text.strip().splitlines()[-1:]}"})
        else:
            results.append(json.loads(out.read_text()))
    return results


def table(results: list[dict], args) -> list[str]:
    lines = [f"| run | drift {args.candidate} vs {args.reference} | drift {args.reference} vs itself | same "
             f"training | final test loss ({args.reference} / {args.candidate}) | step ms {args.reference} | "
             f"step ms {args.candidate} | speed-up |",
             "|---|---:|---:|---|---|---:|---:|---:|"]
    for r in results:
        if "error" in r:
            lines.append(f"| {r['run']} | failed: {r['error']} | | no | | | | |")
            continue
        ref_ms, cand_ms = r["step_ms"]
        lines.append(f"| {r['run']} | {r['drift_candidate']:.1e} | {r['drift_reference']:.1e} | "
                     f"{'yes' if r['same'] else 'NO'} | {r['final_loss'][0]:.4f} / {r['final_loss'][1]:.4f} | "
                     f"{ref_ms:.1f} | {cand_ms:.1f} | {ref_ms / cand_ms:.2f}x |")
    return lines


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--runs", nargs="+", default=DEFAULT_RUNS, help="reproduce.py run names or wildcards")
    p.add_argument("--epochs", type=int, default=6, help="epochs of the shortened schedule")
    p.add_argument("--steps-per-epoch", type=int, default=10)
    p.add_argument("--reference", default="default", help="the compile mode trusted")
    p.add_argument("--candidate", default="reduce-overhead", help="the compile mode checked")
    p.add_argument("--compile", choices=["auto", "true", "false"], default="auto",
                   help="false checks the harness (both modes then run eagerly)")
    p.add_argument("--tolerance", type=float, default=10.0)
    p.add_argument("--device", default="auto")
    p.add_argument("--out", type=Path, help="results file (default: results/compile_modes_<device>.md)")
    p.add_argument("--commit", help="the commit measured (default: git's)")
    p.add_argument("--budget", type=float, help="seconds: workers still running then are stopped, the table "
                   "of the others written (keep it under the call's limit)")
    p.add_argument("--worker", help=argparse.SUPPRESS)
    p.add_argument("--json", type=Path, help=argparse.SUPPRESS)
    argv = sys.argv[1:] if argv is None else argv
    args = p.parse_args(argv)
    if args.worker:
        args.json.write_text(json.dumps(worker(args.worker, args)))
        return 0
    device = resolve_device(args.device)
    names = [r.name for r in reproduce.select(args.runs)]
    with tempfile.TemporaryDirectory() as tmp:
        results = launch(names, argv, Path(tmp), args.budget)
    lines = [f"# Compile modes: {args.candidate} vs {args.reference}, per method", "",
             f"- device: {device_name(device)}",
             f"- command: `python benchmarks/compile_modes.py {' '.join(argv)}`",
             f"- commit: {args.commit or commit()}", f"- date: {today()}",
             f"- torch {torch.__version__}; each run's recipe, schedule scaled to {args.epochs} epochs of "
             f"{args.steps_per_epoch} steps (batch {BATCH}) on generated 32×32 images; drift: the largest "
             "‖a − b‖/‖a‖ over the trained tensors; step ms: the median epoch after the first, per step", "",
             *table(results, args), ""]
    out = args.out or HERE / "results" / f"compile_modes_{device_slug(device)}.md"
    write_result(out, "\n".join(lines))
    print("\n".join(lines), flush=True)
    return 0 if all(r.get("same") for r in results) else 1


if __name__ == "__main__":
    raise SystemExit(main())
