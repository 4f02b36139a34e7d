"""``cdal``: CDAL-CS, k-center greedy under the contextual-diversity distance
(docs/acquisition.md, "CDAL-CS").

Reads ``labels.npy`` and ``probs.npy`` of every image of the dump (candidates and the labeled
images, which are the initial centres; a labeled image missing from the dump is an error);
writes nothing. Per image and class present among its detections, the entropy-weighted
mixture of the detections' probability vectors; the distance of two images sums the
symmetric KL divergences of their shared classes (+inf with no shared class; a candidate
without detections is at 0 from every centre; a labeled or selected image without detections
is no centre). Each step takes the candidate farthest from its nearest centre (ties: dump row
order) and makes it a centre. The key of a pick is that distance when it was taken (None
while +inf). Compiled: see :mod:`al_det.kernels_cdal` for the layout and the arithmetic.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

from ..dump import CHUNK_BYTES
from ..errors import AcquireError
from ..kernels import as_kernel_input
from ..kernels_cdal import count_classes, greedy_step, initial_distances, mixtures, qlogq_table
from .base import Picked, Pool, Strategy, labeled_rows

BLOCK = 1024  # candidates per task of the initial-distance pass (blocked inside, see kernel)
WORKERS = 2


@dataclass(frozen=True)
class Cdal(Strategy):
    """CDAL-CS; no parameters (it is deterministic)."""

    reads = ("probs",)
    labeled_centres = True  # infer dumps the labeled images too

    def select(self, pool: Pool) -> Picked:
        dump = pool.dump
        if dump.probs is None:
            raise AcquireError(f"{dump.path}: strategy 'cdal' needs probs.npy in the dump (each "
                               "detection's class probabilities); rerun `al-det infer` with "
                               "infer.probs: true, or write probs.npy from your detector "
                               "(docs/detections-dump.md)")
        lab_rows = labeled_rows(pool, "cdal", "detections and probs")
        lay = layout(dump)
        has_dets = np.diff(lay.mstart) > 0
        cent = lab_rows[has_dets[lab_rows]]
        return greedy(lay, np.asarray(pool.cand_rows, np.int64), cent, pool.budget)


@dataclass(frozen=True)
class Layout:
    """Every dump image's mixtures (see kernels_cdal): rows ``mstart[n]:mstart[n+1]``."""

    mstart: np.ndarray
    mcls: np.ndarray
    masks: np.ndarray
    P: np.ndarray
    LP: np.ndarray


def layout(dump) -> Layout:
    """The mixtures of all images of ``dump``, streaming probs.npy in chunks of whole images
    (memory-mapped chunk by chunk, two worker threads)."""
    offsets, n = dump.offsets, dump.num_images
    cat_ids = np.array([c["id"] for c in dump.categories])
    by_id = np.argsort(cat_ids, kind="stable")
    labels = np.asarray(dump.labels)
    labcol = by_id[np.searchsorted(cat_ids[by_id], labels)].astype(np.int64) + 1
    del labels
    n_cols = len(cat_ids) + 1
    rows = np.arange(n, dtype=np.int64)
    mstart, mcls, masks = count_classes(offsets, rows, labcol, n_cols)
    P = np.empty((int(mstart[-1]), n_cols))
    LP = np.empty_like(P)
    table = qlogq_table()
    probs = dump.rows("probs")
    step = max(1, CHUNK_BYTES // max(1, probs.row_bytes))
    bounds = [0]
    while bounds[-1] < n:  # whole images, about `step` detections each
        a = bounds[-1]
        b = int(np.searchsorted(offsets, offsets[a] + step, side="right")) - 1
        bounds.append(min(n, max(a + 1, b)))

    def run(k: int) -> None:
        lo, hi = bounds[k], bounds[k + 1]
        o0, o1 = int(offsets[lo]), int(offsets[hi])
        raw = as_kernel_input(probs.mapped(o0, o1))
        mixtures(raw, o0, offsets, rows, lo, hi, labcol, mstart, mcls, table, P, LP)

    with ThreadPoolExecutor(max_workers=WORKERS) as ex:
        list(ex.map(run, range(len(bounds) - 1)))
    return Layout(mstart, mcls, masks, P, LP)


def greedy(lay: Layout, cand: np.ndarray, cent: np.ndarray, budget: int) -> Picked:
    """k-center greedy: ``cand`` the candidates' dump rows (ascending: ties go to the first),
    ``cent`` the initial centres (rows with detections)."""
    args = (lay.mstart, lay.mcls, lay.P, lay.LP, lay.masks)
    d = np.empty(len(cand))
    halves = [(0, len(cand) // 2), (len(cand) // 2, len(cand))]
    order, keys = [], []
    with ThreadPoolExecutor(max_workers=WORKERS) as ex:
        list(ex.map(lambda a: initial_distances(cand, cent, *args, d, a, min(len(cand), a + BLOCK)),
                    range(0, len(cand), BLOCK)))
        i = int(np.argmax(d))  # first maximum: ties go to the lower dump row
        while True:
            order.append(i)
            keys.append(float(d[i]) if np.isfinite(d[i]) else None)
            c = int(cand[i]) if lay.mstart[cand[i] + 1] > lay.mstart[cand[i]] else -1
            d[i] = -np.inf  # a centre is never taken again
            if len(order) == budget:
                break
            found = ex.map(lambda s, c=c: greedy_step(cand, c, *args, d, s[0], s[1]), halves)
            i = max((j for j in found if j >= 0), key=lambda j: (d[j], -j))  # first maximum
    return Picked(np.asarray(order, dtype=np.int64), keys, ["main"] * len(order))
