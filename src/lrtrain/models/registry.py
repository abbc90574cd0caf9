"""A name -> builder registry, in the style of timm, plus the torchvision ImageNet models we use.

Builders are plain functions ``builder(num_classes=..., **kwargs) -> nn.Module``, filed with
`register_model` together with the input size the model is meant for (CIFAR models see 32×32,
ImageNet models 224×224), so FLOPs counting and benchmarks need no per-model knowledge.
"""

from __future__ import annotations

import difflib
import fnmatch
from dataclasses import dataclass
from typing import Callable

from torch import nn

CIFAR_INPUT = (1, 3, 32, 32)
IMAGENET_INPUT = (1, 3, 224, 224)


@dataclass(frozen=True)
class _Entry:
    builder: Callable[..., nn.Module]
    input_size: tuple[int, int, int, int]


_REGISTRY: dict[str, _Entry] = {}


def init_conv_bn_(model: nn.Module) -> None:
    """He (fan-out) init of every conv, unit scale and zero shift of every BatchNorm (He et al. 2016).

    The classifier keeps PyTorch's default init: fan-out Kaiming on a 64→10 layer starts with large logits.
    """
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


def register_model(fn: Callable[..., nn.Module] | None = None, *, name: str | None = None,
                   input_size: tuple[int, int, int, int] = CIFAR_INPUT):
    """File a builder under ``name`` (default: the function's name); usable bare or with arguments.

    ``@register_model`` or ``@register_model(input_size=(1, 3, 224, 224))``. Returns the builder
    unchanged, so it can still be called directly.
    """

    def decorate(builder: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        key = name or builder.__name__
        if key in _REGISTRY:
            raise ValueError(f"model {key!r} is already registered")
        _REGISTRY[key] = _Entry(builder, tuple(input_size))
        return builder

    return decorate(fn) if fn is not None else decorate


def _entry(name: str) -> _Entry:
    try:
        return _REGISTRY[name]
    except KeyError:
        close = difflib.get_close_matches(name, _REGISTRY, n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise ValueError(
            f"unknown model {name!r}.{hint} Valid names: {', '.join(sorted(_REGISTRY))}"
        ) from None


def create(name: str, num_classes: int | None = 10, **kwargs) -> nn.Module:
    """Build the registered model ``name`` with freshly initialized weights (nothing is downloaded).

    Keyword arguments that are ``None`` are dropped, so callers can forward optional config values
    as they are and let the builder's default apply (``num_classes=None`` gives torchvision models
    their 1000 ImageNet classes).

    >>> import torch, lrtrain.models as models
    >>> net = models.create("resnet20", num_classes=10)
    >>> net(torch.zeros(2, 3, 32, 32)).shape
    torch.Size([2, 10])
    >>> models.create("resnet65")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    ValueError: unknown model 'resnet65'. Did you mean 'resnet56'? Valid names: ...
    """
    if num_classes is not None and (isinstance(num_classes, bool) or not isinstance(num_classes, int)
                                    or num_classes < 1):
        raise ValueError(f"{name}: num_classes must be a positive integer, got {num_classes!r}")
    kwargs = {k: v for k, v in dict(kwargs, num_classes=num_classes).items() if v is not None}
    return _entry(name).builder(**kwargs)


def list_models(pattern: str = "*") -> list[str]:
    """Sorted names of the registered models matching the shell-style ``pattern``."""
    return sorted(n for n in _REGISTRY if fnmatch.fnmatchcase(n, pattern))


def default_input_size(name: str) -> tuple[int, int, int, int]:
    """The (batch, channels, height, width) input ``name`` is designed for, with batch 1."""
    return _entry(name).input_size


# torchvision is imported inside the builders: importing lrtrain.models stays cheap.

@register_model(input_size=IMAGENET_INPUT)
def resnet18(num_classes: int = 1000, **kwargs) -> nn.Module:
    """torchvision ResNet-18 (ImageNet, ≈1.82 G MACs at 224×224)."""
    from torchvision import models

    return models.resnet18(weights=None, num_classes=num_classes, **kwargs)


@register_model(input_size=IMAGENET_INPUT)
def resnet50(num_classes: int = 1000, **kwargs) -> nn.Module:
    """torchvision ResNet-50 (ImageNet, ≈4.1 G MACs at 224×224)."""
    from torchvision import models

    return models.resnet50(weights=None, num_classes=num_classes, **kwargs)


@register_model(input_size=IMAGENET_INPUT)
def mobilenet_v2(num_classes: int = 1000, **kwargs) -> nn.Module:
    """torchvision MobileNetV2 (ImageNet, ≈0.3 G MACs at 224×224)."""
    from torchvision import models

    return models.mobilenet_v2(weights=None, num_classes=num_classes, **kwargs)
