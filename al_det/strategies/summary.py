"""One streaming pass over a dump: per-candidate summaries for the entropy-based strategies.

Reads ``features/scores/labels.npy`` once, in chunks of whole images (features memory-mapped
chunk by chunk, the rest read; two worker threads, each mapping then computing its own chunk,
so one's page-table fill overlaps the other's compute), and keeps only per-image summaries:
basic entropy, ENMS entropy, and per (image, class) the class presence (the group math is in
groups.py). Prototypes are not made here: the DivProto walk computes those of the few
candidates it visits from a second, targeted read (protos.py). Also rejects NaN/inf in
features (the dump check it replaces).
"""

from __future__ import annotations

import queue
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

from ..dump import Dump, check_finite_features
from .base import instance_entropy
from .blas import blas_threads
from .groups import Scratch, group_math, group_order
from .protos import LazyProtos

CHUNK_DETS = 32768  # 64 MB of float16 features per chunk and worker at D=1024
WORKERS = 2  # the machines this targets have few cores; one chunk each
PREFETCH = 2  # chunks beyond those submitted whose features the kernel reads ahead


@dataclass
class Summary:
    """Per-candidate summaries; groups of candidate i are ``grp_start[i]:grp_start[i+1]``."""

    basic: np.ndarray  # float64 [n]
    enms: np.ndarray | None  # float64 [n]
    grp_start: np.ndarray  # int64 [n+1]
    grp_cls: np.ndarray  # int64 [G] category id, ascending within an image
    grp_pres: np.ndarray  # float64 [G] class presence p(i, c)
    protos: LazyProtos | None


def summarize(dump: Dump, cand_rows: np.ndarray, t_enms: float | None,
              want_protos: bool) -> Summary:
    """Stream the dump once; ENMS only when ``t_enms`` is given. Prototypes, when asked, are
    computed later and only for the candidates the DivProto walk looks at (``LazyProtos``):
    it visits a few percent of the pool, so this pass needs no prototype at all."""
    n = len(cand_rows)
    cand_index = np.full(dump.num_images + 1, -1, dtype=np.int64)
    cand_index[cand_rows] = np.arange(n)
    basic = np.zeros(n)
    enms = np.zeros(n) if t_enms is not None else None
    grp_img, grp_cls, grp_pres = [], [], []
    for out in _stream(dump, cand_index, t_enms):
        cidx, h_img, e_img, g = out
        basic[cidx] = h_img
        if enms is not None:
            enms[cidx] = e_img
        grp_img.append(g[0]), grp_cls.append(g[1]), grp_pres.append(g[2])
    gi = np.concatenate(grp_img) if grp_img else np.zeros(0, np.int64)
    grp_start = np.zeros(n + 1, dtype=np.int64)
    grp_start[1:] = np.cumsum(np.bincount(gi, minlength=n))
    cls = np.concatenate(grp_cls) if grp_cls else np.zeros(0, np.int64)
    pres = np.concatenate(grp_pres) if grp_pres else np.zeros(0)
    protos = LazyProtos(dump, cand_rows) if want_protos else None
    return Summary(basic, enms, grp_start, cls, pres, protos)


def _stream(dump: Dump, cand_index: np.ndarray, t_enms: float | None):
    """Chunk results in order; WORKERS threads each read and compute whole chunks (numpy
    releases the GIL in reads, casts and matrix products, so one thread's read overlaps the
    other's compute), BLAS single-threaded. Each running chunk borrows one Scratch."""
    chunks = _image_chunks(dump.offsets)
    files = {name: dump.rows(name) for name in ("features", "scores", "labels")}
    cats = np.array(sorted({c["id"] for c in dump.categories}), dtype=np.int64)
    free: queue.Queue = queue.Queue()
    for _ in range(WORKERS):
        free.put(Scratch(dump.feature_dim))

    def work(ab):
        s = free.get()
        try:
            return _chunk(dump, files, cats, s, *ab, cand_index, t_enms)
        finally:
            free.put(s)

    def submit(j):
        if j + PREFETCH < len(chunks):  # cold cache: disk reads ahead while we compute
            a, b = chunks[j + PREFETCH]
            files["features"].prefetch(int(dump.offsets[a]), int(dump.offsets[b]))
        return pool.submit(work, chunks[j])

    with blas_threads(1), ThreadPoolExecutor(max_workers=WORKERS) as pool:
        for a, b in chunks[:min(len(chunks), PREFETCH)]:
            files["features"].prefetch(int(dump.offsets[a]), int(dump.offsets[b]))
        pending = [submit(j) for j in range(min(len(chunks), WORKERS + 1))]
        for k in range(len(chunks)):
            out = pending.pop(0).result()
            if k + WORKERS + 1 < len(chunks):
                pending.append(submit(k + WORKERS + 1))
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


def _chunk(dump: Dump, files: dict, cats: np.ndarray, s: Scratch, a: int, b: int,
           cand_index: np.ndarray, t_enms: float | None):
    """Read image rows a:b and summarise their candidates (None if there are none)."""
    o0, o1 = int(dump.offsets[a]), int(dump.offsets[b])
    feats = files["features"]
    raw = feats.mapped(o0, o1)
    cand = cand_index[a:b]
    # the float16 path of the ENMS math checks the rows it reads; check here what it won't:
    # float32 chunks, labeled images' rows, and every row when there is no ENMS to do
    if raw.dtype != np.float16 or (cand < 0).any() or t_enms is None:
        check_finite_features(raw, feats.path, o0)
    if (cand < 0).all():
        return None
    return _summarise(dump, files, cats, s, a, b, o0, o1, raw, cand, t_enms)


def _summarise(dump: Dump, files: dict, cats: np.ndarray, s: Scratch, a: int, b: int, o0: int,
               o1: int, raw: np.ndarray, cand: np.ndarray, t_enms: float | None):
    feats = files["features"]
    checked = []

    def recheck():  # the exact check of the whole chunk (raises, naming the first bad row)
        if not checked:
            check_finite_features(raw, feats.path, o0)
            checked.append(True)

    scores, labels = files["scores"].read(o0, o1), files["labels"].read(o0, o1)
    img = np.repeat(cand, np.diff(dump.offsets[a:b + 1]))
    rows = np.flatnonzero(img >= 0)  # labeled images in the dump (coreset pools): skipped
    scores, labels, img = scores[rows], labels[rows], img[rows]
    cidx = cand[cand >= 0]  # contiguous candidate indices
    local = img - cidx[0]
    h = instance_entropy(scores)
    h_img = np.bincount(local, weights=h, minlength=len(cidx))  # row order, like a plain sum
    perm, starts, hrank = group_order(local, h, labels, cats)
    pres = np.maximum.reduceat(scores[perm], starts).astype(np.float64) if len(perm) else \
        np.zeros(0)
    e_img = None
    if t_enms is not None:
        keep_s, _ = group_math(raw, rows[perm], h[perm], starts, t_enms, False, s, recheck)
        keep = np.zeros(len(perm), dtype=bool)
        keep[perm] = keep_s
        pick = np.argsort(local * len(h) + hrank)  # (image, pick order): the order Algorithm 1
        pick = pick[keep[pick]]  # adds them in
        e_img = np.bincount(local[pick], weights=h[pick], minlength=len(cidx))
    first = perm[starts]
    groups = (local[first] + cidx[0], labels[first].astype(np.int64), pres)
    return cidx, h_img, e_img, groups
