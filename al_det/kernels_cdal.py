"""Compiled kernels of ``cdal`` (CDAL-CS, docs/acquisition.md): the class-conditional
mixtures and the k-center greedy under the contextual-diversity distance (numba; they read
and write only the arrays passed in).

Layout: the images that take part (candidates and labeled centres) get a compact index ``n``;
image ``n``'s mixtures are rows ``mstart[n]:mstart[n+1]`` of ``P`` (float64, ``[K, C+1]``),
one per class present among its detections, ascending by class column ``mcls``; ``LP`` holds
``ln max(P, 1e-12)``, and P itself is stored clipped (the spec's clipping, done once);
``masks[n]`` is the bit set of the image's class columns, so that two images sharing no class
are told apart in a few word ANDs without touching their mixtures.

Distance: ``d(i, j) = 0.5 * sum over shared classes of sum_m (p_m - r_m)(ln p_m - ln r_m)``
with p, r clipped: the same number as ``(KL(p||r) + KL(r||p)) / 2`` in real arithmetic, each
term >= 0 (also in floating point: ln is monotone), so a partial sum that reaches a bound
already decides ``min(bound, d)`` and the loop stops there, checked every 8 columns (exact,
not a heuristic: the distance computed to the end is never below the partial sum). float64
throughout; the inner sum over the C+1 columns may be reordered for vector instructions.
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit, types
from numba.extending import overload

from .kernels import _FAST, _widen

CLIP = 1e-12


@njit(cache=True)
def qlogq_table():
    """``q ln q`` (0 for q <= 0 or not finite) of every float16 bit pattern, in float64: the
    entropy weights of float16 probs become table look-ups, bit for bit the direct values."""
    out = np.zeros(65536)
    for u in range(65536):
        q = np.float64(_widen(np.uint16(u)))
        if q > 0.0 and q < np.inf:
            out[u] = q * math.log(q)
    return out


def _qlq(v, table):  # pragma: no cover - replaced by the overload in compiled code
    raise NotImplementedError


@overload(_qlq, inline="always")
def _ol_qlq(v, table):
    if v == types.uint16:
        return lambda v, table: table[v]

    def impl(v, table):
        q = np.float64(v)
        return q * math.log(q) if q > 0.0 else 0.0
    return impl


@njit(nogil=True, cache=True)
def count_classes(offsets, rows, labcol, n_cols):
    """Distinct class columns of each image ``rows[n]`` (its detections
    ``offsets[r]:offsets[r+1]``, class columns ``labcol``), ascending: returns ``mstart``
    ``[len(rows)+1]``, ``mcls`` ``[K]`` and the class bit sets ``masks`` ``[len(rows), W]``."""
    n = rows.shape[0]
    words = (n_cols + 63) // 64
    seen = np.zeros(n_cols, np.bool_)
    mstart = np.zeros(n + 1, np.int64)
    for i in range(n):
        r = rows[i]
        k = 0
        for t in range(offsets[r], offsets[r + 1]):
            c = labcol[t]
            if not seen[c]:
                seen[c] = True
                k += 1
        for t in range(offsets[r], offsets[r + 1]):
            seen[labcol[t]] = False
        mstart[i + 1] = mstart[i] + k
    mcls = np.empty(mstart[n], np.int64)
    masks = np.zeros((n, words), np.uint64)
    for i in range(n):
        r = rows[i]
        for t in range(offsets[r], offsets[r + 1]):
            seen[labcol[t]] = True
        k = mstart[i]
        for t in range(offsets[r], offsets[r + 1]):
            c = labcol[t]
            if seen[c]:
                seen[c] = False
                mcls[k] = c
                k += 1
        mcls[mstart[i]:mstart[i + 1]].sort()
        for u in range(mstart[i], mstart[i + 1]):
            c = mcls[u]
            masks[i, c // 64] |= np.uint64(1) << np.uint64(c % 64)
    return mstart, mcls, masks


@njit(nogil=True, cache=True)
def mixtures(raw, base, offsets, rows, lo, hi, labcol, mstart, mcls, table, P, LP):
    """The mixtures of images ``rows[lo:hi]``, clipped, into ``P`` and their logs into ``LP``;
    ``raw`` holds probs rows ``base:`` (float16 as uint16 bits, or float32). Per class:
    ``sum_k w_k q_k / sum_k w_k`` in detection row order, ``w_k = -sum_m q_km ln q_km``; the
    plain mean of the q_k where the weights sum to 0 (every q_k one-hot)."""
    n_cols = raw.shape[1]
    slot = np.full(n_cols, -1, np.int64)
    wsum = np.zeros(64)
    for i in range(lo, hi):
        a, b = mstart[i], mstart[i + 1]
        if b == a:
            continue
        r = rows[i]
        for u in range(a, b):
            slot[mcls[u]] = u
            P[u, :] = 0.0
        if wsum.shape[0] < b - a:
            wsum = np.zeros(b - a)
        wsum[:b - a] = 0.0
        for t in range(offsets[r], offsets[r + 1]):
            u = slot[labcol[t]]
            x = t - base
            w = 0.0
            for m in range(n_cols):
                w -= _qlq(raw[x, m], table)
            wsum[u - a] += w
            for m in range(n_cols):
                P[u, m] += w * np.float64(_widen(raw[x, m]))
        for u in range(a, b):
            ws = wsum[u - a]
            if ws == 0.0:  # every weight 0: the plain mean
                P[u, :] = 0.0
                cnt = 0
                for t in range(offsets[r], offsets[r + 1]):
                    if labcol[t] == mcls[u]:
                        cnt += 1
                        for m in range(n_cols):
                            P[u, m] += np.float64(_widen(raw[t - base, m]))
                for m in range(n_cols):
                    P[u, m] /= cnt
            else:
                for m in range(n_cols):
                    P[u, m] /= ws
            for m in range(n_cols):
                v = max(P[u, m], CLIP)
                P[u, m] = v
                LP[u, m] = math.log(v)
            slot[mcls[u]] = -1


@njit(inline="always")
def _dist(i, j, mstart, mcls, P, LP, masks, bound):
    """The distance of images i and j (both with detections), or a partial sum >= bound."""
    share = False
    for w in range(masks.shape[1]):
        if masks[i, w] & masks[j, w]:
            share = True
            break
    if not share:
        return np.inf
    a, ae, b, be = mstart[i], mstart[i + 1], mstart[j], mstart[j + 1]
    s = 0.0
    while a < ae and b < be:
        ca, cb = mcls[a], mcls[b]
        if ca == cb:
            t, m, n_cols = 0.0, 0, P.shape[1]
            while m < n_cols:  # in runs of 8 columns, stopping once the bound is reached
                e = min(n_cols, m + 8)
                for k in range(m, e):
                    t += (P[a, k] - P[b, k]) * (LP[a, k] - LP[b, k])
                if 0.5 * (s + t) >= bound:
                    return 0.5 * (s + t)
                m = e
            s += t
            a += 1
            b += 1
        elif ca < cb:
            a += 1
        else:
            b += 1
    return 0.5 * s


@njit(nogil=True, cache=True, fastmath=_FAST)
def initial_distances(cand, cent, mstart, mcls, P, LP, masks, d, lo, hi, xblock=128,
                      cblock=256):
    """``d[x]`` for candidates ``x`` in ``lo:hi`` (compact index ``cand[x]``): the distance to
    the nearest of the centres ``cent`` (compact indices of images with detections), +inf if
    there is none; 0 for a candidate without detections when there is a centre. Blocked so
    that a block of centres' mixtures stays in cache while a block of candidates meets it."""
    n_cent = cent.shape[0]
    for x in range(lo, hi):
        d[x] = np.inf
        if mstart[cand[x] + 1] == mstart[cand[x]] and n_cent > 0:
            d[x] = 0.0
    for xb in range(lo, hi, xblock):
        xe = min(hi, xb + xblock)
        for cb in range(0, n_cent, cblock):
            ce = min(n_cent, cb + cblock)
            for x in range(xb, xe):
                i = cand[x]
                bound = d[x]
                if bound == 0.0:
                    continue
                for y in range(cb, ce):
                    v = _dist(i, cent[y], mstart, mcls, P, LP, masks, bound)
                    if v < bound:
                        bound = v
                        if bound == 0.0:
                            break
                d[x] = bound


@njit(nogil=True, cache=True, fastmath=_FAST)
def greedy_step(cand, c, mstart, mcls, P, LP, masks, d, lo, hi):
    """One k-center update with the new centre ``c`` (a compact index; -1: none, the image
    taken had no detection) over candidates ``lo:hi``: ``d[x] = min(d[x], dist)``, taken
    candidates hold -inf and stay. Returns the first x with the largest d, or -1."""
    best, arg = -np.inf, -1
    has_c = c >= 0
    for x in range(lo, hi):
        v = d[x]
        if has_c and v > 0.0:
            i = cand[x]
            if mstart[i + 1] == mstart[i]:
                v = 0.0
            else:
                v = min(v, _dist(i, c, mstart, mcls, P, LP, masks, v))
            d[x] = v
        if v > best:
            best, arg = v, x
    return arg


def compile_cdal() -> None:
    """Compile (or load from the disk cache) the kernels for both probs dtypes."""
    offsets, rows, labcol = np.array([0, 2]), np.zeros(1, np.int64), np.array([1, 1])
    mstart, mcls, masks = count_classes(offsets, rows, labcol, 3)
    table = qlogq_table()
    for dtype in (np.uint16, np.float32):
        raw = np.zeros((2, 3), dtype)
        p = np.zeros((1, 3))
        mixtures(raw, 0, offsets, rows, 0, 1, labcol, mstart, mcls, table, p, p.copy())
    d = np.zeros(1)
    initial_distances(rows, rows, mstart, mcls, p, p, masks, d, 0, 1)
    greedy_step(rows, 0, mstart, mcls, p, p, masks, d, 0, 1)
