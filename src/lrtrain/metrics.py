"""FLOPs (multiply-accumulates), parameters and latency of any model made of Conv2d/Linear leaves.

`count` is analytic: one forward pass with hooks on every ``nn.Conv2d`` and ``nn.Linear`` records the
shapes each one sees, and the MACs follow from them. It therefore works for factorized layers too (a
low-rank conv is a container of small convs: its leaves are counted). `flop_counter_macs` gives an
independent figure from ``torch.utils.flop_counter`` to check it against. Both count per sample:
the batch size of ``input_size`` changes nothing.
"""

from __future__ import annotations

import math
import statistics
import time
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from typing import Iterator

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

Shape = tuple[int, ...]
_COUNTED = (nn.Conv2d, nn.Linear)


@dataclass(frozen=True)
class LayerCount:
    """One Conv2d/Linear leaf: MACs per sample, own parameters, and its first call's shapes."""

    flops: int
    params: int
    kind: str  # "conv" or "linear"
    in_shape: Shape
    out_shape: Shape


@dataclass(frozen=True)
class Counts:
    """MACs per sample of all conv/linear leaves, parameters of the whole model, and per-layer detail."""

    flops: int
    params: int
    layers: dict[str, LayerCount] = field(default_factory=dict)

    def __str__(self) -> str:
        return (f"{self.flops / 1e6:,.2f} M MACs, {self.params / 1e6:,.3f} M params "
                f"({len(self.layers)} conv/linear layers)")


def _check_size(input_size) -> tuple[int, int, int, int]:
    if not (
        isinstance(input_size, (tuple, list))
        and len(input_size) == 4
        and all(isinstance(d, int) and not isinstance(d, bool) and d > 0 for d in input_size)
    ):
        raise ValueError(
            f"input_size must be 4 positive ints (batch, channels, height, width), got {input_size!r}"
        )
    return tuple(input_size)


def _reference(model: nn.Module) -> torch.Tensor | None:
    return next((t for t in (*model.parameters(), *model.buffers()) if t.is_floating_point()), None)


def model_device(model: nn.Module) -> torch.device:
    """Where `model`'s floating-point tensors are (the CPU for a model without any)."""
    ref = _reference(model)
    return ref.device if ref is not None else torch.device("cpu")


def model_dtype(model: nn.Module) -> torch.dtype:
    """The dtype of `model`'s floating-point tensors (float32 for a model without any): what its input
    must be in (a half-precision compact model stays one when loaded)."""
    ref = _reference(model)
    return ref.dtype if ref is not None else torch.float32


@contextmanager
def eval_mode(model: nn.Module) -> Iterator[None]:
    """`model` in eval mode for the block (`module_mode`)."""
    with module_mode(model, training=False):
        yield


@contextmanager
def module_mode(model: nn.Module, training: bool) -> Iterator[None]:
    """`model` in train or eval mode for the block; every submodule's own mode is restored afterwards, not
    just the root's: a model may be partly frozen in eval mode on purpose."""
    modes = [(m, m.training) for m in model.modules()]
    model.train(training)
    try:
        yield
    finally:
        for m, was in modes:
            m.training = was


@contextmanager
def _inference(model: nn.Module, input_size, device=None) -> Iterator[torch.Tensor]:
    """Eval mode (`eval_mode`) and no_grad for the block, yielding a zero input on the model's device and
    dtype."""
    size = _check_size(input_size)
    x = torch.zeros(size, device=device or model_device(model), dtype=model_dtype(model))
    with eval_mode(model), torch.no_grad():
        yield x


def _forward(model: nn.Module, x: torch.Tensor) -> None:
    try:
        model(x)
    except torch.OutOfMemoryError:
        raise  # the memory, not the input size, is short
    except Exception as err:
        raise ValueError(
            f"{type(model).__name__} cannot run on input_size {tuple(x.shape)}: {err}"
        ) from err


def _trace(model: nn.Module, input_size) -> list[tuple[str, nn.Module, Shape, Shape]]:
    """Every call of a Conv2d/Linear leaf during one forward pass: (name, module, in, out shapes)."""
    calls: list[tuple[str, nn.Module, Shape, Shape]] = []
    handles = [
        m.register_forward_hook(
            lambda mod, args, out, name=name: calls.append(
                (name, mod, tuple(args[0].shape), tuple(out.shape))
            )
        )
        for name, m in model.named_modules()
        if isinstance(m, _COUNTED)
    ]
    try:
        with _inference(model, input_size) as x:
            _forward(model, x)
    finally:
        for h in handles:
            h.remove()
    return calls


def trace_shapes(model: nn.Module, input_size=(1, 3, 32, 32)) -> dict[str, tuple[Shape, Shape]]:
    """``{name: (input shape, output shape)}`` of every Conv2d/Linear leaf, batch dimension included.

    A module called more than once reports its first call (`trace_calls` has them all).
    """
    return {name: calls[0] for name, calls in trace_calls(model, input_size).items()}


def trace_calls(model: nn.Module, input_size=(1, 3, 32, 32)) -> dict[str, list[tuple[Shape, Shape]]]:
    """``{name: [(input shape, output shape) of each call]}`` of every Conv2d/Linear leaf, in call order."""
    calls: dict[str, list[tuple[Shape, Shape]]] = {}
    for name, _, in_shape, out_shape in _trace(model, input_size):
        calls.setdefault(name, []).append((in_shape, out_shape))
    return calls


def _macs(module: nn.Module, in_shape: Shape, out_shape: Shape, batch: int) -> int:
    if isinstance(module, nn.Conv2d):
        kh, kw = module.kernel_size
        return math.prod(out_shape) // batch * (module.in_channels // module.groups) * kh * kw
    rows = math.prod(in_shape[:-1]) // batch
    return rows * module.in_features * module.out_features


def count(model: nn.Module, input_size=(1, 3, 32, 32)) -> Counts:
    """MACs per sample of every Conv2d/Linear leaf at ``input_size``, and all parameters of ``model``.

    The model runs once, in eval mode under no_grad (its modes are restored), on a zero input of the
    model's device and dtype. A layer called more than once has the MACs of all its calls. Only Conv2d and
    Linear modules count, as the papers count CNNs: other layers that multiply (ConvTranspose2d, Conv1d/3d,
    attention's products, a functional ``F.conv2d``) are left out of `flops` and of the FLOPs budgets built
    on it; `flop_counter_macs` sees them all, so comparing the two says how much a model holds of them.

    >>> import lrtrain.models as models
    >>> c = count(models.create("resnet20"))
    >>> c.params, c.flops, c.layers["layer1.0.conv1"].flops
    (269722, 40551040, 2359296)
    """
    batch = _check_size(input_size)[0]
    layers: dict[str, LayerCount] = {}
    for name, module, in_shape, out_shape in _trace(model, input_size):
        flops = _macs(module, in_shape, out_shape, batch)
        if name in layers:
            prev = layers[name]
            layers[name] = LayerCount(prev.flops + flops, prev.params, prev.kind, prev.in_shape,
                                      prev.out_shape)
        else:
            params = sum(p.numel() for p in module.parameters())
            kind = "conv" if isinstance(module, nn.Conv2d) else "linear"
            layers[name] = LayerCount(flops, params, kind, in_shape, out_shape)
    return Counts(
        flops=sum(layer.flops for layer in layers.values()),
        params=sum(p.numel() for p in model.parameters()),
        layers=layers,
    )


def flop_counter_macs(model: nn.Module, input_size=(1, 3, 32, 32)) -> int:
    """MACs per sample measured by ``torch.utils.flop_counter`` (which reports 2 FLOPs per MAC).

    It sees every matmul-like op, not only Conv2d/Linear modules, so it cross-checks `count`.
    """
    batch = _check_size(input_size)[0]
    with _inference(model, input_size) as x, FlopCounterMode(display=False) as counter:
        _forward(model, x)
    return counter.get_total_flops() // 2 // batch


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def latency(model: nn.Module, input_size=(1, 3, 32, 32), warmup: int = 5, iters: int = 20,
            device: str | torch.device | None = None, threads: int | None = None) -> float:
    """Median wall-clock seconds of one forward pass on a batch of ``input_size`` (eval, no_grad).

    ``device`` moves the model there for the measurement and back afterwards (default: where it is).
    ``threads`` sets ``torch.set_num_threads`` for the measurement only.
    """
    return statistics.median(_pass_times([model], input_size, warmup, iters, device, threads)[0])


def latency_ratio(reference: nn.Module, model: nn.Module, input_size=(1, 3, 32, 32), warmup: int = 5,
                  iters: int = 20, device: str | torch.device | None = None, threads: int | None = None) -> float:
    """How many times faster ``model`` runs a forward pass than ``reference``: the ratio of their median
    times, their passes taken in turns (reference, model, reference, ...), so that a machine whose load
    changes during the measurement slows both alike. Arguments as `latency`'s.
    """
    ref_times, times = _pass_times([reference, model], input_size, warmup, iters, device, threads)
    return statistics.median(ref_times) / statistics.median(times)


def _pass_times(nets: list[nn.Module], input_size, warmup: int, iters: int, device, threads) -> list[list[float]]:
    """Per model, the seconds of its ``iters`` timed forward passes (after ``warmup``), all models in turns."""
    if warmup < 0 or iters < 1:
        raise ValueError(f"need warmup >= 0 and iters >= 1, got warmup={warmup}, iters={iters}")
    homes = []
    for net in nets:
        ref = next(net.parameters(), None)
        homes.append(ref.device if ref is not None else torch.device("cpu"))
    target = torch.device(device) if device is not None else homes[0]
    prev_threads = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    times: list[list[float]] = [[] for _ in nets]
    try:
        with ExitStack() as stack:
            inputs = []
            for net in nets:
                net.to(target)
                inputs.append(stack.enter_context(_inference(net, input_size, target)))
            for i in range(warmup + iters):
                for net, x, kept in zip(nets, inputs, times):
                    _sync(target)
                    start = time.perf_counter()
                    _forward(net, x)
                    _sync(target)
                    if i >= warmup:
                        kept.append(time.perf_counter() - start)
    finally:
        for net, home in zip(nets, homes):
            net.to(home)
        torch.set_num_threads(prev_threads)
    return times
