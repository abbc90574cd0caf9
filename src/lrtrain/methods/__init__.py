"""Training methods on the hook protocol of `base.Method`, filed by name in one registry.

A method module registers its class with `register_method`; recipes and the CLI build one with
`create_method`, which checks the recipe's parameters against the class's constructor::

    >>> import torch
    >>> method = create_method("dense", torch.nn.Linear(4, 2))
    >>> type(method).__name__, method.name
    ('Dense', 'dense')
    >>> create_method("dense", torch.nn.Linear(4, 2), period=5)
    Traceback (most recent call last):
    ...
    ValueError: method 'dense' takes no parameter 'period' (it takes none)
"""

from __future__ import annotations

import difflib
import fnmatch
import inspect
from typing import Any, Callable

from torch import nn

from .base import Method

_REGISTRY: dict[str, type[Method]] = {}


def register_method(name: str) -> Callable[[type[Method]], type[Method]]:
    """Class decorator filing a `Method` subclass under ``name`` (also set as its ``name`` attribute)."""

    def decorate(cls: type[Method]) -> type[Method]:
        if name in _REGISTRY:
            raise ValueError(f"method {name!r} is already registered (by {_REGISTRY[name].__qualname__})")
        cls.name = name
        _REGISTRY[name] = cls
        return cls

    return decorate


def list_methods(pattern: str = "*") -> list[str]:
    """Sorted names of the registered methods matching the shell-style ``pattern``."""
    return sorted(n for n in _REGISTRY if fnmatch.fnmatchcase(n, pattern))


def _method_class(name: str) -> type[Method]:
    try:
        return _REGISTRY[name]
    except KeyError:
        close = difflib.get_close_matches(name, _REGISTRY, n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise ValueError(f"unknown method {name!r}.{hint} Valid names: {', '.join(list_methods())}") from None


def create_method(name: str, model: nn.Module, **params: Any) -> Method:
    """Build the method ``name`` on ``model`` with ``params`` (a recipe's ``method`` section minus ``name``).

    Unknown or missing parameters raise ValueError naming them and the ones the method takes. A parameter
    given as None (null in a recipe, ``--set method.goal=null``) is left out: the method's default, so a
    recipe's setting can be unset, even one another method does not take.
    """
    params = {key: value for key, value in params.items() if value is not None}
    cls = _method_class(name)
    signature = inspect.signature(cls)
    accepted = [p for p in list(signature.parameters)[1:]
                if signature.parameters[p].kind is not inspect.Parameter.VAR_KEYWORD]
    takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in signature.parameters.values())
    for key in params:
        if key not in accepted and not takes_any:
            close = difflib.get_close_matches(key, accepted, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            takes = ", ".join(accepted) or "none"
            raise ValueError(f"method {name!r} takes no parameter {key!r}{hint} (it takes {takes})")
    try:
        signature.bind(model, **params)
    except TypeError as err:
        raise ValueError(f"method {name!r}: {err}") from None
    try:
        return cls(model, **params)
    except ValueError as err:
        # A recipe's text where a number belongs fails inside Python's own conversions, whose messages name
        # neither the method nor the parameter: name both. Other errors pass as they are.
        text = str(err)
        culprits = [f"{k}={v!r}" for k, v in params.items() if isinstance(v, str) and repr(v) in text]
        if text.startswith(cls.__name__) or len(culprits) != 1 or not text.startswith(_CONVERSIONS):
            raise
        raise ValueError(f"method {name!r}: {text} (from {culprits[0]})") from err


_CONVERSIONS = ("could not convert string to", "invalid literal for")


# Importing a method module registers it.
from .dense import Dense  # noqa: E402
from .elrt import ELRT  # noqa: E402
from .lrpet import LRPET  # noqa: E402
from .svd_finetune import SVDFinetune  # noqa: E402
from .trp import TRP  # noqa: E402

__all__ = ["Dense", "ELRT", "LRPET", "Method", "SVDFinetune", "TRP", "create_method", "list_methods",
           "register_method"]
