"""Acquisition strategies (docs/acquisition.md): a literal dict, name -> dataclass.

Each strategy is a frozen dataclass whose fields are its parameters, with one
``select(pool) -> Picked`` method. None of them imports torch.
"""

from .coreset import Coreset
from .divproto import DivProto
from .enms import Enms
from .enms_divproto import EnmsDivProto
from .entropy import Entropy
from .random_sampling import Random

STRATEGIES = {
    "random": Random,
    "entropy": Entropy,
    "enms": Enms,
    "divproto": DivProto,
    "enms_divproto": EnmsDivProto,
    "coreset": Coreset,
}

__all__ = ["STRATEGIES", "Coreset", "DivProto", "Enms", "EnmsDivProto", "Entropy", "Random"]
