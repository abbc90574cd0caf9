"""Atomic checkpoints that load with ``torch.load(weights_only=True)``, and the RNG states they carry.

A checkpoint is written atomically (`files.atomic_write`: a crash leaves the old or the new file, never
half of one). Files are named by step (``step_000001234.pt``) and only the newest ``keep`` are kept.
Everything stored is plain data (tensors, numbers, strings, lists, dicts): no pickled objects.
"""

from __future__ import annotations

import random
import re
from pathlib import Path
from typing import Any

import torch

from ..files import atomic_write, load_torch_file

_NAME = re.compile(r"step_(\d+)\.pt")


def list_checkpoints(folder: str | Path) -> list[Path]:
    """The checkpoints in ``folder``, oldest step first."""
    folder = Path(folder)
    found = [(int(m.group(1)), p) for p in folder.glob("step_*.pt") if (m := _NAME.fullmatch(p.name))]
    return [p for _, p in sorted(found)]


def newest_step(folder: str | Path) -> int | None:
    """The step of the newest checkpoint in ``folder``; None where it holds none."""
    kept = list_checkpoints(folder)
    return int(_NAME.fullmatch(kept[-1].name).group(1)) if kept else None


def save_checkpoint(folder: str | Path, step: int, state: dict[str, Any], keep: int) -> Path:
    """Write ``state`` as the checkpoint of ``step`` and delete all but the newest ``keep``."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"step_{step:09d}.pt"
    atomic_write(path, lambda f: torch.save(state, f))
    for old in list_checkpoints(folder)[:-keep]:
        old.unlink()
    return path


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a checkpoint with ``weights_only=True``; a damaged file raises ValueError naming it."""
    return load_torch_file(path, "checkpoint", map_location)


def rng_state() -> dict[str, Any]:
    """The torch (CPU and every CUDA device) and Python RNG states, as plain data."""
    version, internal, gauss = random.getstate()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "python": [version, list(internal), gauss],
    }


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what `rng_state` returned (CUDA states only where this machine has those devices)."""
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"][: torch.cuda.device_count()])
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
