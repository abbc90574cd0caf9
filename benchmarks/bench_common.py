"""What the benchmark scripts share for their runs on the GPU machine (benchmarks/gpu/README.md)."""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

import torch


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
