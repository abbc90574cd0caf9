"""Decompose-then-fine-tune, the classic low-rank baseline, in one run.

The model trains dense for a fraction of the steps (or starts from a pretrained checkpoint), is then
factorized once by truncated SVD (`surgery.factorize` with a rank policy and a scheme), and the factorized
model is fine-tuned for the remaining steps. The swap changes the model's parameters, so the method asks
the loop to rebuild its optimizer, and its state records the chosen ranks so that a run interrupted after
the swap resumes into the same factorized structure.
"""

from __future__ import annotations

import math
from typing import Any, Iterable

from torch import nn

from .. import linalg, surgery
from ..layers import LowRankConv2d, LowRankLinear
from ..pretrained import load_pretrained
from ..ranks import FlopsBudget, parse_policy
from ..schemes import get_scheme
from . import register_method
from .base import Method


@register_method("svd_finetune")
class SVDFinetune(Method):
    """Train dense, factorize by truncated SVD at ``dense_fraction`` of the steps, fine-tune the rest.

        >>> import torch, lrtrain as lr
        >>> model = lr.models.create("resnet20")
        >>> method = lr.SVDFinetune(model, rank="flops:0.45", dense_fraction=0.5)
        >>> method.setup(steps_per_epoch=2, total_steps=4)
        >>> opt = torch.optim.SGD(method.model.parameters(), lr=0.05)
        >>> for _ in range(2):
        ...     method.model(torch.randn(8, 3, 32, 32)).square().mean().backward()
        ...     method.before_step(); opt.step(); opt.zero_grad(); method.after_step()
        >>> method.rebuild_optimizer          # the swap happened: the loop builds a new optimizer
        True
        >>> lr.count(method.model).flops <= 0.45 * lr.count(lr.models.create("resnet20")).flops
        True

    Args:
        model: the network (factorized in place at the swap).
        rank: rank policy of the swap (``"flops:0.45"``, ``"energy:0.9"``, ``lr.Energy(0.9)``, an int, or
            ``{layer name: rank}``).
        scheme: ``"channel"``, ``"spatial"``, ``"decoupled"`` or ``"tucker2"``.
        dense_fraction: fraction of the total steps trained dense before the swap, rounded half up to
            whole epochs, at most all epochs but one; default 0.5, or 0 when `init` is given (the swap then
            happens at construction). When it rounds to 0 epochs, `setup` swaps.
        init: path of a pretrained checkpoint to start from: a state_dict, or a dict holding one under
            ``"model"`` or ``"state_dict"`` (a lrtrain checkpoint or compact.pt of a dense run).
        skip: fnmatch patterns of layer names kept dense.
        linear: also factorize linear layers (the classifier); off by default, as in the papers.
        input_size: input shape used to trace the model (layer FLOPs for the rank policy).
    """

    path_params = ("init",)

    def __init__(self, model: nn.Module, rank: Any = "flops:0.45", scheme: str = "channel",
                 dense_fraction: float | None = None, init: str | None = None, skip: Iterable[str] = (),
                 linear: bool = False, input_size=(1, 3, 32, 32)):
        super().__init__(model)
        self.rank = rank if isinstance(rank, dict) else parse_policy(rank)
        self.scheme = get_scheme(scheme)
        self.skip = surgery.skip_patterns(skip)
        self.linear = bool(linear)
        self.input_size = tuple(input_size)
        if dense_fraction is None:
            dense_fraction = 0.0 if init is not None else 0.5
        if not 0.0 <= float(dense_fraction) < 1.0:
            raise ValueError(f"SVDFinetune: dense_fraction must be in [0, 1) (the part of the steps trained "
                             f"dense before the swap), got {dense_fraction!r}")
        self.dense_fraction = float(dense_fraction)
        cands, skipped = surgery.candidates(model, self.scheme, self.skip, self.input_size, self.linear)
        if not cands:  # found now, not at the swap halfway through training
            raise ValueError(f"SVDFinetune: no layer of {type(model).__name__} can be factorized under scheme "
                             f"{self.scheme.name!r} ({surgery.why_none(skipped, model)})")
        if init is not None:
            load_pretrained(model, init, owner="SVDFinetune init")
        self.swapped = False
        self.swap_step: int | None = None
        self._swapped_at: int | None = None  # the step at which the swap happened
        self._ranks: dict[str, Any] = {}
        if self.dense_fraction == 0.0:
            self.swap()
            self.rebuild_optimizer = False  # no optimizer exists yet: the loop builds it over the factorized model
        else:  # an impossible rank (a rank out of range, an unreachable budget) found now, not at the swap
            try:
                if isinstance(self.rank, dict):
                    surgery.plan(model, self.rank, self.scheme, self.skip, self.input_size, self.linear)
                elif isinstance(self.rank, FlopsBudget):  # its floor, without the spectra the swap will use
                    self.rank([c.request for c in cands], fixed_cost=sum(d.dense_flops for d in skipped))
            except ValueError as err:
                raise ValueError(f"SVDFinetune: rank {rank!r}: {err}") from None

    def setup(self, steps_per_epoch: int, total_steps: int) -> None:
        super().setup(steps_per_epoch, total_steps)
        epochs = total_steps / steps_per_epoch
        # half up (not Python's half-to-even), and at least one epoch left to fine-tune
        dense_epochs = min(math.floor(self.dense_fraction * epochs + 0.5), max(math.ceil(epochs) - 1, 0))
        self.swap_step = dense_epochs * steps_per_epoch
        if self.swap_step == 0 and not self.swapped:  # fine-tune from the first step
            self.swap()
            self.rebuild_optimizer = False  # setup comes before the optimizer (see `base`)

    def after_step(self) -> None:
        super().after_step()
        if self.swapped:
            return
        if self.swap_step is None:
            raise RuntimeError("SVDFinetune needs the loop to call setup(steps_per_epoch=..., total_steps=...) "
                               "before training, to know when to swap to the factorized model")
        if self.step >= self.swap_step:
            self.swap()

    @linalg.full_precision()
    def swap(self, ranks: dict[str, Any] | None = None) -> None:
        """Factorize the model now, by the rank policy or by explicit `ranks`; the loop must rebuild its optimizer."""
        if self.swapped:
            raise RuntimeError("SVDFinetune: the model is already factorized")
        surgery.factorize(self.model, rank=self.rank if ranks is None else ranks, scheme=self.scheme,
                          skip=self.skip, input_size=self.input_size, linear=self.linear)
        self._ranks = {name: m.rank for name, m in self.model.named_modules()
                       if isinstance(m, (LowRankConv2d, LowRankLinear))}
        self.swapped = True
        self._swapped_at = self.step
        self.rebuild_optimizer = True
        for name, r in self._ranks.items():
            m = self.model.get_submodule(name)
            top = (self.scheme.max_rank(m.geometry) if isinstance(m, LowRankConv2d)
                   else min(m.in_features, m.out_features))
            self.rank_log.append({"step": self.step, "layer": name, "rank": r, "max_rank": top})

    @property
    def bn_stale(self) -> bool:
        return self._swapped_at == self.step

    def finalize(self) -> nn.Module:
        """The factorized model (factorized now, without fine-tuning, if training stopped before the swap)."""
        if not self.swapped:
            self.swap()
        return self.model

    def ranks(self) -> dict[str, Any]:
        return dict(self._ranks)

    def state_dict(self) -> dict[str, Any]:
        # tucker2 ranks are (r_in, r_out) pairs: stored as lists, plain data for weights_only loading
        return {**super().state_dict(), "swapped": self.swapped, "swapped_at": self._swapped_at,
                "ranks": {n: list(r) if isinstance(r, tuple) else r for n, r in self._ranks.items()}}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore the step and, for a run saved after the swap, rebuild the factorized structure.

        Call it before loading the model's weights (the trainer does): the factorized layers must exist
        for the saved weights to fit. Their values until then are those of the current dense weights.
        """
        super().load_state_dict(state)
        if state["swapped"] and not self.swapped:
            self.swap({n: tuple(r) if isinstance(r, list) else int(r) for n, r in state["ranks"].items()})
            self.rank_log.clear()  # logged by the interrupted run already
            self._swapped_at = state.get("swapped_at")  # absent from checkpoints of older versions
            self.rebuild_optimizer = False  # the loop builds its optimizer after loading a checkpoint
        elif self.swapped and not state["swapped"]:
            raise ValueError("SVDFinetune: this state was saved before the swap, but the model is already "
                             "factorized (dense_fraction=0 or init= given); it cannot be resumed here")
