"""``enms_divproto``: DivProto over candidates ordered by ENMS entropy (the paper's method).

One streaming pass gives ENMS entropies and prototypes together; see divproto.py for the walk.
"""

from __future__ import annotations

from dataclasses import dataclass

from .base import Picked, Pool, check_unit
from .divproto import DivProto, divproto_walk
from .summary import summarize


@dataclass(frozen=True)
class EnmsDivProto(DivProto):
    """ENMS ranking (``t_enms``) + DivProto rejection (the DivProto parameters)."""

    t_enms: float = 0.5

    def __post_init__(self) -> None:
        super().__post_init__()
        check_unit("t_enms", self.t_enms)

    def stream_t_enms(self) -> float:
        return float(self.t_enms)

    def select(self, pool: Pool) -> Picked:
        minority = self.minority(pool)  # first: the streaming pass may still be running
        s = summarize(pool, self, want_protos=self.intra)
        return divproto_walk(s, s.enms, pool, self, minority)
