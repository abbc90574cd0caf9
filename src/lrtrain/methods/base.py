"""The hook protocol every method follows, so it plugs into any PyTorch training loop.

A loop that uses a method looks like this::

    method = lr.TRP(model, ...)            # may replace layers of `model`: train `method.model`
    method.setup(steps_per_epoch=len(loader), total_steps=epochs * len(loader))
    optimizer = torch.optim.SGD(method.model.parameters(), lr=0.1)
    for epoch in range(epochs):
        for x, y in loader:
            loss = criterion(method.model(x), y)
            loss.backward()
            method.before_step()           # regularizer gradients (nuclear sub-gradient, ELRT terms)
            optimizer.step(); optimizer.zero_grad()
            method.after_step()            # every `period` steps: projection / rank pruning
            if method.rebuild_optimizer:   # the method changed the set of parameters
                optimizer = ...; method.rebuild_optimizer = False
    compact = method.finalize()

The base class is a no-op for every hook; a method overrides only what it needs.
"""

from __future__ import annotations

import functools
import inspect
import numbers
import warnings
from typing import Any

from torch import nn

from .. import surgery


class Method:
    """Base of all methods: holds the model being trained and the step counter.

    Subclasses override `before_step`, `after_step`, `finalize` and, when they keep state that must
    survive a resume, `state_dict` / `load_state_dict` (plain tensors, numbers, strings, lists and dicts
    only, so checkpoints load with ``torch.load(weights_only=True)``).
    """

    name = "base"
    path_params: tuple[str, ...] = ()  # settings that name files (a run's config.yaml keeps them absolute)

    def __init_subclass__(cls, **kwargs: Any) -> None:
        """Each method's constructor records the settings it ran with (`_settings`): a checkpoint keeps
        them, so a run resumed where a default has changed since is told (`load_state_dict`)."""
        super().__init_subclass__(**kwargs)
        init = cls.__dict__.get("__init__")
        if init is None:
            return
        signature = inspect.signature(init)

        @functools.wraps(init)
        def recorded(self, *args: Any, **kw: Any) -> None:
            init(self, *args, **kw)
            if type(self).__init__ is recorded:  # the class built, not a base whose __init__ it calls
                bound = signature.bind(self, *args, **kw)
                given = set(bound.arguments)
                bound.apply_defaults()
                self._settings = {k: (repr(v), k in given) for k, v in list(bound.arguments.items())[2:]
                                  if signature.parameters[k].kind not in (inspect.Parameter.VAR_POSITIONAL,
                                                                          inspect.Parameter.VAR_KEYWORD)}

        cls.__init__ = recorded

    def __init__(self, model: nn.Module):
        if not isinstance(model, nn.Module):  # a model name, say: lr.models.create(name) builds one
            raise TypeError(f"{type(self).__name__} takes a model (an nn.Module), got {type(model).__name__} "
                            f"{model!r:.60}" + (" (build it with lr.models.create)" if isinstance(model, str) else ""))
        self.model = model
        self.step = 0
        self.steps_per_epoch: int | None = None
        self.total_steps: int | None = None
        self.rebuild_optimizer = False
        # Rows {"step", "layer", "rank", "max_rank"} appended at each projection; the trainer drains
        # this list into ranks.csv (the rows that change a rank: lrtrain.train.rank_log).
        self.rank_log: list[dict[str, Any]] = []

    def setup(self, steps_per_epoch: int, total_steps: int) -> None:
        """Told once by the loop before training, so period rules like "once per epoch" can resolve."""
        for what, value in (("steps_per_epoch", steps_per_epoch), ("total_steps", total_steps)):
            if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
                raise ValueError(f"{type(self).__name__}.setup: {what} must be an integer >= 1, got {value!r}"
                                 + (" (an empty data loader?)" if value == 0 else ""))
        self.steps_per_epoch = steps_per_epoch
        self.total_steps = total_steps

    def before_step(self) -> None:
        """Called after ``loss.backward()`` and before ``optimizer.step()``, on unscaled gradients (after
        ``GradScaler.unscale_`` under fp16 AMP: a term added to scaled gradients is divided by the scale)."""

    def after_step(self) -> None:
        """Called after ``optimizer.step()``; counts steps."""
        self.step += 1

    def skip_step(self) -> None:
        """Called instead of `after_step` when the optimizer skipped the step (a ``GradScaler`` that found
        inf/NaN gradients): the step did not happen, so it is not counted, and what `before_step` used up
        for it is kept for the next one (TRP's sub-gradient of the last projection)."""

    @property
    def bn_stale(self) -> bool:
        """True when the method replaced weights (a projection, a decomposition) after the last training
        step's forward pass: the BatchNorm running statistics then describe weights the model no longer
        has, and an evaluation right now should re-estimate them first (the trainer does, on a copy)."""
        return False

    def finalize(self) -> nn.Module:
        """Return the compact model (LowRank layers where the method made them)."""
        return self.model

    def ranks(self) -> dict[str, Any]:
        """Current rank of every layer the method manages (empty for dense training): an int, or a tucker2
        layer's ``(r_in, r_out)`` pair."""
        return {}

    def state_dict(self) -> dict[str, Any]:
        """What a checkpoint keeps of the method to resume it exactly (its step, the settings it was built
        with, and each method's own state: ranks, pending projections...); `load_state_dict` takes it back."""
        settings = {k: v for k, (v, _) in getattr(self, "_settings", {}).items()}
        return {"step": self.step, **({"settings": settings} if settings else {})}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore `state_dict`'s output. On resume the trainer calls this *before* loading the model's
        weights, so a method that changed layer shapes rebuilds those layers here. A setting left at its
        default that the checkpoint's run had otherwise (a default changed since, or a recipe that no longer
        gives it) is warned of."""
        self.step = int(state["step"])
        saved = state.get("settings") or {}  # absent from checkpoints before 2026-11-28
        changed = [f"{k}={v} (the checkpoint's run: {saved[k]})" for k, (v, given) in
                   getattr(self, "_settings", {}).items() if not given and k in saved and saved[k] != v]
        if changed:
            warnings.warn(f"{type(self).__name__}: resumed with settings left at their defaults that differ from "
                          f"the ones the checkpoint's run trained with (a recipe that no longer gives them, or a "
                          f"default changed since): {'; '.join(changed)}; give them explicitly to keep the run's",
                          stacklevel=2)


def decompose(method: Method, compact: nn.Module, ranks: dict[str, Any], scheme, input_size,
              why: str = "") -> nn.Module:
    """`surgery.factorize` of a method's `finalize` at explicit `ranks`, with its own warning where no layer
    is cheaper factorized: in the terms of the call its user made (``TRP.finalize``), pointed at their line
    (past `finalize` and its `linalg.full_precision` wrapper); `why` ends it where the method knows more."""
    decisions = surgery.plan(compact, ranks, scheme, input_size=input_size, linear=False)
    if not any(d.factorize for d in decisions):
        warnings.warn(f"{type(method).__name__}.finalize: no layer was decomposed at its final ranks: each "
                      f"layer's factorized form would cost at least its dense one{why}", stacklevel=4)
    return surgery.carry_out(compact, decisions, scheme)
