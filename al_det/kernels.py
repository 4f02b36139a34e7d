"""Compiled kernels of acquisition and of the dump check (numba; reads and writes only the
arrays passed in).

- ``order_groups``: a chunk's detections sorted per image into (class, pick order) runs.
- ``enms_keep``: Algorithm 1 (ENMS) within each (image, class) run.
- ``prototypes``: Eq. 3 per run, normalised.
- ``first_nonfinite_row``: the NaN/inf check of feature rows.
- ``kcenter_step``: one step of core-set's k-center greedy.
- ``first_bad_prob_row``: the check of ``probs.npy`` rows (finite, >= 0, sum 1).
  CDAL's kernels are in :mod:`al_det.kernels_cdal`.

Feature rows are widened from float16 to float32 on the fly (the CPU's half-precision
conversion), so no float32 copy of a chunk is ever made and each row is read once per use.
numba compiles a kernel on its first call and caches the machine code on disk (``cache=True``):
the first run after installing compiles for a few seconds, later ones load in ~0.5 s. Why
compiled: measured on the COCO-scale benchmark, the same streaming pass as batched numpy
products took ~24 CPU-s (gathers, widening passes, tiny BLAS calls), and ~3.4 CPU-s here.

Arithmetic: similarities are float32 (summed in any order), and one within ``band`` of the
threshold is recomputed in float64 (``cosine64``), summed in row order as the spec's real
arithmetic would (DivProto's prototypes are recomputed so in strategies/ties.py). NaN or
infinity in a row makes its squared length (or a prototype sum) non-finite: the kernel stops
and returns that position for the caller to report. ``fastmath`` omits the no-NaN/no-inf
flags for that reason.
"""

from __future__ import annotations

import numpy as np
from llvmlite import ir
from numba import njit, types
from numba.extending import intrinsic

_FAST = {"reassoc", "contract", "nsz", "arcp"}  # vectorise sums; keep NaN/inf semantics
NORM_EPS = 1e-12


@intrinsic
def _widen(typingctx, x):
    """float16 bits (uint16) -> float32, exactly; float32 -> itself."""
    if x == types.uint16:
        def codegen(context, builder, sig, args):
            return builder.fpext(builder.bitcast(args[0], ir.HalfType()), ir.FloatType())
        return types.float32(x), codegen
    if x == types.float32:
        return types.float32(x), lambda context, builder, sig, args: args[0]
    return None


# The helpers below are inlined into the kernels (so they take the kernels' fastmath flags):
# a call per row would pass arrays by reference count, which measured 30% of the kernel time.


@njit(inline="always")
def _load(raw, r, out):
    """Row r of raw widened into out; returns its squared length."""
    s = np.float32(0.0)
    for d in range(out.shape[0]):
        v = _widen(raw[r, d])
        out[d] = v
        s += v * v
    return s


@njit(inline="always")
def _sq_dot(raw, r, x0):
    """Squared length of row r of raw and its dot product with x0, in one read of the row."""
    s = t = np.float32(0.0)
    for d in range(x0.shape[0]):
        v = _widen(raw[r, d])
        s += v * v
        t += v * x0[d]
    return s, t


@njit(inline="always")
def _dot(a, b):
    s = np.float32(0.0)
    for d in range(a.shape[0]):
        s += a[d] * b[d]
    return s


@njit(inline="always")
def _inv_norm(sq):
    return np.float32(1.0) / max(np.sqrt(sq), np.float32(NORM_EPS))


@njit(inline="always")
def _group_end(starts, g, m):
    return starts[g + 1] if g + 1 < starts.shape[0] else m


@njit(nogil=True, cache=True)
def cosine64(a, b):
    """The spec's cosine similarity in float64, every sum in row order (not inlined: strict
    arithmetic, and rarely called). ``sqrt(na * nb)`` for ``|a| |b|``, the same number in real
    arithmetic, is rounded twice, not three times, and exact where ``na * nb`` is a square
    (so a vector and its copy give exactly 1, and integer rows such as (1, 1, 0) and (0, 1, 1)
    exactly 1/2), so a similarity that equals the threshold in real arithmetic equals it here."""
    dot = na = nb = 0.0
    for d in range(a.shape[0]):
        x, y = np.float64(a[d]), np.float64(b[d])
        dot += x * y
        na += x * x
        nb += y * y
    if na < NORM_EPS * NORM_EPS or nb < NORM_EPS * NORM_EPS:
        return dot / (max(np.sqrt(na), NORM_EPS) * max(np.sqrt(nb), NORM_EPS))
    return dot / np.sqrt(na * nb)


@njit(nogil=True, cache=True)
def _near_gone(x, raw, r, tmp, t):
    """``sim(x, row r of raw) > t`` decided in float64 (the row widened into tmp)."""
    _load(raw, r, tmp)
    return cosine64(x, tmp) > t


@njit(inline="always")
def _gone(s, t, band, x, raw, r, tmp):
    """``sim > t`` for the float32 similarity s of x and row r of raw; within band of t,
    decided again in float64."""
    if abs(s - np.float32(t)) < band:
        return _near_gone(x, raw, r, tmp, t)
    return s > np.float32(t)


@njit(nogil=True, cache=True, fastmath=_FAST)
def enms_keep(raw, perm, starts, img_start, t, band, keep):
    """Algorithm 1 within each group: ``keep[i]`` for sorted position i, whose feature is
    ``raw[perm[i]]``; group g is positions ``starts[g]`` up to the next start (or the end), in
    pick order. A kept detection removes each later one with similarity > t. Image k's
    positions ``img_start[k]:img_start[k+1]`` are a permutation of its raw rows, the same
    range. Returns -1, or the first position met whose squared length is not finite (NaN/inf,
    or float32 overflow).

    The first pick is always kept and, on real detections, removes most of its group, so per
    image the first picks are widened into a buffer and then each other row is read once, in
    row order (what the memory prefetcher serves best: measured 13% faster than pick order),
    for its length and its similarity to its group's first pick; only the survivors are read
    again, for the rest of the greedy among themselves."""
    m, dim = perm.shape[0], raw.shape[1]
    inv, gid = np.empty(m, np.int64), np.empty(m, np.int64)
    k_max, g_max = 1, 1
    for g in range(starts.shape[0]):
        e = _group_end(starts, g, m)
        k_max = max(k_max, e - starts[g])
        for p in range(starts[g], e):
            gid[p] = g
            inv[perm[p]] = p
    for k in range(img_start.shape[0] - 1):
        if img_start[k + 1] > img_start[k]:
            g_max = max(g_max, gid[img_start[k + 1] - 1] - gid[img_start[k]] + 1)
    x0, inv0 = np.empty((g_max, dim), np.float32), np.empty(g_max, np.float32)
    xs, tmp = np.empty((k_max, dim), np.float32), np.empty(dim, np.float32)
    inv_row, surv = np.empty(m, np.float32), np.empty(k_max, np.int64)
    removed = np.zeros(k_max, np.bool_)
    for k in range(img_start.shape[0] - 1):
        a, b = img_start[k], img_start[k + 1]
        if b == a:
            continue
        g_lo = gid[a]
        for g in range(g_lo, gid[b - 1] + 1):  # the image's first picks
            sq = _load(raw, perm[starts[g]], x0[g - g_lo])
            if not (sq < np.inf):
                return starts[g]
            inv0[g - g_lo] = _inv_norm(sq)
            keep[starts[g]] = True
        for r in range(a, b):  # every other row of the image, in row order
            p = inv[r]
            g = gid[p]
            if p == starts[g]:
                continue
            sq, dot = _sq_dot(raw, r, x0[g - g_lo])
            if not (sq < np.inf):
                return p
            inv_row[p] = _inv_norm(sq)
            keep[p] = not _gone(dot * inv0[g - g_lo] * inv_row[p], t, band, x0[g - g_lo], raw,
                                r, tmp)
        for g in range(g_lo, gid[b - 1] + 1):  # the greedy among each group's survivors
            n = 0
            for p in range(starts[g] + 1, _group_end(starts, g, m)):
                if keep[p]:
                    surv[n] = p
                    _load(raw, perm[p], xs[n])
                    removed[n] = False
                    n += 1
            for u in range(n):
                if removed[u]:
                    keep[surv[u]] = False
                    continue
                for v in range(u + 1, n):
                    if not removed[v]:
                        s = _dot(xs[u], xs[v]) * inv_row[surv[u]] * inv_row[surv[v]]
                        removed[v] = _gone(s, t, band, xs[u], raw, perm[surv[v]], tmp)
    return -1


@njit(nogil=True, cache=True, fastmath=_FAST)
def prototypes(raw, xrow, w, starts, out):
    """Eq. 3, normalised: ``out[g]`` is the unit-length ``sum w_i f_i / sum w_i`` over group
    g (positions as in :func:`enms_keep`, weights w > 0), summed in float64. Returns -1, or
    the start of the first group whose sum is not finite (a NaN/inf feature)."""
    m, dim = xrow.shape[0], raw.shape[1]
    acc = np.empty(dim, np.float64)
    for g in range(starts.shape[0]):
        a = starts[g]
        acc[:] = 0.0
        wsum = 0.0
        for i in range(a, _group_end(starts, g, m)):
            r, wi = xrow[i], w[i]
            wsum += wi
            for d in range(dim):
                acc[d] += wi * np.float64(_widen(raw[r, d]))
        sq = 0.0
        for d in range(dim):
            acc[d] /= wsum
            sq += acc[d] * acc[d]
        if not (sq < np.inf):
            return a
        scale = 1.0 / max(np.sqrt(sq), NORM_EPS)
        for d in range(dim):
            out[g, d] = acc[d] * scale
    return -1


@njit(inline="always")
def _before(key, x, y, descending):
    """Position x strictly before position y in the order of ``key``."""
    return key[x] > key[y] if descending else key[x] < key[y]


@njit(inline="always")
def _insertion_sort(idx, key, descending):
    """Stable in-place sort of the positions ``idx`` by ``key[idx]``; for few elements (most
    images' detections) several times faster than a general sort."""
    for u in range(1, idx.shape[0]):
        x = idx[u]
        v = u
        while v > 0 and _before(key, x, idx[v - 1], descending):
            idx[v] = idx[v - 1]
            v -= 1
        idx[v] = x


@njit(nogil=True, cache=True)
def _merge_sort(idx, key, descending, buf):
    """Stable in-place sort of ``idx`` as :func:`_insertion_sort`, in O(n log n): runs of 32
    by insertion, then bottom-up merges through ``buf`` (at least as long as idx)."""
    n = idx.shape[0]
    for lo in range(0, n, 32):
        _insertion_sort(idx[lo:lo + 32], key, descending)
    src, dst, width, rounds = idx, buf[:n], 32, 0
    while width < n:
        for lo in range(0, n, 2 * width):
            mid, hi = min(lo + width, n), min(lo + 2 * width, n)
            i, j = lo, mid
            for k in range(lo, hi):
                # the right run's element goes first only if strictly before: stable
                if j < hi and (i >= mid or _before(key, src[j], src[i], descending)):
                    dst[k] = src[j]
                    j += 1
                else:
                    dst[k] = src[i]
                    i += 1
        src, dst, width, rounds = dst, src, 2 * width, rounds + 1
    if rounds % 2:  # the result is in buf
        idx[:] = src


@njit(nogil=True, cache=True)
def order_groups(img_start, h, cls):
    """Per image (detections ``img_start[i]:img_start[i+1]``): ``pick``, its detections in the
    pick order of Algorithm 1 (largest h first, ties: lower position), and ``perm``, the same
    grouped by class (ascending; pick order within a class)."""
    m = h.shape[0]
    perm, pick, buf = np.empty(m, np.int64), np.empty(m, np.int64), np.empty(m, np.int64)
    for i in range(img_start.shape[0] - 1):
        a, b = img_start[i], img_start[i + 1]
        for u in range(a, b):
            pick[u] = u
        _merge_sort(pick[a:b], h, True, buf)
        perm[a:b] = pick[a:b]
        _merge_sort(perm[a:b], cls, False, buf)
    return perm, pick


@njit(nogil=True, cache=True, fastmath=_FAST)
def _first_unbounded_row(raw, start):
    """The first row from ``start`` whose squared length is not finite in float32, or -1."""
    for r in range(start, raw.shape[0]):
        s = np.float32(0.0)
        for d in range(raw.shape[1]):
            v = _widen(raw[r, d])
            s += v * v
        if not (s < np.inf):
            return r
    return -1


def first_nonfinite_row(raw: np.ndarray) -> int:
    """The first row of ``raw`` (2-D, float16 or float32) holding a NaN or infinity, or -1.
    Measured 3x faster than numpy's bit test on float16 chunks; a finite float32 row whose
    squared length overflows is looked at again exactly and skipped."""
    x, r = as_kernel_input(raw), 0
    while (r := _first_unbounded_row(x, r)) >= 0:
        if not np.isfinite(raw[r]).all():
            return r
        r += 1
    return -1


@njit(nogil=True, cache=True, fastmath=_FAST)
def kcenter_step(x, c, d2):
    """One k-center greedy update: ``d2[j] = min(d2[j], |x[j] - c|^2)`` (float64, from the
    float32 rows of x); returns the first j with the largest d2 afterwards (-1 if x is empty)."""
    best, arg = -np.inf, -1
    for j in range(x.shape[0]):
        s = 0.0
        for k in range(x.shape[1]):
            t = np.float64(x[j, k]) - c[k]
            s += t * t
        if s < d2[j]:
            d2[j] = s
        if d2[j] > best:
            best, arg = d2[j], j
    return arg


@njit(nogil=True, cache=True)
def _bad_prob_row(raw, tol):
    for r in range(raw.shape[0]):
        s = 0.0
        for d in range(raw.shape[1]):
            v = np.float64(_widen(raw[r, d]))
            if not (abs(v) < np.inf):
                return r, 1, v
            if v < 0.0:
                return r, 2, v
            s += v
        if not (abs(s - 1.0) <= tol):
            return r, 3, s
    return -1, 0, 0.0


def first_bad_prob_row(raw: np.ndarray, tol: float) -> tuple[int, int, float]:
    """The first row of ``raw`` (2-D, float16 or float32 probability vectors) that is bad,
    with why (1: NaN/inf, 2: a negative entry, 3: its float64 sum is not within ``tol`` of 1)
    and the offending value; ``(-1, 0, 0.0)`` if none."""
    r, why, value = _bad_prob_row(as_kernel_input(raw), tol)
    return int(r), int(why), float(value)


def as_kernel_input(raw: np.ndarray) -> np.ndarray:
    """Feature rows as the kernels take them: float16 as uint16 bits, read-only (one compiled
    variant per dtype, whatever the caller's array flags)."""
    v = raw.view(np.uint16) if raw.dtype == np.float16 else raw.astype(np.float32, copy=False)
    v = np.ascontiguousarray(v).view()
    v.flags.writeable = False
    return v


def warm_up() -> None:
    """Load the compiled kernels now: numba's first call sets up its compiler (~0.5 s, holding
    the GIL), which a caller may want done before starting other work."""
    order_groups(np.zeros(1, np.int64), np.zeros(0), np.zeros(0, np.int64))


def compile_all() -> None:
    """Compile (or load from the disk cache) every kernel for both feature dtypes: what the
    first acquisition after installing would otherwise do on the way."""
    warm_up()
    for dtype in (np.float16, np.float32):
        raw = as_kernel_input(np.ones((2, 4), dtype))
        rows, starts = np.arange(2), np.zeros(1, np.int64)
        enms_keep(raw, rows, starts, np.array([0, 2]), 0.5, 1e-4, np.zeros(2, np.bool_))
        prototypes(raw, rows, np.ones(2), starts, np.empty((1, 4), np.float32))
        first_nonfinite_row(raw)
        first_bad_prob_row(raw, 1e-3)
    kcenter_step(np.ones((2, 4), np.float32), np.ones(4), np.zeros(2))
    cosine64(np.ones(4), np.ones(4))  # float64 prototypes, at DivProto's ties (ties.py)
    from .kernels_cdal import compile_cdal

    compile_cdal()
