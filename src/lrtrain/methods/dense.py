"""Plain training: the baseline every compression method is compared with."""

from __future__ import annotations

from . import register_method
from .base import Method


@register_method("dense")
class Dense(Method):
    """No-op method: every hook keeps the base behaviour and `finalize` returns the model unchanged.

    >>> import torch
    >>> model = torch.nn.Linear(4, 2)
    >>> Dense(model).finalize() is model
    True
    """
