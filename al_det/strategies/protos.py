"""Prototypes (Eq. 3) on demand: only for the candidates the DivProto walk looks at.

The walk tests intra-class redundancy for few candidates (with ``inter`` on, only those that
pass the minority test: 3,697 of 94,630 images on the COCO-20% benchmark), so computing
every image's prototypes in the streaming pass, and spilling them to disk, was mostly wasted.
Here the detections of just the asked images are read again (they are still in the page cache
after the streaming pass), grouped as there, and handed to the prototype kernel.
"""

from __future__ import annotations

import numpy as np

from ..dump import Dump, check_finite_features
from ..errors import DumpError
from .base import instance_entropy
from .groups import group_order, group_protos


class LazyProtos:
    """Normalised float32 prototypes of candidates, per (image, class) in class order."""

    def __init__(self, dump: Dump, cand_rows: np.ndarray) -> None:
        self.dump, self.cand_rows, self.dim = dump, cand_rows, dump.feature_dim
        self.feats = dump.rows("features")

    def of(self, cands: list[int]) -> np.ndarray:
        """The prototypes of candidates ``cands``, concatenated in that order; each candidate's
        rows are its groups in ascending class order (as ``Summary.grp_cls``)."""
        rows = self.cand_rows[np.asarray(cands, dtype=np.int64)]
        lo, hi = self.dump.offsets[rows], self.dump.offsets[rows + 1]
        counts = hi - lo
        if not counts.sum():
            return np.zeros((0, self.dim), np.float32)
        # the detections' dump rows; scores and labels gathered from their memory maps (small
        # files), features read image by image (a memory map of features.npy would map whole
        # large page-cache folios per touched image: measured +1.6 MB resident per image)
        at = np.cumsum(counts) - counts  # each image's first row in the gathered arrays
        local = np.repeat(np.arange(len(rows)), counts)
        det = np.arange(int(counts.sum())) + np.repeat(lo - at, counts)
        h = instance_entropy(self.dump.scores[det])
        perm, starts, _ = group_order(local, h, self.dump.labels[det])
        raw = np.empty((len(det), self.dim), self.feats.dtype)
        for a, b, c in zip(lo.tolist(), hi.tolist(), at.tolist(), strict=True):
            self.feats.read_into(a, b, raw[c:])
        return group_protos(raw, perm, h[perm], starts, lambda _: self._raise_bad(lo, hi))

    def detections(self, cand: int, c: int) -> tuple[np.ndarray, np.ndarray]:
        """Candidate ``cand``'s detections of class ``c`` in row order: their entropies and
        float64 features, for the rare similarity next to T_intra that the float32
        prototypes of :meth:`of` are too coarse to decide (ties.py)."""
        row = int(self.cand_rows[cand])
        a, b = int(self.dump.offsets[row]), int(self.dump.offsets[row + 1])
        mine = np.flatnonzero(self.dump.labels[a:b] == c)
        return (instance_entropy(self.dump.scores[a + mine]),
                self.feats.read(a, b)[mine].astype(np.float64))

    def _raise_bad(self, lo: np.ndarray, hi: np.ndarray) -> None:
        """Name the first NaN/inf feature row of the asked images (the streaming pass has
        checked them already, so this is a guard, not a path taken)."""
        for a, b in zip(lo.tolist(), hi.tolist(), strict=True):
            check_finite_features(self.feats.read(a, b), self.feats.path, a)
        raise DumpError(f"{self.feats.path}: a prototype is not finite; rerun `al-det infer`")
