"""``entropy``: the top-b candidates by basic image entropy (Eq. 2). Reads scores only."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .base import Picked, Pool, Strategy, instance_entropy, stable_order


@dataclass(frozen=True)
class Entropy(Strategy):
    """Rank by the sum of instance entropies; no parameters."""

    def select(self, pool: Pool) -> Picked:
        keys = basic_entropies(pool)
        return ranked(keys, pool.budget)


def basic_entropies(pool: Pool) -> np.ndarray:
    """Basic entropy per candidate, streaming scores.npy (features are not needed)."""
    dump, rows = pool.dump, pool.cand_rows
    out = np.zeros(len(rows))
    scores = dump.rows("scores")
    counts = np.diff(dump.offsets)
    for start in range(0, len(rows), 65536):
        part = rows[start:start + 65536]
        o0, o1 = int(dump.offsets[part[0]]), int(dump.offsets[part[-1] + 1])
        h = instance_entropy(scores.read(o0, o1))
        img = np.repeat(np.arange(part[0], part[-1] + 1), counts[part[0]:part[-1] + 1])
        sums = np.bincount(img - part[0], weights=h, minlength=part[-1] - part[0] + 1)
        out[start:start + len(part)] = sums[part - part[0]]
    return out


def ranked(keys: np.ndarray, budget: int) -> Picked:
    """The top ``budget`` by key (stable on ties), all selected in the main pass."""
    order = stable_order(keys)[:budget]
    return Picked(order, [float(keys[i]) for i in order], ["main"] * len(order))
