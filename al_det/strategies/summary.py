"""One streaming pass over a dump: per-candidate summaries for the entropy-based strategies.

Reads ``features/scores/labels.npy`` once, in chunks of whole images, with explicit reads
(a background thread reads and converts the next chunk while this one is computed), and
keeps only per-image summaries: basic entropy, ENMS entropy, and per (image, class) the class
presence and the normalised prototype. Prototypes go to an unlinked temporary file (float32),
so memory stays bounded whatever the pool size; the DivProto walk reads back only those of
the candidates it visits. Also rejects NaN/inf in features (the dump check it replaces).
"""

from __future__ import annotations

import os
import tempfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

from ..dump import Dump, check_finite_features
from .base import SIM_BAND, cosine_sim64, enms_keep, instance_entropy, normalize_rows

CHUNK_DETS = 16384  # ~64 MB of float32 features per chunk at D=1024


class ProtoStore:
    """Normalised float32 prototypes, one row per (image, class) group, in a temp file."""

    def __init__(self, dim: int) -> None:
        self.dim = dim
        self.fh = tempfile.TemporaryFile(prefix="al-det-protos-")
        self.rows = 0

    def append(self, protos: np.ndarray) -> None:
        self.fh.write(memoryview(np.ascontiguousarray(protos, dtype=np.float32)))
        self.rows += len(protos)

    def finish(self) -> None:
        self.fh.flush()

    def read(self, start: int, stop: int) -> np.ndarray:
        out = np.empty((stop - start, self.dim), np.float32)
        if stop > start:
            view = memoryview(out.reshape(-1).view(np.uint8))
            got = os.preadv(self.fh.fileno(), [view], start * self.dim * 4)
            assert got == len(view), "prototype temp file short read"
        return out

    def close(self) -> None:
        self.fh.close()


@dataclass
class Summary:
    """Per-candidate summaries; groups of candidate i are ``grp_start[i]:grp_start[i+1]``."""

    basic: np.ndarray  # float64 [n]
    enms: np.ndarray | None  # float64 [n]
    grp_start: np.ndarray  # int64 [n+1]
    grp_cls: np.ndarray  # int64 [G] category id, ascending within an image
    grp_pres: np.ndarray  # float64 [G] class presence p(i, c)
    protos: ProtoStore | None


def summarize(dump: Dump, cand_rows: np.ndarray, t_enms: float | None,
              want_protos: bool) -> Summary:
    """Stream the dump once; ENMS only when ``t_enms`` is given, prototypes when asked."""
    n = len(cand_rows)
    cand_index = np.full(dump.num_images + 1, -1, dtype=np.int64)
    cand_index[cand_rows] = np.arange(n)
    basic = np.zeros(n)
    enms = np.zeros(n) if t_enms is not None else None
    store = ProtoStore(dump.feature_dim) if want_protos else None
    grp_img, grp_cls, grp_pres = [], [], []
    with ThreadPoolExecutor(max_workers=1) as pool:
        chunks = _image_chunks(dump.offsets)
        nxt = pool.submit(_load_chunk, dump, *chunks[0]) if chunks else None
        for k in range(len(chunks)):
            data = nxt.result()
            nxt = pool.submit(_load_chunk, dump, *chunks[k + 1]) if k + 1 < len(chunks) else None
            out = _chunk_summary(data, dump.offsets, cand_index, t_enms, store)
            if out is None:
                continue
            cidx, h_img, e_img, g = out
            basic[cidx] = h_img
            if enms is not None:
                enms[cidx] = e_img
            grp_img.append(g[0]), grp_cls.append(g[1]), grp_pres.append(g[2])
    if store is not None:
        store.finish()
    gi = np.concatenate(grp_img) if grp_img else np.zeros(0, np.int64)
    grp_start = np.zeros(n + 1, dtype=np.int64)
    grp_start[1:] = np.cumsum(np.bincount(gi, minlength=n))
    cls = np.concatenate(grp_cls) if grp_cls else np.zeros(0, np.int64)
    pres = np.concatenate(grp_pres) if grp_pres else np.zeros(0)
    return Summary(basic, enms, grp_start, cls, pres, store)


def _image_chunks(offsets: np.ndarray) -> list[tuple[int, int]]:
    """Split image rows into ranges of about CHUNK_DETS detections (whole images)."""
    n = len(offsets) - 1
    bounds, a = [], 0
    while a < n:
        b = int(np.searchsorted(offsets, offsets[a] + CHUNK_DETS, side="right")) - 1
        b = min(n, max(b, a + 1))
        bounds.append((a, b))
        a = b
    return bounds


def _load_chunk(dump: Dump, a: int, b: int) -> tuple:
    """Background part: read a chunk's arrays, check features, widen them to float32."""
    o0, o1 = int(dump.offsets[a]), int(dump.offsets[b])
    feats = dump.rows("features").read(o0, o1)
    check_finite_features(feats, dump.path / "features.npy", o0)
    x = feats.astype(np.float32, copy=False)
    del feats
    return (a, b, x, dump.rows("scores").read(o0, o1), dump.rows("labels").read(o0, o1))


def _chunk_summary(data: tuple, offsets: np.ndarray, cand_index: np.ndarray,
                   t_enms: float | None, store: ProtoStore | None):
    a, b, x, scores, labels = data
    counts = np.diff(offsets[a:b + 1])
    cand = cand_index[a:b]
    if (cand < 0).all():
        return None
    img = np.repeat(cand, counts)
    if (cand < 0).any():  # labeled images in the dump (coreset pools): skip their detections
        m = img >= 0
        x, scores, labels, img = x[m], scores[m], labels[m], img[m]
    cidx = cand[cand >= 0]
    c0 = int(cidx[0])
    local = img - c0
    nimg = int(cidx[-1]) - c0 + 1
    h = instance_entropy(scores)
    h_img = np.bincount(local, weights=h, minlength=nimg)  # row order, like a plain sum
    perm = np.lexsort((np.arange(len(h)), -h, labels, local))
    ls, lab_s, h_s = local[perm], labels[perm], h[perm]
    new = np.ones(len(perm), dtype=bool)
    new[1:] = (ls[1:] != ls[:-1]) | (lab_s[1:] != lab_s[:-1])
    starts = np.flatnonzero(new)
    xs = x[perm]
    del x
    pres = np.maximum.reduceat(scores[perm], starts).astype(np.float64) if len(perm) else \
        np.zeros(0)
    if store is not None and len(perm):
        store.append(_prototypes(xs, h_s, starts))
    e_img = None
    if t_enms is not None:
        keep = np.zeros(len(perm), dtype=bool)
        keep[perm] = _enms_sorted(xs, starts, t_enms)
        pick = np.lexsort((np.arange(len(h)), -h, local))  # the order Algorithm 1 adds them
        pick = pick[keep[pick]]
        e_img = np.bincount(local[pick], weights=h[pick], minlength=nimg)
    groups = (ls[starts] + c0, lab_s[starts].astype(np.int64), pres)
    return cidx, h_img[cidx - c0], None if e_img is None else e_img[cidx - c0], groups


def _prototypes(xs: np.ndarray, h_s: np.ndarray, starts: np.ndarray) -> np.ndarray:
    """Eq. 3 per group (entropy-weighted mean of raw features), then normalised."""
    w = h_s.astype(np.float32)
    num = np.add.reduceat(xs * w[:, None], starts, axis=0)
    den = np.add.reduceat(h_s, starts)
    return normalize_rows(num / den[:, None].astype(np.float32))


def _enms_sorted(xs: np.ndarray, starts: np.ndarray, t: float) -> np.ndarray:
    """ENMS keep-mask over detections sorted by (image, class, -entropy, row)."""
    m = len(xs)
    sizes = np.diff(np.append(starts, m))
    keep = np.ones(m, dtype=bool)
    multi = sizes > 1
    if not multi.any():
        return keep
    xn = np.zeros((m + 1, xs.shape[1]), np.float32)  # last row: zero padding
    xn[:m] = normalize_rows(xs)
    pad = 2
    while True:
        sel = multi & (sizes <= pad) & (sizes > pad // 2)
        if sel.any():
            _enms_bucket(xs, xn, starts[sel], sizes[sel], pad, t, keep)
        if pad >= sizes.max():
            break
        pad *= 2
    return keep


def _enms_bucket(xs, xn, st, sz, pad, t, keep) -> None:
    """Batched Gram matrices of groups padded to ``pad`` rows, then the greedy sweep."""
    pos = np.arange(pad)
    valid = pos[None, :] < sz[:, None]
    idx = np.where(valid, st[:, None] + pos[None, :], len(xn) - 1)
    blk = xn[idx]
    gram = blk @ blk.transpose(0, 2, 1)
    sup = gram > t
    near = np.abs(gram - t) < SIM_BAND
    near &= valid[:, :, None] & valid[:, None, :]
    if near.any():  # borderline: decide in float64 from the raw features
        g, i, j = np.nonzero(near)
        sup[g, i, j] = cosine_sim64(xs[idx[g, i]], xs[idx[g, j]]) > t
    k = enms_keep(sup, valid)
    keep[idx[valid]] = k[valid]
