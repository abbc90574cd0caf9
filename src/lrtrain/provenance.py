"""Where a figure comes from: the code's commit, the machine, the date (written beside every result)."""

from __future__ import annotations

import datetime as dt
import os
import platform
import subprocess
from pathlib import Path


COMMIT_ENV = "LRTRAIN_COMMIT"


def commit(where: str | Path | None = None) -> str:
    """The git commit of the tree holding `where` (default: this package's code, whatever the working
    directory), ``+dirty`` when tracked files have uncommitted changes, or ``unknown`` outside a git tree.
    For this package's code, $LRTRAIN_COMMIT when set: a copy whose .git is not its own tree's (the GPU
    machine's copy carries the .git of an older state) says which commit it runs.

    Run folders under ``benchmarks/checkpoints`` and the files under ``benchmarks/results`` are data, not
    code: a GPU session moves the runs out of the tree before its calls, and a benchmark rewrites its
    results file as it goes (after each model), neither of which changes the code it measures.
    """
    if where is None and os.environ.get(COMMIT_ENV):
        return os.environ[COMMIT_ENV]
    cwd = Path(where) if where is not None else Path(__file__).resolve().parent
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                              check=True, cwd=cwd).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", "--", ":/",
                                ":(top,exclude)benchmarks/checkpoints", ":(top,exclude)benchmarks/results"],
                               capture_output=True, text=True, check=True, cwd=cwd).stdout.strip()
        return head + ("+dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def cpu_name() -> str:
    """The CPU model, e.g. ``Intel(R) Xeon(R) Processor @ 2.50GHz``."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "cpu"


def today() -> str:
    return dt.date.today().isoformat()


def device_label(device=None, threads: int | None = None) -> str:
    """``NVIDIA H100 80GB HBM3`` for a GPU, else ``CPU <model>, N thread(s)``; with torch's version."""
    import torch

    device = torch.device(device or "cpu")
    if device.type == "cuda":
        return f"{torch.cuda.get_device_name(device)}, torch {torch.__version__}"
    threads = threads or torch.get_num_threads()
    return f"CPU {cpu_name()}, {threads} thread(s), torch {torch.__version__}"
