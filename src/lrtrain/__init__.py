"""lrtrain: compact low-rank CNNs by TRP, LRPET and ELRT, with the baselines to compare them.

    >>> import lrtrain as lr
    >>> model = lr.models.create("resnet20")
    >>> compact = lr.factorize(model, rank=lr.FlopsBudget(0.45), scheme="channel")
    >>> lr.count(compact).flops < 0.46 * lr.count(lr.models.create("resnet20")).flops
    True
"""

from . import linalg, models, schemes
from .layers import LowRankConv2d, LowRankLinear
from .export import load, save
from .methods import ELRT, LRPET, TRP, Dense, Method, SVDFinetune
from .metrics import Counts, count
from .ranks import Energy, FixedRank, FlopsBudget, Ratio, Threshold
from .surgery import factorize, plan

__all__ = [
    "ELRT", "LRPET", "TRP", "Counts", "Dense", "Energy", "FixedRank", "FlopsBudget", "LowRankConv2d",
    "LowRankLinear", "Method", "Ratio", "SVDFinetune",
    "Threshold", "count", "factorize", "linalg", "load", "models", "plan", "save", "schemes",
]
__version__ = "0.1.0"
