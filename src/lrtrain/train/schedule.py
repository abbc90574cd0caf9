"""Learning-rate schedules as pure functions of the step: nothing to save but the step itself.

A schedule gives the factor applied to the peak learning rate at every optimizer step, so the
trainer sets ``lr = peak * factor(step)`` before each step; resuming at step s gives the same rate, and
a rebuilt optimizer needs no scheduler state.
"""

from __future__ import annotations

import bisect
import math
from dataclasses import dataclass


@dataclass(frozen=True)
class Schedule:
    """Warm-up then step decay, cosine decay or a constant rate; all boundaries in steps.

    >>> s = Schedule("step", total_steps=100, milestones=(50, 75), gamma=0.1)
    >>> [round(s(i), 4) for i in (0, 49, 50, 75, 99)]
    [1.0, 1.0, 0.1, 0.01, 0.01]
    >>> c = Schedule("cosine", total_steps=100, warmup_steps=10)
    >>> [round(c(i), 3) for i in (0, 9, 10, 99)]
    [0.1, 1.0, 1.0, 0.0]
    """

    name: str
    total_steps: int
    milestones: tuple[int, ...] = ()
    gamma: float = 0.1
    warmup_steps: int = 0
    min_factor: float = 0.0  # cosine: final rate / peak rate

    def __call__(self, step: int) -> float:
        if step < self.warmup_steps:
            return (step + 1) / self.warmup_steps
        if self.name == "step":
            return self.gamma ** bisect.bisect_right(self.milestones, step)
        if self.name == "cosine":
            span = max(self.total_steps - 1 - self.warmup_steps, 1)
            progress = min((step - self.warmup_steps) / span, 1.0)
            return self.min_factor + (1 - self.min_factor) * 0.5 * (1 + math.cos(math.pi * progress))
        if self.name == "constant":
            return 1.0
        raise ValueError(f"unknown schedule {self.name!r}; valid: step, cosine, constant")


def from_config(cfg: dict, lr: float, steps_per_epoch: int, epochs: int) -> Schedule:
    """The schedule of a recipe's resolved ``schedule`` section (epochs converted to steps)."""
    return Schedule(
        name=cfg["name"],
        total_steps=steps_per_epoch * epochs,
        milestones=tuple(m * steps_per_epoch for m in cfg["milestones"]),
        gamma=cfg["gamma"],
        warmup_steps=round(cfg["warmup_epochs"] * steps_per_epoch),
        min_factor=cfg["min_lr"] / lr if lr > 0 else 0.0,
    )
