"""Per-chunk math of the streaming pass (summary.py): ENMS and prototypes of (image, class) groups.

Pure numpy on in-memory arrays; reads and writes nothing. The chunk's detections arrive sorted
by (image, class, pick order), so each group is a run of that order. Groups are then taken by
size: all groups of one size k are a dense ``[n, k, D]`` block, so Gram matrices and prototypes
are batched matrix products without padding (padding to powers of two doubled the Gram work)
and without a Python loop per group. Each block's float32 features are made right there,
gathered from the raw chunk and widened in L2-sized steps into a small reused buffer that is
still in cache for the products: the float32 chunk is never materialised.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from .base import NORM_EPS, SIM_BAND, cosine_sim64, enms_keep, f16_bits_to_f32, normalize_rows

BLOCK_ROWS = 512  # float32 rows per block of groups (2 MiB at D=1024: stays in L3)
STEP_ROWS = 128  # rows per gather + widen step (fits L2 with its int16 copy)
_F16_ABS = np.int16(0x7FFF)
_F16_EXP = 0x7C00  # exponent all ones: NaN or infinity


class Scratch:
    """One worker's buffers, reused across chunks (no per-chunk allocation, no page faults)."""

    def __init__(self, dim: int, dtype: np.dtype) -> None:
        self.dim, self.dtype = dim, np.dtype(dtype)
        self.raw = np.empty((0, dim), self.dtype)
        self.x = np.empty((BLOCK_ROWS, dim), np.float32)
        self.bits = np.empty((STEP_ROWS, dim), np.int16)
        self.tmp = np.empty((STEP_ROWS, dim), np.int16)

    def raw_rows(self, n: int) -> np.ndarray:
        """A buffer of at least n raw feature rows (grown to the largest chunk seen)."""
        if len(self.raw) < n:
            self.raw = np.empty((n, self.dim), self.dtype)
        return self.raw

    def x_rows(self, n: int) -> np.ndarray:
        if len(self.x) < n:  # one group larger than a block
            self.x = np.empty((n, self.dim), np.float32)
        return self.x[:n]


def features_f32(raw: np.ndarray, rows: np.ndarray, s: Scratch,
                 on_nonfinite: Callable[[], None]) -> np.ndarray:
    """``raw[rows]`` as float32, in ``s.x``. Float16 rows are checked for NaN/inf on the way
    (``on_nonfinite`` must raise); float32 chunks are checked by the caller beforehand."""
    x = s.x_rows(len(rows))
    if raw.dtype != np.float16:
        return np.take(raw, rows, axis=0, out=x)
    src = raw.view(np.int16)
    for a in range(0, len(rows), STEP_ROWS):
        r = rows[a:a + STEP_ROWS]
        bits, tmp = s.bits[:len(r)], s.tmp[:len(r)]
        np.take(src, r, axis=0, out=bits)
        np.bitwise_and(bits, _F16_ABS, out=tmp)
        if tmp.max() >= _F16_EXP:
            on_nonfinite()
        f16_bits_to_f32(bits, x[a:a + len(r)])
    return x


def group_math(raw: np.ndarray, xrow: np.ndarray, h_s: np.ndarray, starts: np.ndarray,
               t_enms: float | None, want_protos: bool, s: Scratch,
               on_nonfinite: Callable[[], None]) -> tuple[np.ndarray, np.ndarray | None]:
    """ENMS keep-mask (per sorted detection) and normalised prototypes (per group).

    Group g's detections are ``raw[xrow[starts[g]:starts[g + 1]]]`` in pick order, with
    entropies ``h_s`` (float64). ENMS only when ``t_enms`` is given, prototypes when asked.
    """
    m = len(xrow)
    sizes = np.diff(np.append(starts, m))
    keep = np.ones(m, dtype=bool)
    protos = np.empty((len(starts), raw.shape[1]), np.float32) if want_protos else None
    by_size = np.argsort(sizes, kind="stable")
    run_starts = np.flatnonzero(np.diff(sizes[by_size], prepend=-1))
    pending: dict[int, list] = {}  # pad -> [(positions [n, k], suppression [n, k, k])]
    for gs in np.split(by_size, run_starts[1:]):
        if not len(gs):
            continue
        k = int(sizes[gs[0]])  # every block is widened, if only for its NaN check
        per = max(1, BLOCK_ROWS // k)
        for a in range(0, len(gs), per):
            g = gs[a:a + per]
            pos = starts[g][:, None] + np.arange(k)  # [n, k] positions in the sorted order
            blk = features_f32(raw, xrow[pos.ravel()], s, on_nonfinite).reshape(len(g), k, -1)
            if protos is not None:
                w = h_s[pos]
                num = np.matmul(w.astype(np.float32)[:, None, :], blk)[:, 0, :]
                protos[g] = normalize_rows(num / w.sum(axis=1, keepdims=True).astype(np.float32))
            if t_enms is not None and k > 1:
                pad = 1 << (k - 1).bit_length()
                pending.setdefault(pad, []).append((pos, _suppression(blk, t_enms)))
    for pad, parts in pending.items():
        _greedy(parts, pad, keep)
    return keep, protos


def _suppression(blk: np.ndarray, t: float) -> np.ndarray:
    """``sup[g, a, b]``: cosine similarity of rows a and b of group g above t (float32 Gram
    matrices; those within SIM_BAND of t decided again in float64 from the features)."""
    gram = np.matmul(blk, blk.transpose(0, 2, 1))
    inv = 1.0 / np.maximum(np.sqrt(np.diagonal(gram, axis1=1, axis2=2)), np.float32(NORM_EPS))
    gram *= inv[:, :, None]
    gram *= inv[:, None, :]
    sup = gram > t
    near = np.abs(gram - np.float32(t)) < SIM_BAND
    if near.any():
        g, i, j = np.nonzero(near)
        sup[g, i, j] = cosine_sim64(blk[g, i], blk[g, j]) > t
    return sup


def _greedy(parts: list, pad: int, keep: np.ndarray) -> None:
    """Algorithm 1's greedy for groups of sizes in (pad/2, pad], padded to pad and batched:
    one sweep of ``enms_keep`` over pad positions serves them all."""
    n = sum(len(pos) for pos, _ in parts)
    sup = np.zeros((n, pad, pad), dtype=bool)
    valid = np.zeros((n, pad), dtype=bool)
    where = np.zeros((n, pad), dtype=np.int64)
    o = 0
    for pos, sp in parts:
        b, k = pos.shape
        sup[o:o + b, :k, :k] = sp
        valid[o:o + b, :k] = True
        where[o:o + b, :k] = pos
        o += b
    kept = enms_keep(sup, valid)
    keep[where[valid]] = kept[valid]
