"""Acquisition strategies (docs/acquisition.md): a literal dict, name -> dataclass.

Each strategy is a frozen dataclass whose fields are its parameters, with one
``select(pool) -> Picked`` method. None of them imports torch.
"""

from .cdal import Cdal
from .coreset import Coreset
from .divproto import DivProto
from .enms import Enms
from .enms_divproto import EnmsDivProto
from .entropy import Entropy
from .external import External
from .learning_loss import LearningLoss
from .random_sampling import Random

STRATEGIES = {
    "random": Random,
    "entropy": Entropy,
    "enms": Enms,
    "divproto": DivProto,
    "enms_divproto": EnmsDivProto,
    "coreset": Coreset,
    "learning_loss": LearningLoss,
    "cdal": Cdal,
    "external": External,
}

__all__ = ["STRATEGIES", "Cdal", "Coreset", "DivProto", "Enms", "EnmsDivProto", "Entropy",
           "External", "LearningLoss", "Random"]
