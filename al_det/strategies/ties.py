"""Exact intra-class decisions for the similarities that float32 puts next to T_intra.

Reads the detections (entropies, float64 features) of two prototypes' images; writes
nothing. A similarity within ``SIM_BAND`` of the threshold is recomputed from the raw rows in
float64, the prototype's sums in row order as the spec writes Eq. 3; one within ``TIE`` of it
(in practice a real tie: the same feature in two images at different scores, whose
prototypes are equal in real arithmetic but not after rounding) is decided in exact integer
arithmetic on the same float64 numbers, so ``M_g < T_intra`` means what the spec says.
"""

from __future__ import annotations

import numpy as np

from .. import kernels

TIE = 1e-9  # float64 prototypes and cosine are off by ~1e-15; nearer than this, go exact


def proto64(h: np.ndarray, feats: np.ndarray) -> np.ndarray:
    """Eq. 3 in float64: ``sum h_k f_k / sum h_k``, each sum in row order."""
    acc, wsum = np.zeros(feats.shape[1]), 0.0
    for hk, fk in zip(h.tolist(), feats, strict=True):
        acc += hk * fk
        wsum += hk
    return acc / wsum


def below(a: tuple[np.ndarray, np.ndarray], b: tuple[np.ndarray, np.ndarray],
          t: float) -> bool:
    """``sim(proto_a, proto_b) < t`` for two (entropies, features) detection sets of a class."""
    pa, pb = proto64(*a), proto64(*b)
    sim = kernels.cosine64(pa, pb)
    if abs(sim - t) >= TIE or min(np.abs(pa).max(), np.abs(pb).max()) < kernels.NORM_EPS:
        return sim < t  # (a prototype near zero: the spec's 1e-12 clamp, not a tie to break)
    if all(np.array_equal(x, y) for x, y in zip(a, b, strict=True)):
        return 1 < t  # the same detections (a duplicate image): equal prototypes, sim 1
    return _rational_below(a, b, t)


def _rational_below(a: tuple, b: tuple, t: float) -> bool:
    """The same test in exact integer arithmetic. The cosine ignores positive factors (1/sum h,
    and the power of two that makes the sums integers), so the integer sums stand for the
    prototypes; t >= 0 (thresholds lie in [0, 1])."""
    sa, sb = _weighted_sum(*a), _weighted_sum(*b)
    dot = sum(x * y for x, y in zip(sa, sb, strict=True))
    if dot < 0:
        return True
    tn, td = t.as_integer_ratio()
    return dot * dot * td * td < tn * tn * sum(x * x for x in sa) * sum(y * y for y in sb)


def _weighted_sum(h: np.ndarray, feats: np.ndarray) -> list[int]:
    """``sum_k h_k f_k`` exactly, times a power of two: every float64 is m 2^(e-53) with m an
    integer below 2^53 (frexp), so each product is an integer shifted to a common exponent."""
    mh, eh = np.frexp(h)
    mf, ef = np.frexp(feats)
    mh, mf = (mh * 2.0**53).astype(np.int64).tolist(), (mf * 2.0**53).astype(np.int64).tolist()
    shift = eh[:, None] + ef
    shift = (shift - shift.min()).tolist()
    out = [0] * feats.shape[1]
    for wk, row, sk in zip(mh, mf, shift, strict=True):
        for d, (x, s) in enumerate(zip(row, sk, strict=True)):
            out[d] += (wk * x) << s
    return out
