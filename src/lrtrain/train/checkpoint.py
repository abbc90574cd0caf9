"""Atomic checkpoints that load with ``torch.load(weights_only=True)``, and the RNG states they carry.

A checkpoint is written to a temporary file in the same folder, flushed and fsync'ed, then renamed over
its final name (and the folder fsync'ed), so a crash leaves either the old or the new file, never half
of one. Files are named by step (``step_000001234.pt``) and only the newest ``keep`` are kept.
Everything stored is plain data (tensors, numbers, strings, lists, dicts): no pickled objects.
"""

from __future__ import annotations

import os
import random
import re
import tempfile
from pathlib import Path
from typing import Any, Callable, IO

import torch

_NAME = re.compile(r"step_(\d+)\.pt")


def atomic_write(path: str | Path, write: Callable[[IO[bytes]], Any]) -> None:
    """Create or replace ``path`` with what ``write(file)`` writes, atomically and durably."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)  # makes the rename itself durable
    finally:
        os.close(dir_fd)


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write(path, lambda f: f.write(text.encode()))


def list_checkpoints(folder: str | Path) -> list[Path]:
    """The checkpoints in ``folder``, oldest step first."""
    folder = Path(folder)
    found = [(int(m.group(1)), p) for p in folder.glob("step_*.pt") if (m := _NAME.fullmatch(p.name))]
    return [p for _, p in sorted(found)]


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
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as err:  # damaged files raise many kinds (KeyError, struct.error, UnpicklingError, ...)
        raise ValueError(f"cannot read checkpoint {path}: {type(err).__name__}: {err}") from None


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
