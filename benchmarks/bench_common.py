"""What the benchmark scripts share for their runs on the GPU machine (benchmarks/gpu/README.md)."""

from __future__ import annotations

import argparse
import datetime
import os
import re
import shutil
import sys
from pathlib import Path

import torch

from lrtrain.provenance import commit, device_label


def write_result(path: Path, text: str) -> None:
    """Write a results file; with $OUT set (the GPU machine, which keeps nothing else) a copy goes there."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    if os.environ.get("OUT"):
        shutil.copy(path, Path(os.environ["OUT"]) / path.name)


def sync(device: torch.device) -> None:
    """Wait for the device's queued work (a CUDA timing ends only when its kernels do)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def device_slug(device: torch.device) -> str:
    """``cpu``, or the GPU's name as a file name part, e.g. ``nvidia-h100-80gb-hbm3``."""
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")


def raise_recompile_limit(limit: int = 64) -> None:
    """Let Dynamo compile `limit` models of one class in this process: every instance compiles the class's
    forward again, and past the limit (8 by default) Dynamo runs it eagerly without a word, so "compiled"
    timings would be eager ones. Older torch names the limit cache_size_limit."""
    import torch._dynamo

    config = torch._dynamo.config
    name = "recompile_limit" if hasattr(config, "recompile_limit") else "cache_size_limit"
    setattr(config, name, max(getattr(config, name), limit))


def add_timing_args(parser: argparse.ArgumentParser, stem: str, repeats: int) -> None:
    """The options of the timing scripts that compare paths round-robin on one device."""
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    parser.add_argument("--repeats", type=int, default=repeats)
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--out", type=Path, help=f"results file (default: results/{stem}_<device>.md)")
    parser.add_argument("--commit", help="the commit measured (default: git's; the GPU machine has no .git)")


def timing_header(title: str, args: argparse.Namespace) -> tuple[torch.device, list[str]]:
    """Apply ``--device`` and ``--threads``; the results file's title and provenance lines."""
    device = torch.device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    return device, [
        f"# {title}",
        "",
        f"- device: {device_label(device, torch.get_num_threads())}",
        f"- command: `PYTHONPATH=src python {' '.join(sys.argv)}`",
        f"- commit: {args.commit or commit()}",
        f"- date: {datetime.datetime.now().isoformat(timespec='seconds')}",
    ]
