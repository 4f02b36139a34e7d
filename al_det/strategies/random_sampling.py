"""``random``: b candidates uniformly without replacement from a seeded generator."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..errors import AcquireError
from .base import Picked, Pool, Strategy


@dataclass(frozen=True)
class Random(Strategy):
    """``numpy.random.default_rng(seed).choice``: the same seed selects the same images."""

    seed: int = 0

    def __post_init__(self) -> None:
        if isinstance(self.seed, bool) or not isinstance(self.seed, (int, np.integer)) \
                or self.seed < 0:
            raise AcquireError(f"acquire.seed: must be a non-negative integer, got {self.seed!r}")

    def select(self, pool: Pool) -> Picked:
        rng = np.random.default_rng(int(self.seed))
        order = rng.choice(len(pool.cand_rows), size=pool.budget, replace=False)
        return Picked(order, [None] * len(order), ["main"] * len(order))
