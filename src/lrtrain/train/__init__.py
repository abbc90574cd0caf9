"""The training engine: the loop (`Trainer`), checkpoints, LR schedules and multi-process support."""

from .checkpoint import load_checkpoint, save_checkpoint
from .distributed import broadcast_module_
from .schedule import Schedule
from .stops import DivergenceError, OutOfMemory
from .trainer import Trainer, train

__all__ = ["DivergenceError", "OutOfMemory", "Schedule", "Trainer", "broadcast_module_", "load_checkpoint",
           "save_checkpoint", "train"]
