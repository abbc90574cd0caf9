"""lrtrain: compact low-rank CNNs by TRP, LRPET and ELRT, with the baselines to compare them.

    >>> import lrtrain as lr
    >>> model = lr.models.create("resnet20")
    >>> compact = lr.factorize(model, rank=lr.FlopsBudget(0.45), scheme="channel")
    >>> lr.count(compact).flops < 0.46 * lr.count(lr.models.create("resnet20")).flops
    True
"""

import importlib
from typing import TYPE_CHECKING, Any

# Public names and the submodule that defines each. They (and the submodules) load on first use, so that
# `import lrtrain` and the `lrtrain` command start without importing torch: `lrtrain --help` or a bad
# recipe answers in a fraction of a second instead of seconds.
_EXPORTS = {
    "LowRankConv2d": "layers", "LowRankLinear": "layers", "load": "export", "save": "export",
    "ELRT": "methods", "LRPET": "methods", "TRP": "methods", "Dense": "methods", "Method": "methods",
    "SVDFinetune": "methods", "Counts": "metrics", "count": "metrics", "Energy": "ranks", "FixedRank": "ranks",
    "FlopsBudget": "ranks", "Ratio": "ranks", "Threshold": "ranks", "factorize": "surgery", "plan": "surgery",
    "fold_batchnorm": "fold", "deploy": "deployment", "evaluate": "evaluation",
    "predict": "prediction", "read_images": "prediction",
}

__all__ = sorted([*_EXPORTS, "linalg", "models", "schemes"])


def __getattr__(name: str) -> Any:
    if name.startswith("__"):  # tools probe modules for dunders (__wrapped__, __path__...): never a submodule
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    if name in _EXPORTS:
        value = getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    else:
        try:
            value = importlib.import_module(f".{name}", __name__)
        except ModuleNotFoundError as err:
            if err.name != f"{__name__}.{name}":
                raise  # a submodule exists but one of its own imports failed
            raise AttributeError(f"module {__name__!r} has no attribute {name!r}") from None
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})


if TYPE_CHECKING:
    from . import linalg, models, schemes
    from .export import load, save
    from .deployment import deploy
    from .evaluation import evaluate
    from .fold import fold_batchnorm
    from .layers import LowRankConv2d, LowRankLinear
    from .methods import ELRT, LRPET, TRP, Dense, Method, SVDFinetune
    from .metrics import Counts, count
    from .prediction import predict, read_images
    from .ranks import Energy, FixedRank, FlopsBudget, Ratio, Threshold
    from .surgery import factorize, plan

__version__ = "0.1.0"
