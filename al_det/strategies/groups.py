"""Detections of a chunk ordered into (image, class) groups, and the group math run on them.

Pure numpy on in-memory arrays plus the compiled kernels (kernels.py); reads and writes
nothing. The streaming pass (summary.py) and the prototypes on demand (protos.py) both sort a
chunk's detections by (image, class, pick order of Algorithm 1), so each group is a run of
that order, and hand the runs to ENMS or the prototype kernel.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from .. import kernels
from .base import SIM_BAND


def group_order(local: np.ndarray, h: np.ndarray,
                labels: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Sort detections by (image, class, pick order of Algorithm 1).

    ``local`` is each detection's image (non-decreasing), ``h`` its entropy, ``labels`` its
    category id. Returns the permutation, the starts of the (image, class) runs in it, and
    the detections in (image, pick order).
    """
    img_start = np.flatnonzero(np.diff(local, prepend=-1, append=-2))
    perm, pick = kernels.order_groups(img_start, np.asarray(h, np.float64),
                                      np.asarray(labels, np.int64))
    ls, cs = local[perm], labels[perm]
    new = np.ones(len(perm), dtype=bool)
    new[1:] = (ls[1:] != ls[:-1]) | (cs[1:] != cs[:-1])
    return perm, np.flatnonzero(new), pick


def enms_mask(raw: np.ndarray, perm: np.ndarray, starts: np.ndarray, img_start: np.ndarray,
              t: float, on_bad: Callable[[int], None]) -> np.ndarray:
    """Algorithm 1's keep mask per sorted detection; group g's features are
    ``raw[perm[starts[g]:starts[g + 1]]]`` in pick order, and image k's sorted positions
    ``img_start[k]:img_start[k+1]`` hold its raw rows, the same range (as ``group_order``
    sorts). ``on_bad(row)`` is called (and must raise) for a raw row whose squared length is
    not finite."""
    keep = np.zeros(len(perm), dtype=bool)
    bad = kernels.enms_keep(kernels.as_kernel_input(raw), perm, starts, img_start, t, SIM_BAND,
                            keep)
    if bad >= 0:
        on_bad(int(perm[bad]))
    return keep


def group_protos(raw: np.ndarray, xrow: np.ndarray, w: np.ndarray, starts: np.ndarray,
                 on_bad: Callable[[int], None]) -> np.ndarray:
    """Unit-length prototypes (Eq. 3) per group, float32, weights ``w`` per sorted detection.
    ``on_bad(row)`` is called (and must raise) for a group holding a NaN/inf feature."""
    out = np.empty((len(starts), raw.shape[1]), np.float32)
    bad = kernels.prototypes(kernels.as_kernel_input(raw), xrow, np.asarray(w, np.float64),
                             starts, out)
    if bad >= 0:
        on_bad(int(xrow[bad]))
    return out
