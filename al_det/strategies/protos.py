"""Prototypes (Eq. 3) on demand: only for the candidates the DivProto walk looks at.

The walk tests intra-class redundancy for few candidates (with ``inter`` on, only those that
pass the minority test: 3,697 of 94,630 images on the COCO-20% benchmark), so computing
every image's prototypes in the streaming pass, and spilling them to disk, was mostly wasted.
Here the detections of just the asked images are read again (one explicit read per image; they
are still in the page cache after the streaming pass) and go through the same group math as
there, so the prototypes are the same float32 values the streaming pass would have made.
"""

from __future__ import annotations

import numpy as np

from ..dump import Dump, check_finite_features
from .base import instance_entropy
from .groups import Scratch, group_math, group_order


class LazyProtos:
    """Normalised float32 prototypes of candidates, per (image, class) in class order."""

    def __init__(self, dump: Dump, cand_rows: np.ndarray) -> None:
        self.dump, self.cand_rows, self.dim = dump, cand_rows, dump.feature_dim
        self.files = {name: dump.rows(name) for name in ("features", "scores", "labels")}
        self.cats = np.array(sorted({c["id"] for c in dump.categories}), dtype=np.int64)
        self.scratch = Scratch(self.dim)

    def of(self, cands: list[int]) -> np.ndarray:
        """The prototypes of candidates ``cands``, concatenated in that order; each candidate's
        rows are its groups in ascending class order (as ``Summary.grp_cls``)."""
        rows = self.cand_rows[np.asarray(cands, dtype=np.int64)]
        lo, hi = self.dump.offsets[rows], self.dump.offsets[rows + 1]
        counts = hi - lo
        if not counts.sum():
            return np.zeros((0, self.dim), np.float32)
        raw, scores, labels = (self._read(name, lo, hi, counts)
                               for name in ("features", "scores", "labels"))
        local = np.repeat(np.arange(len(rows)), counts)
        h = instance_entropy(scores)
        perm, starts, _ = group_order(local, h, labels, self.cats)
        feats = self.files["features"]
        _, protos = group_math(raw, perm, h[perm], starts, None, True, self.scratch,
                               lambda: check_finite_features(raw, feats.path, 0))
        return protos

    def _read(self, name: str, lo: np.ndarray, hi: np.ndarray, counts: np.ndarray) -> np.ndarray:
        f = self.files[name]
        out = np.empty((int(counts.sum()),) + f.shape[1:], f.dtype)
        pos = 0
        for a, b in zip(lo.tolist(), hi.tolist(), strict=True):
            f.read_into(a, b, out[pos:])
            pos += b - a
        return out
