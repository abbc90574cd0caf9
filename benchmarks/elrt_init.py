"""Which from-scratch initialization trains ELRT best: a short run per init on a real CIFAR-10 subset.

Each run is the project's own `Trainer` (the ``lrtrain train`` loop) with the ELRT method, so the
comparison exercises exactly what a recipe does, only shorter. It is a screening run, not an accuracy
result: a few hundred steps on a few thousand images, one seed per setting unless --seeds says more.

    PYTHONPATH=src python benchmarks/elrt_init.py                      # ResNet-20, 3 inits, CPU
    PYTHONPATH=src python benchmarks/elrt_init.py --orth 0 1e-3 1e-2   # also sweep λ
"""

from __future__ import annotations

import argparse
import datetime
import sys
import tempfile
import time
from pathlib import Path

import torch

from lrtrain.config import resolve
from lrtrain.provenance import commit
from lrtrain.methods import elrt  # noqa: F401  (registers "elrt")
from lrtrain.train.trainer import Trainer

RESULTS = Path(__file__).parent / "results"


def run(args, init: str, orth: float, seed: int, out: Path) -> dict:
    cfg = resolve({
        "name": f"{init}-{orth}-{seed}", "out_dir": str(out / f"{init}-{orth}-{seed}"), "seed": seed,
        "model": {"name": args.model},
        "data": {"name": "cifar10", "batch_size": args.batch, "train_size": args.train_size,
                 "test_size": args.test_size},
        "optim": {"lr": 0.1, "momentum": 0.9, "weight_decay": args.weight_decay},
        "schedule": {"name": "cosine"},
        "train": {"epochs": args.epochs, "device": args.device, "progress": False},
        "method": {"name": "elrt", "rank": args.rank, "scheme": args.scheme, "orth": orth, "init": init},
    })
    start = time.perf_counter()
    trainer = Trainer(cfg)
    summary = trainer.fit()
    return {"init": init, "orth": orth, "seed": seed, "acc": summary["final_acc"],
            "train_loss": [round(r["train_loss"], 3) for r in trainer.history],
            "test_loss": summary["final_loss"], "seconds": time.perf_counter() - start,
            "speedup": summary["speedup"], "device": summary["device"]}


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default="resnet20")
    p.add_argument("--rank", default="flops:0.46")
    p.add_argument("--scheme", default="tucker2")
    p.add_argument("--inits", nargs="+", default=["orthogonal", "gaussian", "kaiming"])
    p.add_argument("--orth", nargs="+", type=float, default=[1e-3])
    p.add_argument("--seeds", type=int, default=1)
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--train-size", type=int, default=2560)
    p.add_argument("--test-size", type=int, default=2000)
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--weight-decay", type=float, default=1e-4)
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--no-write", action="store_true", help="print only; do not write the results file")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for orth in args.orth:
            for init in args.inits:
                for seed in range(args.seeds):
                    rows.append(run(args, init, orth, seed, Path(tmp)))
                    r = rows[-1]
                    print(f"{init:>10} λ={orth:g} seed {seed}: test acc {r['acc']:.2f}%  "
                          f"train loss per epoch {r['train_loss']}  ({r['seconds']:.0f} s)", flush=True)
    steps = args.epochs * (args.train_size // args.batch)
    lines = [
        f"# ELRT initialization screen ({args.model}, {args.scheme}, {args.rank})", "",
        f"- device: {rows[0]['device']}",
        f"- command: `PYTHONPATH=src python benchmarks/elrt_init.py {' '.join(sys.argv[1:])}`",
        f"- commit: {commit()}",
        f"- date: {datetime.datetime.now().isoformat(timespec='seconds')}",
        f"- protocol: first {args.train_size} CIFAR-10 training images (augmented), {args.epochs} epochs "
        f"= {steps} steps of batch {args.batch}, SGD 0.1 cosine, momentum 0.9, wd {args.weight_decay:g}; "
        f"top-1 on the first {args.test_size} test images; speedup {rows[0]['speedup']:.2f}×",
        "", "| init | λ | seed | test acc % | test loss | train loss per epoch |", "|---|---|---|---|---|---|",
    ]
    lines += [f"| {r['init']} | {r['orth']:g} | {r['seed']} | {r['acc']:.2f} | {r['test_loss']:.3f} | "
              f"{' → '.join(f'{v:.3f}' for v in r['train_loss'])} |" for r in rows]
    text = "\n".join(lines) + "\n"
    print(text)
    if not args.no_write:
        RESULTS.mkdir(exist_ok=True)
        (RESULTS / f"elrt_init_{args.device.split(':')[0]}.md").write_text(text)


if __name__ == "__main__":
    main()
