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
from .base import NORM_EPS, SIM_BAND, cosine_sim64, enms_keep, instance_entropy, normalize_rows
from .blas import blas_threads

CHUNK_DETS = 8192  # ~32 MB of float32 features per chunk at D=1024
WORKERS = 2  # the machines this targets have few cores; one chunk each


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
    for out in _stream(dump, cand_index, t_enms, want_protos):
        cidx, h_img, e_img, g, protos = out
        basic[cidx] = h_img
        if enms is not None:
            enms[cidx] = e_img
        if store is not None:
            store.append(protos)  # in chunk order: groups stay in (image, class) order
        grp_img.append(g[0]), grp_cls.append(g[1]), grp_pres.append(g[2])
    if store is not None:
        store.finish()
    gi = np.concatenate(grp_img) if grp_img else np.zeros(0, np.int64)
    grp_start = np.zeros(n + 1, dtype=np.int64)
    grp_start[1:] = np.cumsum(np.bincount(gi, minlength=n))
    cls = np.concatenate(grp_cls) if grp_cls else np.zeros(0, np.int64)
    pres = np.concatenate(grp_pres) if grp_pres else np.zeros(0)
    return Summary(basic, enms, grp_start, cls, pres, store)


def _stream(dump: Dump, cand_index: np.ndarray, t_enms: float | None, want_protos: bool):
    """Chunk results in order; WORKERS threads each read and compute whole chunks (numpy
    releases the GIL in reads, casts and matrix products), BLAS single-threaded."""
    chunks = _image_chunks(dump.offsets)

    def work(ab):
        data = _load_chunk(dump, *ab)
        return _chunk_summary(data, dump.offsets, cand_index, t_enms, want_protos)

    with blas_threads(1), ThreadPoolExecutor(max_workers=WORKERS) as pool:
        pending = [pool.submit(work, ab) for ab in chunks[:WORKERS + 1]]
        for k in range(len(chunks)):
            out = pending.pop(0).result()
            if k + WORKERS + 1 < len(chunks):
                pending.append(pool.submit(work, chunks[k + WORKERS + 1]))
            if out is not None:
                yield out


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
    """Read a chunk's arrays, check features, widen them to float32 (+ one zero pad row)."""
    o0, o1 = int(dump.offsets[a]), int(dump.offsets[b])
    feats = dump.rows("features").read(o0, o1)
    check_finite_features(feats, dump.path / "features.npy", o0)
    x = np.empty((o1 - o0 + 1, feats.shape[1]), np.float32)
    x[:-1] = feats
    x[-1] = 0.0
    del feats
    return (a, b, x, dump.rows("scores").read(o0, o1), dump.rows("labels").read(o0, o1))


def _chunk_summary(data: tuple, offsets: np.ndarray, cand_index: np.ndarray,
                   t_enms: float | None, want_protos: bool):
    a, b, x, scores, labels = data
    cand = cand_index[a:b]
    if (cand < 0).all():
        return None
    img = np.repeat(cand, np.diff(offsets[a:b + 1]))
    rows = np.flatnonzero(img >= 0)  # labeled images in the dump (coreset pools): skipped
    scores, labels, img = scores[rows], labels[rows], img[rows]
    cidx = cand[cand >= 0]  # contiguous candidate indices
    local = img - cidx[0]
    h = instance_entropy(scores)
    h_img = np.bincount(local, weights=h, minlength=len(cidx))  # row order, like a plain sum
    perm = np.lexsort((np.arange(len(h)), -h, labels, local))
    ls, lab_s = local[perm], labels[perm]
    new = np.ones(len(perm), dtype=bool)
    new[1:] = (ls[1:] != ls[:-1]) | (lab_s[1:] != lab_s[:-1])
    starts = np.flatnonzero(new)
    pres = np.maximum.reduceat(scores[perm], starts).astype(np.float64) if len(perm) else \
        np.zeros(0)
    keep_s, protos = _groups(x, rows[perm], h[perm], starts, t_enms, want_protos)
    e_img = None
    if t_enms is not None:
        keep = np.zeros(len(perm), dtype=bool)
        keep[perm] = keep_s
        pick = np.lexsort((np.arange(len(h)), -h, local))  # the order Algorithm 1 adds them
        pick = pick[keep[pick]]
        e_img = np.bincount(local[pick], weights=h[pick], minlength=len(cidx))
    groups = (ls[starts] + cidx[0], lab_s[starts].astype(np.int64), pres)
    return cidx, h_img, e_img, groups, protos


def _groups(x, xrow, h_s, starts, t_enms, want_protos):
    """ENMS keep-mask and prototypes of the (image, class) groups, whose detections are
    ``x[xrow]`` in pick order. Groups are batched by size, padded to a power of two."""
    m = len(xrow)
    sizes = np.diff(np.append(starts, m))
    keep = np.ones(m, dtype=bool)
    protos = np.zeros((len(starts), x.shape[1]), np.float32) if want_protos else None
    pad = 1
    while len(sizes) and pad // 2 < sizes.max():
        sel = np.flatnonzero((sizes <= pad) & (sizes > pad // 2))
        for part in np.array_split(sel, max(1, len(sel) * pad // CHUNK_DETS + 1)):
            if len(part):
                _bucket(x, xrow, h_s, starts[part], sizes[part], pad, t_enms, keep,
                        protos, part)
        pad *= 2
    return keep, protos


def _bucket(x, xrow, h_s, st, sz, pad, t, keep, protos, gidx) -> None:
    """One batch of groups padded to ``pad`` rows: Gram matrices, greedy ENMS, prototypes."""
    pos = np.arange(pad)
    valid = pos[None, :] < sz[:, None]
    sidx = np.where(valid, st[:, None] + pos[None, :], -1)  # -1: padding
    blk = x[np.where(valid, xrow[sidx], len(x) - 1)]  # last row of x is zeros
    inv = 1.0 / np.maximum(np.sqrt(np.einsum("gkd,gkd->gk", blk, blk)), np.float32(NORM_EPS))
    if protos is not None:
        w = np.where(valid, h_s[sidx], 0.0)
        num = (w.astype(np.float32)[:, None, :] @ blk)[:, 0, :]
        protos[gidx] = normalize_rows(num / w.sum(axis=1, keepdims=True).astype(np.float32))
    if t is None or pad == 1:
        return
    gram = (blk @ blk.transpose(0, 2, 1)) * inv[:, :, None] * inv[:, None, :]
    sup = gram > t
    near = np.abs(gram - t) < SIM_BAND
    near &= valid[:, :, None] & valid[:, None, :]
    if near.any():  # borderline: decide in float64 from the raw features
        g, i, j = np.nonzero(near)
        sup[g, i, j] = cosine_sim64(blk[g, i], blk[g, j]) > t
    k = enms_keep(sup, valid)
    keep[sidx[valid]] = k[valid]
