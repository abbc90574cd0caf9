"""The inference form of a compact model for one device: each factorized conv kept only where it is faster.

Fewer multiply-accumulates do not always mean less time: on a CPU, the factors of a narrow layer (a CIFAR
ResNet's 16-channel stage at rank 5–9) run at a fraction of the dense conv's MAC rate, so such a layer is
slower factorized than dense although it costs 2–3× fewer FLOPs, while the wider stages gain. `deploy`
times every `LowRankConv2d` against the one conv it computes (`LowRankConv2d.to_dense`), on the input
that layer sees, on the model's device, and keeps the faster; then folds BatchNorm (`fold.fold_batchnorm`).
The function computed is unchanged up to float round-off; the FLOPs of a layer put back dense go up.
"""

from __future__ import annotations

import contextlib
import copy
import statistics
import time
from dataclasses import dataclass
from typing import Any, Callable, Iterator

import torch
from torch import Tensor, nn

from .fold import fold_batchnorm
from .layers import LowRankConv2d
from .metrics import _forward, _inference, _sync
from .surgery import replace_module

Timer = Callable[[nn.Module, nn.Module, Tensor], tuple[float, float]]


@dataclass(frozen=True)
class LayerChoice:
    """What `deploy` measured for one factorized conv, and which form it kept."""

    name: str
    rank: object
    input_shape: tuple[int, ...]
    dense_ms: float
    factorized_ms: float

    @property
    def factorized(self) -> bool:
        return self.factorized_ms < self.dense_ms


LAYOUTS = ("as_is", "contiguous", "channels_last", "auto")


def deploy(model: nn.Module, input_size=(1, 3, 32, 32), fold_bn: bool = True, rounds: int = 5, iters: int = 10,
           timer: Timer | None = None, layout: str = "as_is", progress: bool = False
           ) -> tuple[nn.Module, list[LayerChoice]]:
    """A copy of `model` for inference on its device, at batches of ``input_size``, and what was measured.

        >>> import lrtrain as lr
        >>> compact = lr.factorize(lr.models.create("resnet20"), rank="flops:0.45").eval()
        >>> fast, choices = lr.deploy(compact, input_size=(8, 3, 32, 32), rounds=1, iters=2)
        >>> len(choices) == sum(isinstance(m, lr.LowRankConv2d) for m in compact.modules())
        True

    Each factorized conv and its dense equivalent are timed on the input that layer receives for an input
    of ``input_size``: ``rounds`` interleaved rounds of ``iters`` calls, the median round kept (``timer``
    replaces this measurement: ``timer(dense, factorized, x)`` returns the seconds of each; under
    ``layout="auto"`` it also times the two whole models). A layer stays factorized only where that is
    faster; with ``fold_bn`` the BatchNorms are then folded into the convs. The result is in eval mode and
    computes what ``model.eval()`` computes, up to float round-off. Decisions hold for that device, batch
    size and thread count only: deploy where the model will run.

    ``layout`` is the memory layout of the weights (and so of the activations): ``"as_is"`` keeps the
    model's, ``"contiguous"`` (NCHW) or ``"channels_last"`` sets one, and ``"auto"`` deploys in both and
    keeps the model that runs a batch of ``input_size`` faster (timed the same way, as whole models). On
    a CPU the narrow k×k factors of a low-rank layer (4-8 output channels) run several times faster in
    channels_last than in NCHW, so ``"auto"`` is the choice there. ``progress`` shows a bar over the layers
    timed, on a terminal (a ResNet-50 at batch 32 takes minutes on a CPU).
    """
    if layout not in LAYOUTS:
        raise ValueError(f"deploy: layout must be one of {', '.join(LAYOUTS)}, got {layout!r}")
    from tqdm import tqdm

    timer = timer or _interleaved(rounds, iters)
    layers = sum(isinstance(m, LowRankConv2d) for m in model.modules()) * (2 if layout == "auto" else 1)
    with tqdm(total=layers, desc="deploy: timing layers", leave=False, dynamic_ncols=True,
              disable=None if progress else True) as bar:
        if layout != "auto":
            return _deploy(_laid_out(model, layout), input_size, fold_bn, timer, bar.update)
        candidates = [_deploy(_laid_out(model, f), input_size, fold_bn, timer, bar.update)
                      for f in ("contiguous", "channels_last")]
        with _random_batch(candidates[0][0], input_size) as x:
            contiguous_s, channels_last_s = timer(candidates[0][0], candidates[1][0], x)
        return candidates[1] if channels_last_s < contiguous_s else candidates[0]


def _laid_out(model: nn.Module, layout: str) -> nn.Module:
    """A copy of `model` in `layout` (the one `_deploy` then changes)."""
    if layout == "as_is":
        return copy.deepcopy(model)
    fmt = torch.channels_last if layout == "channels_last" else torch.contiguous_format
    # 4-D tensors only: Module.to(memory_format=channels_last) refuses a model holding any 5-D one (Conv3d)
    return copy.deepcopy(model)._apply(lambda t: t.contiguous(memory_format=fmt) if t.dim() == 4 else t)


def _deploy(deployed: nn.Module, input_size, fold_bn: bool, timer: Timer,
            timed: Callable[[], Any] = lambda: None) -> tuple[nn.Module, list[LayerChoice]]:
    """`deploy` at one layout, changing `deployed` (a copy) in place; `timed` is called at each layer."""
    deployed.eval()
    inputs = _layer_inputs(deployed, input_size)
    choices = []
    with torch.no_grad():
        for name, layer in list(deployed.named_modules()):
            if not isinstance(layer, LowRankConv2d):
                continue
            timed()
            if name not in inputs:  # not called by the forward pass: nothing to time
                continue
            dense = layer.to_dense()
            x = inputs[name]
            # laid out as the model runs: a k×k factor's weight or the activations say how (a 1×1 weight
            # is contiguous in both layouts; the first layer sees the caller's input)
            if any(_channels_last(t) for t in (*layer.parameters(), x)):
                dense = dense.to(memory_format=torch.channels_last)
            dense_s, factorized_s = timer(dense, layer, x)
            choice = LayerChoice(name, layer.rank, tuple(x.shape), 1000 * dense_s, 1000 * factorized_s)
            if not choice.factorized:
                replace_module(deployed, name, dense)
            choices.append(choice)
    if fold_bn:
        deployed = fold_batchnorm(deployed, input_size, inplace=True)
    return deployed.eval(), choices


def layout_of(model: nn.Module) -> str:
    """``"channels_last"`` where a 4-D weight of `model` is laid out so, else ``"contiguous"``."""
    return "channels_last" if any(_channels_last(p) for p in model.parameters()) else "contiguous"


def _channels_last(t: Tensor) -> bool:
    return t.dim() == 4 and t.is_contiguous(memory_format=torch.channels_last) and not t.is_contiguous()


def _layer_inputs(model: nn.Module, input_size) -> dict[str, Tensor]:
    """The input each `LowRankConv2d` receives in a forward pass of random data of ``input_size``."""
    seen: dict[str, Tensor] = {}
    hooks = [m.register_forward_pre_hook(lambda mod, args, name=name: seen.setdefault(name, args[0].clone()))
             for name, m in model.named_modules() if isinstance(m, LowRankConv2d)]
    try:
        with _random_batch(model, input_size) as x:
            _forward(model, x)  # a ValueError naming input_size where it does not fit the model
    finally:
        for h in hooks:
            h.remove()
    return seen


@contextlib.contextmanager
def _random_batch(model: nn.Module, input_size) -> Iterator[Tensor]:
    """Eval mode and no_grad for the block, yielding one fixed random batch of ``input_size`` on the model's
    device and dtype (the caller's random streams stay as they were)."""
    with _inference(model, input_size) as x:
        g = torch.Generator(device=x.device).manual_seed(0)
        yield torch.randn(x.shape, generator=g, device=x.device, dtype=x.dtype)


def _interleaved(rounds: int, iters: int) -> Timer:
    """Median seconds per call of each module over `rounds` rounds of `iters` calls, the two modules
    alternating, so a drift of a shared machine slows both alike."""
    if rounds < 1 or iters < 1:
        raise ValueError(f"deploy needs rounds >= 1 and iters >= 1, got rounds={rounds}, iters={iters}")

    def timer(first: nn.Module, second: nn.Module, x: Tensor) -> tuple[float, float]:
        pair = (first, second)
        for f in pair:  # warm-up: allocator, oneDNN primitives, cuDNN autotuning
            f(x)
            f(x)
        times: tuple[list[float], list[float]] = ([], [])
        for _ in range(rounds):
            for f, spent in zip(pair, times):
                _sync(x.device)
                start = time.perf_counter()
                for _ in range(iters):
                    f(x)
                _sync(x.device)
                spent.append((time.perf_counter() - start) / iters)
        return statistics.median(times[0]), statistics.median(times[1])

    return timer
