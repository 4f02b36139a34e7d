"""``coreset``: k-center greedy over the dump's ``image_features`` (Euclidean).

Reads ``image_features.npy`` (candidates and labeled images); writes nothing. The labeled
images are the initial centres; each step takes the candidate farthest from its nearest
centre (ties: dump row order) and makes it a centre. With no labeled image, every distance
is infinite and the first candidate in dump order is taken first. The key of a pick is its
distance to the nearest centre at the time it was taken (None while infinite).
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial

import numpy as np

from ..errors import AcquireError
from ..kernels import kcenter_step
from .base import Picked, Pool, Strategy, labeled_rows

BLOCK = 2048  # candidates (and centres) per block of initial distances: 32 MiB of float64


@dataclass(frozen=True)
class Coreset(Strategy):
    """k-center greedy; no parameters (it is deterministic)."""

    reads = ("image_features",)
    labeled_centres = True

    def select(self, pool: Pool) -> Picked:
        dump = pool.dump
        if dump.image_features is None:
            raise AcquireError(f"{dump.path}: strategy 'coreset' needs image_features.npy in "
                               "the dump; rerun inference with image features or pick "
                               "another strategy")
        lab_rows = labeled_rows(pool, "coreset", "image_features")
        x = np.ascontiguousarray(dump.image_features[pool.cand_rows], dtype=np.float32)
        d2 = _initial_d2(x, np.asarray(dump.image_features[lab_rows], dtype=np.float32))
        return _greedy(x, d2, pool.budget)


def _initial_d2(x: np.ndarray, centres: np.ndarray) -> np.ndarray:
    """Squared distance of each candidate to its nearest labeled centre (inf if none), in
    float64, in blocks of candidates x centres (32 MiB of distances each) so that memory does
    not grow with the pool times the labeled set."""
    d2 = np.full(len(x), np.inf)
    xx = np.einsum("ij,ij->i", x, x, dtype=np.float64)
    cc = np.einsum("ij,ij->i", centres, centres, dtype=np.float64)
    for a in range(0, len(x), BLOCK):
        xa = x[a:a + BLOCK].astype(np.float64)
        for b in range(0, len(centres), BLOCK):
            part = xa @ centres[b:b + BLOCK].T.astype(np.float64)
            part *= -2.0
            part += xx[a:a + BLOCK, None]
            part += cc[None, b:b + BLOCK]
            np.minimum(d2[a:a + BLOCK], part.min(axis=1), out=d2[a:a + BLOCK])
    return np.maximum(d2, 0.0)


def _greedy(x: np.ndarray, d2: np.ndarray, budget: int) -> Picked:
    """Take ``budget`` candidates farthest-first; each update is one pass of the kernel over
    the candidates, split in halves between two threads (the kernel releases the GIL)."""
    halves = [(0, len(x) // 2), (len(x) // 2, len(x))]
    order, keys = [], []
    i = int(np.argmax(d2))  # first maximum: ties go to the lower dump row
    with ThreadPoolExecutor(max_workers=2) as pool:
        while True:
            order.append(i)
            keys.append(float(np.sqrt(d2[i])) if np.isfinite(d2[i]) else None)
            d2[i] = -np.inf  # a centre is never taken again
            if len(order) == budget:
                break
            found = pool.map(partial(_update, x, x[i].astype(np.float64), d2), halves)
            i = max((j for j in found if j >= 0), key=lambda j: (d2[j], -j))  # first maximum
    return Picked(np.asarray(order, dtype=np.int64), keys, ["main"] * len(order))


def _update(x: np.ndarray, c: np.ndarray, d2: np.ndarray, span: tuple[int, int]) -> int:
    """The kernel's update on candidates ``span``; the row of their first maximum, or -1."""
    a, b = span
    j = kcenter_step(x[a:b], c, d2[a:b])
    return a + j if j >= 0 else -1
