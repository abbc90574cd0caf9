"""Save and load compact models as plain data, and export them for deployment.

A compact model is saved as ``{"format", "arch", "state_dict"}`` where ``arch`` names the registry model it
started from and describes every layer that differs from it (a low-rank conv and its rank, a removed
layer...). Loading rebuilds the model from the registry, replaces those layers, and loads the weights:
no pickled code, so files load with ``torch.load(weights_only=True)`` and need no training code.

    >>> import lrtrain as lr, tempfile, os
    >>> model = lr.factorize(lr.models.create("resnet20"), rank=lr.FlopsBudget(0.5))
    >>> path = os.path.join(tempfile.mkdtemp(), "compact.pt")
    >>> lr.save(model, path, model_name="resnet20", num_classes=10)
    >>> type(lr.load(path).layer1[0].conv1).__name__
    'LowRankConv2d'
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from . import models
from .layers import LowRankConv2d, LowRankLinear
from .surgery import replace_module

FORMAT = 1


def _conv_spec(m: nn.Conv2d) -> dict[str, Any]:
    return {"in_channels": m.in_channels, "out_channels": m.out_channels, "kernel_size": list(m.kernel_size),
            "stride": list(m.stride), "padding": list(m.padding), "dilation": list(m.dilation),
            "groups": m.groups, "bias": m.bias is not None}


def _lowrank_conv_spec(m: LowRankConv2d) -> dict[str, Any]:
    g = m.geometry
    rank = list(m.rank) if isinstance(m.rank, tuple) else m.rank
    return {"in_channels": g.in_channels, "out_channels": g.out_channels, "kernel_size": list(g.kernel_size),
            "stride": list(g.stride), "padding": list(g.padding), "dilation": list(g.dilation), "bias": g.bias,
            "scheme": m.scheme.name, "rank": rank}


def _build_lowrank_conv(s: dict[str, Any]) -> LowRankConv2d:
    rank = tuple(s["rank"]) if isinstance(s["rank"], list) else s["rank"]
    return LowRankConv2d(s["in_channels"], s["out_channels"], tuple(s["kernel_size"]), rank, s["scheme"],
                         tuple(s["stride"]), tuple(s["padding"]), tuple(s["dilation"]), s["bias"])


# type name -> (module -> spec, spec -> module). Methods with layer types of their own register them here.
LAYER_TYPES: dict[str, tuple[type, Callable[[nn.Module], dict], Callable[[dict], nn.Module]]] = {
    "LowRankConv2d": (LowRankConv2d, _lowrank_conv_spec, _build_lowrank_conv),
    "LowRankLinear": (LowRankLinear,
                      lambda m: {"in_features": m.in_features, "out_features": m.out_features, "rank": m.rank,
                                 "bias": m.bias is not None},
                      lambda s: LowRankLinear(s["in_features"], s["out_features"], s["rank"], s["bias"])),
    "Conv2d": (nn.Conv2d, _conv_spec,
               lambda s: nn.Conv2d(s["in_channels"], s["out_channels"], tuple(s["kernel_size"]), tuple(s["stride"]),
                                   tuple(s["padding"]), tuple(s["dilation"]), s["groups"], s["bias"])),
}


def register_layer_type(cls: type, describe: Callable[[nn.Module], dict], build: Callable[[dict], nn.Module]) -> None:
    """Teach `save`/`load` a layer type of its own (e.g. a method's removed-layer placeholder)."""
    LAYER_TYPES[cls.__name__] = (cls, describe, build)


def _same(a: nn.Module, b: nn.Module) -> bool:
    return type(a) is type(b) and (not isinstance(a, nn.Conv2d) or _conv_spec(a) == _conv_spec(b))


def describe(model: nn.Module, model_name: str, num_classes: int, **extra: Any) -> dict[str, Any]:
    """The plain-data architecture of `model` relative to ``models.create(model_name, num_classes)``."""
    base = dict(models.create(model_name, num_classes=num_classes).named_modules())
    layers: dict[str, dict[str, Any]] = {}
    covered: list[str] = []
    for name, module in model.named_modules():
        if not name or any(name.startswith(c + ".") for c in covered):
            continue
        kind = type(module).__name__
        if kind in LAYER_TYPES and not (name in base and _same(base[name], module)):
            layers[name] = {"type": kind, **LAYER_TYPES[kind][1](module)}
            covered.append(name)
    return {"model": model_name, "num_classes": num_classes, "layers": layers, **extra}


def rebuild(arch: dict[str, Any]) -> nn.Module:
    """The module `describe` described, with freshly initialized weights."""
    model = models.create(arch["model"], num_classes=arch["num_classes"])
    for name, spec in arch["layers"].items():
        if spec["type"] not in LAYER_TYPES:
            raise ValueError(f"layer {name!r} has type {spec['type']!r}, which this version of lrtrain cannot "
                             f"build (known: {', '.join(LAYER_TYPES)})")
        replace_module(model, name, LAYER_TYPES[spec["type"]][2](spec))
    return model


def save(model: nn.Module, path: str | Path, model_name: str, num_classes: int, **extra: Any) -> None:
    """Write `model` (a registry model, possibly with low-rank layers) so that `load` rebuilds it."""
    from .train.checkpoint import atomic_write

    arch = describe(model, model_name, num_classes, **extra)
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    atomic_write(path, lambda f: torch.save({"format": FORMAT, "arch": arch, "state_dict": state}, f))


def load(path: str | Path, map_location: str | torch.device = "cpu") -> nn.Module:
    """Load a model written by `save` (or a run's ``compact.pt``), in eval mode."""
    try:
        blob = torch.load(path, map_location=map_location, weights_only=True)
    except FileNotFoundError:
        raise
    except Exception as err:  # truncated or corrupt files raise several error types
        raise ValueError(f"cannot read compact model {path}: {err}") from None
    if not isinstance(blob, dict) or "arch" not in blob or "state_dict" not in blob:
        raise ValueError(f"{path} is not a compact model written by lrtrain (no 'arch'/'state_dict')")
    model = rebuild(blob["arch"])
    try:
        model.load_state_dict(blob["state_dict"])
    except RuntimeError as err:
        raise ValueError(f"{path}: the weights do not fit the described architecture: {err}") from None
    return model.eval()
