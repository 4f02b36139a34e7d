"""``enms``: the top-b candidates by ENMS entropy (Algorithm 1). Streams the dump once."""

from __future__ import annotations

from dataclasses import dataclass

from .base import Picked, Pool, check_unit
from .entropy import ranked
from .summary import summarize


@dataclass(frozen=True)
class Enms:
    """Rank by ENMS entropy; ``t_enms`` is the cosine threshold of Algorithm 1."""

    t_enms: float = 0.5

    def __post_init__(self) -> None:
        check_unit("t_enms", self.t_enms)

    def select(self, pool: Pool) -> Picked:
        s = summarize(pool.dump, pool.cand_rows, float(self.t_enms), False, pool.ahead)
        return ranked(s.enms, pool.budget)
