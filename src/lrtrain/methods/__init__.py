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


def method_class(name: str) -> type[Method]:
    """The class registered as ``name``; ValueError naming the valid names (and a close one) otherwise."""
    try:
        return _REGISTRY[name]
    except KeyError:
        close = difflib.get_close_matches(name, _REGISTRY, n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise ValueError(f"unknown method {name!r}.{hint} Valid names: {', '.join(list_methods())}") from None


def create_method(name: str, model: nn.Module, **params: Any) -> Method:
    """Build the method ``name`` on ``model`` with ``params`` (a recipe's ``method`` section minus ``name``).

    Unknown or missing parameters raise ValueError naming them and the ones the method takes. A parameter
    the method does not take, given as None (null in a recipe: ``--set method.name=dense --set
    method.goal=null``), is left out, so that a recipe can be switched to another method; one it takes is
    passed on (None means something to some: TRP's ``period=None`` never projects), and where the method
    cannot take None the error names the setting.
    """
    cls = method_class(name)
    signature = inspect.signature(cls)
    accepted = [p for p in list(signature.parameters)[1:]
                if signature.parameters[p].kind is not inspect.Parameter.VAR_KEYWORD]
    takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in signature.parameters.values())
    params = {key: value for key, value in params.items() if value is not None or key in accepted or takes_any}
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
    nulls = [key for key, value in params.items() if value is None]
    try:
        return cls(model, **params)
    except TypeError as err:  # None where a number or a sequence belongs: float(None), iter(None), ...
        if not nulls:
            raise
        defaults = ", ".join(f"{k}: {signature.parameters[k].default!r}" for k in nulls
                             if signature.parameters[k].default is not inspect.Parameter.empty)
        raise ValueError(f"method {name!r}: {', '.join(f'{k}=null' for k in nulls)} is not a value it takes "
                         f"({err}); leave the key out for the default" + (f" ({defaults})" if defaults else "")
                         ) from None
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
           "method_class", "register_method"]
