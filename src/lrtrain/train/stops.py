"""How a training run stops other than at its end: on a stop signal (after the step under way, with a
checkpoint), on a NaN/Inf loss or weight, or out of device memory."""

from __future__ import annotations

import signal
import threading
import time

import torch


class DivergenceError(RuntimeError):
    """The loss became NaN or Inf; the run stopped and kept its last good checkpoint."""


class OutOfMemory(RuntimeError):
    """The device ran out of memory; the message says which batch size to lower."""


# Signals that stop a run cleanly: the step under way ends, a checkpoint is saved, `fit` returns.
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)
REPEAT_WINDOW_S = 1.0  # a stop signal repeated within this is the same stop (see `StopSignals`)


class Interrupted(KeyboardInterrupt):
    """A second stop signal during training: the run stops at once. `signum` is that signal's number (the
    command line exits with 128 + it, as a process killed by it would)."""

    def __init__(self, signum: int):
        super().__init__(f"{signal.Signals(signum).name} received twice")
        self.signum = int(signum)


def is_out_of_memory(err: BaseException) -> bool:
    """CUDA's OutOfMemoryError, or a RuntimeError saying so (other backends; the CPU allocator)."""
    text = str(err).lower()
    return isinstance(err, torch.cuda.OutOfMemoryError) or (
        isinstance(err, RuntimeError) and ("out of memory" in text or "can't allocate memory" in text))


class StopSignals:
    """While entered: SIGINT/SIGTERM set `signum` (the loop then stops with a checkpoint); a second one
    raises `Interrupted`, unless it is the same signal within `REPEAT_WINDOW_S` (one stop delivered twice).
    Handlers can only be installed from the main thread: entered from another, it does nothing."""

    def __init__(self):
        self.signum: int | None = None
        self._first = 0.0
        self._previous: dict = {}

    def _handle(self, signum, frame) -> None:
        if self.signum is not None:
            # the same signal again within a second is one stop delivered twice (a batch system signals
            # torchrun and its workers, and torchrun passes its own on), not a second request
            if signum == self.signum and time.monotonic() - self._first < REPEAT_WINDOW_S:
                return
            raise Interrupted(signum)
        self.signum, self._first = signum, time.monotonic()  # nothing more: it may interrupt a print

    def __enter__(self) -> "StopSignals":
        self.signum = None
        if threading.current_thread() is threading.main_thread():
            self._previous = {s: signal.signal(s, self._handle) for s in STOP_SIGNALS}
        return self

    def __exit__(self, *exc) -> None:
        for s, h in self._previous.items():
            signal.signal(s, h if h is not None else signal.SIG_DFL)
        self._previous = {}
