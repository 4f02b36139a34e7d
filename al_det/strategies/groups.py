"""Per-chunk math of the streaming pass (summary.py): ENMS and prototypes of (image, class) groups.

Pure numpy on in-memory arrays; reads and writes nothing. The chunk's detections arrive sorted
by (image, class, pick order), so each group is a run of that order. Groups are then taken by
size: all groups of one size k form a dense ``[n, k, D]`` block, so the ENMS similarities and
the prototypes are batched matrix products, with no padding and no Python loop per group.
Each block's float32 features are made right there, gathered from the raw chunk and widened
in L2-sized steps into a small reused buffer that is still in cache for the products: the
float32 chunk is never materialised. Measured on the COCO-scale benchmark, this and the lazy
ENMS below cut the pass from ~58 to ~24 CPU-s.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from .base import (
    NORM_EPS,
    SIM_BAND,
    cosine_sim64,
    enms_keep,
    f16_bits_to_f32,
    normalize_rows,
    sq_norms,
)

BLOCK_ROWS = 1024  # float32 rows per block of groups (4 MiB at D=1024: mostly stays in L3)
STEP_ROWS = 128  # rows per gather + widen step (fits L2 with its int16 copy)
_F16_ABS = np.int16(0x7FFF)
_F16_EXP = 0x7C00  # exponent all ones: NaN or infinity
_F16_BAD_SQ = np.float32(2.0 ** 32)  # squared length reached by a widened NaN/inf


class Scratch:
    """One worker's buffers, reused across chunks (no per-chunk allocation, no page faults)."""

    def __init__(self, dim: int) -> None:
        self.dim = dim
        self.x = np.empty((BLOCK_ROWS, dim), np.float32)
        self.bits = np.empty((STEP_ROWS, dim), np.int16)
        self.tmp = np.empty((STEP_ROWS, dim), np.int16)

    def x_rows(self, n: int) -> np.ndarray:
        """The float32 block buffer, n rows."""
        if len(self.x) < n:  # one group larger than a block
            self.x = np.empty((n, self.dim), np.float32)
        return self.x[:n]


def features_f32(raw: np.ndarray, rows: np.ndarray, s: Scratch, check: bool,
                 recheck: Callable[[], None]) -> np.ndarray:
    """``raw[rows]`` as float32, in ``s.x``. With ``check``, float16 rows are checked for
    NaN/inf on the way (``recheck`` raises); float32 chunks are checked by the caller."""
    x = s.x_rows(len(rows))
    if raw.dtype != np.float16:
        return np.take(raw, rows, axis=0, out=x)
    src = raw.view(np.int16)
    for a in range(0, len(rows), STEP_ROWS):
        r = rows[a:a + STEP_ROWS]
        bits, tmp = s.bits[:len(r)], s.tmp[:len(r)]
        np.take(src, r, axis=0, out=bits)
        if check:
            np.bitwise_and(bits, _F16_ABS, out=tmp)
            if tmp.max() >= _F16_EXP:
                recheck()
        f16_bits_to_f32(bits, x[a:a + len(r)])
    return x


def check_f16_rows(raw: np.ndarray, rows: np.ndarray, recheck: Callable[[], None]) -> None:
    """NaN/inf check of float16 rows ``raw[rows]`` by their bits (``recheck`` raises)."""
    src = raw.view(np.int16)
    for a in range(0, len(rows), BLOCK_ROWS):
        if (np.take(src, rows[a:a + BLOCK_ROWS], axis=0) & _F16_ABS).max() >= _F16_EXP:
            recheck()


def group_order(local: np.ndarray, h: np.ndarray, labels: np.ndarray,
                cats: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Sort detections by (image, class, pick order of Algorithm 1).

    ``local`` is each detection's image (non-decreasing), ``h`` its entropy, ``labels`` its
    category id (one of ``cats``, ascending). Returns the permutation, the starts of the
    (image, class) runs in it, and each detection's place in the pick order.
    """
    hrank, n = entropy_rank(h), len(h)
    cls = np.searchsorted(cats, labels)  # dense class index (labels are checked categories)
    perm = np.argsort((local * len(cats) + cls) * n + hrank)
    ls, lab_s = local[perm], labels[perm]
    new = np.ones(len(perm), dtype=bool)
    new[1:] = (ls[1:] != ls[:-1]) | (lab_s[1:] != lab_s[:-1])
    return perm, np.flatnonzero(new), hrank


def entropy_rank(h: np.ndarray) -> np.ndarray:
    """Each detection's place in the pick order of Algorithm 1 (largest entropy first, ties:
    lower row first), as an integer, so that one integer key sorts by (image, class, pick):
    several times faster than ``np.lexsort`` over those columns."""
    rank = np.empty(len(h), dtype=np.int64)
    rank[np.argsort(-h, kind="stable")] = np.arange(len(h))
    return rank


def group_math(raw: np.ndarray, xrow: np.ndarray, h_s: np.ndarray, starts: np.ndarray,
               t_enms: float | None, want_protos: bool, s: Scratch,
               recheck: Callable[[], None]) -> tuple[np.ndarray, np.ndarray | None]:
    """ENMS keep-mask (per sorted detection) and normalised prototypes (per group).

    Group g's detections are ``raw[xrow[starts[g]:starts[g + 1]]]`` in pick order, with
    entropies ``h_s`` (float64). ENMS only when ``t_enms`` is given, prototypes when asked.
    Float16 rows are checked for NaN/inf (``recheck`` checks the whole chunk exactly and
    raises): by their bits, or, where ENMS computes their lengths anyway, by those lengths
    (the widening turns NaN/inf into magnitudes >= 2**16, finite float16 stay below, so a
    squared length >= 2**32 is a NaN/inf or a row of very large values: recheck).
    """
    f16 = raw.dtype == np.float16
    m = len(xrow)
    sizes = np.diff(np.append(starts, m))
    keep = np.ones(m, dtype=bool)
    protos = np.empty((len(starts), raw.shape[1]), np.float32) if want_protos else None
    by_size = np.argsort(sizes, kind="stable")
    pending: dict[int, list] = {}  # ENMS survivors, by padded size (see greedy)
    run_starts = np.flatnonzero(np.diff(sizes[by_size], prepend=-1))
    for gs in np.split(by_size, run_starts[1:]):
        if not len(gs):
            continue
        k = int(sizes[gs[0]])
        per = max(1, BLOCK_ROWS // k)
        enms = t_enms is not None and k > 1
        if not enms and protos is None:  # nothing to compute: only the NaN check, on the bits
            if f16:
                check_f16_rows(raw, xrow[starts[gs][:, None] + np.arange(k)].ravel(), recheck)
            continue
        for a in range(0, len(gs), per):
            g = gs[a:a + per]
            pos = starts[g][:, None] + np.arange(k)  # [n, k] positions in the sorted order
            blk = features_f32(raw, xrow[pos.ravel()], s, f16 and not enms, recheck)
            blk = blk.reshape(len(g), k, -1)
            if protos is not None:
                w = h_s[pos]
                num = np.matmul(w.astype(np.float32)[:, None, :], blk)[:, 0, :]
                protos[g] = normalize_rows(num / w.sum(axis=1, keepdims=True).astype(np.float32))
            if enms:
                _enms_block(blk, pos, t_enms, keep, pending, recheck if f16 else None)
    greedy(pending, keep)
    return keep, protos


def _enms_block(blk: np.ndarray, pos: np.ndarray, t: float, keep: np.ndarray,
                pending: dict, recheck: Callable[[], None] | None) -> None:
    """Algorithm 1 on n groups of k >= 2 rows each in pick order (``pos``: their positions in
    ``keep``). Sets ``keep`` for what the first pick decides and queues the rest for
    :func:`greedy`.

    ENMS keeps few detections (13% on the benchmark dump), most of them removed by the first
    pick, so full k x k Gram matrices are mostly wasted, and BLAS runs such tiny products at
    5-15x below its matrix-vector speed. Instead: one batched matrix-vector product gives
    every row's similarity to its group's first pick (always kept); Gram matrices are formed
    only among the survivors, and the greedy over them is batched per chunk. Similarities
    within SIM_BAND of t are decided again in float64 from the features.
    """
    n, k, _ = blk.shape
    sq = sq_norms(blk)  # [n, k]
    if recheck is not None and not (sq < _F16_BAD_SQ).all():
        recheck()
    inv = 1.0 / np.maximum(np.sqrt(sq), np.float32(NORM_EPS))
    sims = np.matmul(blk, blk[:, 0, :, None])[:, :, 0]
    sims *= inv
    sims *= inv[:, :1]
    gone = _above(sims, t, lambda g, j: (blk[g, 0], blk[g, j]))
    gone[:, 0] = False
    keep[pos] = ~gone  # final for row 0, for the removed rows and for lone survivors
    left = ~gone
    left[:, 0] = False
    n_left = left.sum(axis=1)
    many = np.flatnonzero(n_left >= 2)  # groups whose survivors need their own Gram matrix
    if not len(many):
        return
    a = int(n_left[many].max())
    # survivors first, in pick order (a stable sort of "not a survivor"), padded to a columns
    order = np.argsort(~left[many], axis=1, kind="stable")[:, :a]
    valid = np.take_along_axis(left[many], order, axis=1)
    xs = blk[many[:, None], order]  # [m, a, D] (padding: rows that are not survivors)
    ivs = np.take_along_axis(inv[many], order, axis=1)
    gram = np.matmul(xs, xs.transpose(0, 2, 1))
    gram *= ivs[:, :, None]
    gram *= ivs[:, None, :]
    sup = _above(gram, t, lambda g, i, j: (xs[g, i], xs[g, j]))
    where = np.take_along_axis(pos[many], order, axis=1)
    pending.setdefault(1 << (a - 1).bit_length(), []).append((where, sup, valid))


def _above(sims: np.ndarray, t: float, rows) -> np.ndarray:
    """``sims > t``, with similarities within SIM_BAND of t recomputed in float64 from the
    feature rows that ``rows(*index)`` gives for the index arrays of those entries."""
    out = sims > t
    near = np.abs(sims - np.float32(t)) < SIM_BAND
    if near.any():
        idx = np.nonzero(near)
        out[idx] = cosine_sim64(*rows(*idx)) > t
    return out


def greedy(pending: dict, keep: np.ndarray) -> None:
    """The rest of Algorithm 1 for the survivors queued by :func:`_enms_block`, batched by
    padded size (one sweep of ``enms_keep`` over pad positions serves all of a chunk)."""
    for pad, parts in pending.items():
        n = sum(len(w) for w, _, _ in parts)
        sup = np.zeros((n, pad, pad), dtype=bool)
        valid = np.zeros((n, pad), dtype=bool)
        where = np.zeros((n, pad), dtype=np.int64)
        o = 0
        for w, sp, v in parts:
            b, a = w.shape
            sup[o:o + b, :a, :a] = sp
            valid[o:o + b, :a] = v
            where[o:o + b, :a] = w
            o += b
        kept = enms_keep(sup, valid)
        keep[where[valid]] = kept[valid]
