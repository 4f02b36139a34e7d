"""``enms``: the top-b candidates by ENMS entropy (Algorithm 1). Streams the dump once."""

from __future__ import annotations

from dataclasses import dataclass

from .base import Picked, Pool, Strategy, check_unit
from .entropy import ranked
from .summary import summarize


@dataclass(frozen=True)
class Enms(Strategy):
    """Rank by ENMS entropy; ``t_enms`` is the cosine threshold of Algorithm 1."""

    streams_features = True
    t_enms: float = 0.5

    def __post_init__(self) -> None:
        check_unit("t_enms", self.t_enms)

    def stream_t_enms(self) -> float:
        return float(self.t_enms)

    def select(self, pool: Pool) -> Picked:
        s = summarize(pool, self, want_protos=False)
        return ranked(s.enms, pool.budget)
