"""``coreset``: k-center greedy over the dump's ``image_features`` (Euclidean).

Reads ``image_features.npy`` (candidates and labeled images); writes nothing. The labeled
images are the initial centres; each step takes the candidate farthest from its nearest
centre (ties: dump row order) and makes it a centre. With no labeled image, every distance
is infinite and the first candidate in dump order is taken first. The key of a pick is its
distance to the nearest centre at the time it was taken (None while infinite).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..errors import AcquireError
from .base import Picked, Pool


@dataclass(frozen=True)
class Coreset:
    """k-center greedy; no parameters (it is deterministic)."""

    def select(self, pool: Pool) -> Picked:
        dump = pool.dump
        if dump.image_features is None:
            raise AcquireError(f"{dump.path}: strategy 'coreset' needs image_features.npy in "
                               "the dump; rerun inference with image features or pick "
                               "another strategy")
        row_of = {iid: r for r, iid in enumerate(dump.image_ids)}
        missing = [im["id"] for im in pool.labeled["images"] if im["id"] not in row_of]
        if missing:
            raise AcquireError(f"{dump.path}: labeled image {missing[0]!r} (and "
                               f"{len(missing) - 1} more) not in the dump; coreset needs the "
                               "labeled images' image_features as initial centres")
        lab_rows = np.array(sorted(row_of[im["id"]] for im in pool.labeled["images"]), np.int64)
        x = np.asarray(dump.image_features[pool.cand_rows], dtype=np.float64)
        d2 = _initial_d2(x, np.asarray(dump.image_features[lab_rows], dtype=np.float64))
        return _greedy(x, d2, pool.budget)


def _initial_d2(x: np.ndarray, centres: np.ndarray) -> np.ndarray:
    """Squared distance of each candidate to its nearest labeled centre (inf if none)."""
    d2 = np.full(len(x), np.inf)
    xx = np.einsum("ij,ij->i", x, x)
    for a in range(0, len(centres), 4096):
        c = centres[a:a + 4096]
        cc = np.einsum("ij,ij->i", c, c)
        part = np.maximum(xx[:, None] + cc[None, :] - 2.0 * (x @ c.T), 0.0)
        np.minimum(d2, part.min(axis=1), out=d2)
    return d2


def _greedy(x: np.ndarray, d2: np.ndarray, budget: int) -> Picked:
    order, keys = [], []
    for _ in range(budget):
        i = int(np.argmax(d2))  # first maximum: ties go to the lower dump row
        order.append(i)
        keys.append(float(np.sqrt(d2[i])) if np.isfinite(d2[i]) else None)
        diff = x - x[i]
        np.minimum(d2, np.einsum("ij,ij->i", diff, diff), out=d2)
        d2[i] = -np.inf  # a centre is never taken again
    return Picked(np.asarray(order, dtype=np.int64), keys, ["main"] * len(order))
