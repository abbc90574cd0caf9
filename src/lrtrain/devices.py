"""Which device to run on: names checked against this machine, and how results name the device."""

from __future__ import annotations

import torch


def cuda_problem(device: torch.device) -> str | None:
    """Why this machine cannot run on the CUDA ``device`` (no CUDA, or too few GPUs for its index); None
    when it can, or for another kind of device."""
    if device.type != "cuda":
        return None
    if not torch.cuda.is_available():
        return "this machine has no CUDA device"
    if (device.index or 0) >= torch.cuda.device_count():
        return f"this machine has {torch.cuda.device_count()} CUDA device(s)"
    return None


def resolve_device(name: str, local_rank: int = 0) -> torch.device:
    """``auto`` is the process's GPU (``local_rank``) when CUDA is available, else the CPU; ``cuda`` without
    an index is the ``local_rank``-th GPU. A device name torch does not know, another kind than cpu and cuda,
    or a CUDA device this machine lacks, is a ValueError saying so."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ValueError(f"device {name!r} is not a device name (auto, cpu, cuda, cuda:N)") from None
    if device.type not in ("cpu", "cuda"):  # mps, xpu...: lrtrain is not tested there
        raise ValueError(f"device {name!r}: lrtrain runs on cpu or cuda (auto, cpu, cuda, cuda:N)")
    problem = cuda_problem(device)
    if problem:
        raise ValueError(f"device {name!r}: {problem}" + (" (use cpu or auto)" if "no CUDA" in problem else ""))
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", local_rank)
    return device


def device_name(device: torch.device) -> str:
    """Human-readable name of ``device``, e.g. "NVIDIA H100 80GB HBM3" or "cpu (2 threads)"."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"{device.type} ({torch.get_num_threads()} threads)"
