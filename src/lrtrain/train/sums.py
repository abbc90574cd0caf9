"""A training epoch's loss, accuracy and non-finite losses, summed on the device: the step never waits."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from . import distributed


class DeviceSums:
    """Loss·samples, correct predictions and non-finite losses, summed on the device without syncs."""

    def __init__(self, device: torch.device):
        self.device = device
        self.values = torch.zeros(3, dtype=torch.float64, device=device)
        self.samples = 0  # counted on the host: exact and free
        self._host = torch.zeros(3, dtype=torch.float64, pin_memory=device.type == "cuda")
        self._copy_event = torch.cuda.Event() if device.type == "cuda" else None
        self._copy_samples: int | None = None
        self._snapshot: tuple[list[float], int] | None = None

    def add(self, loss: Tensor, logits: Tensor, labels: Tensor) -> None:
        n = labels.shape[0]
        correct = (logits.argmax(1) == labels).sum()
        self.values += torch.stack([loss.double() * n, correct.double(), (~torch.isfinite(loss)).double()])
        self.samples += n

    def peek(self) -> tuple[float, float] | None:
        """(mean loss, accuracy %) of the latest sums the device has copied back, without waiting."""
        if self._copy_event is None:
            self._snapshot = (self.values.tolist(), self.samples)
        else:
            if self._copy_samples is not None and self._copy_event.query():
                self._snapshot = (self._host.tolist(), self._copy_samples)
                self._copy_samples = None
            if self._copy_samples is None:
                self._host.copy_(self.values, non_blocking=True)
                self._copy_event.record()
                self._copy_samples = self.samples
        if not self._snapshot or not self._snapshot[1]:
            return None
        (loss, correct, _), n = self._snapshot
        return loss / n, 100.0 * correct / n

    def read(self) -> tuple[float, float, int, int]:
        """(mean loss, accuracy %, non-finite steps, samples) over all ranks: one sync."""
        total = distributed.all_reduce_sum_(torch.cat([self.values, self.values.new_tensor([self.samples])]))
        loss, correct, nonfinite, samples = total.tolist()
        samples = max(int(samples), 1)
        return loss / samples, 100.0 * correct / samples, int(nonfinite), samples

    def nonfinite(self) -> int:
        """Non-finite losses summed over all ranks (a sync: call at checkpoints, not every step)."""
        return int(distributed.all_reduce_sum_(self.values[2:].clone()).item())

    def state(self) -> dict[str, Any]:
        """The sums over all ranks (a collective: every rank calls it when a checkpoint is saved)."""
        total = distributed.all_reduce_sum_(torch.cat([self.values, self.values.new_tensor([self.samples])]))
        return {"values": total[:3].cpu(), "samples": int(total[3])}

    def load(self, state: dict[str, Any], is_main: bool = True) -> None:
        """Restore `state`'s totals on the main rank (zeros elsewhere), so the next `read` sums them once."""
        self.values.copy_(state["values"] if is_main else torch.zeros_like(state["values"]))
        self.samples = int(state["samples"]) if is_main else 0

    def reset(self) -> None:
        self.values.zero_()
        self.samples = 0
        self._snapshot = None
        self._copy_samples = None  # a copy still in flight holds the previous epoch's sums
