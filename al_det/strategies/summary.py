"""One streaming pass over a dump: per-candidate summaries for the entropy-based strategies.

Reads ``features/scores/labels.npy`` once, in chunks of whole images, with explicit reads into
reused buffers (two worker threads, each reading then computing its own chunk, so one's read
overlaps the other's compute), and keeps only per-image summaries: basic entropy, ENMS
entropy, and per (image, class) the class presence and the normalised prototype (the group
math is in groups.py). Prototypes go to an unlinked temporary file (float32), so memory stays
bounded whatever the pool size; the DivProto walk reads back only those of the candidates it
visits. Also rejects NaN/inf in features (the dump check it replaces).
"""

from __future__ import annotations

import os
import queue
import tempfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

from ..dump import Dump, check_finite_features
from .base import instance_entropy
from .blas import blas_threads
from .groups import Scratch, group_math

CHUNK_DETS = 32768  # 64 MB of float16 features per chunk and worker at D=1024
WORKERS = 2  # the machines this targets have few cores; one chunk each
PREFETCH = 2  # chunks beyond those submitted whose features the kernel reads ahead


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
    releases the GIL in reads, casts and matrix products, so one thread's read overlaps the
    other's compute), BLAS single-threaded. Each running chunk borrows one Scratch."""
    chunks = _image_chunks(dump.offsets)
    files = {name: dump.rows(name) for name in ("features", "scores", "labels")}
    cats = np.array(sorted({c["id"] for c in dump.categories}), dtype=np.int64)
    free: queue.Queue = queue.Queue()
    for _ in range(WORKERS):
        free.put(Scratch(dump.feature_dim, files["features"].dtype))

    def work(ab):
        s = free.get()
        try:
            return _chunk(dump, files, cats, s, *ab, cand_index, t_enms, want_protos)
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
           cand_index: np.ndarray, t_enms: float | None, want_protos: bool):
    """Read image rows a:b and summarise their candidates (None if there are none)."""
    o0, o1 = int(dump.offsets[a]), int(dump.offsets[b])
    feats = files["features"]
    raw = feats.read_into(o0, o1, s.raw_rows(o1 - o0))
    cand = cand_index[a:b]
    if raw.dtype != np.float16 or (cand < 0).any():  # rows the float16 path won't check
        check_finite_features(raw, feats.path, o0)
    if (cand < 0).all():
        return None
    return _summarise(dump, files, cats, s, a, b, o0, o1, raw, cand, t_enms, want_protos)


def _summarise(dump: Dump, files: dict, cats: np.ndarray, s: Scratch, a: int, b: int, o0: int,
               o1: int, raw: np.ndarray, cand: np.ndarray, t_enms: float | None,
               want_protos: bool):
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
    hrank, n = _entropy_rank(h), len(h)
    cls = np.searchsorted(cats, labels)  # dense class index (labels are checked categories)
    perm = np.argsort((local * len(cats) + cls) * n + hrank)  # (image, class, pick order)
    ls, lab_s = local[perm], labels[perm]
    new = np.ones(len(perm), dtype=bool)
    new[1:] = (ls[1:] != ls[:-1]) | (lab_s[1:] != lab_s[:-1])
    starts = np.flatnonzero(new)
    pres = np.maximum.reduceat(scores[perm], starts).astype(np.float64) if len(perm) else \
        np.zeros(0)
    keep_s, protos = group_math(raw, rows[perm], h[perm], starts, t_enms, want_protos, s,
                                recheck)
    e_img = None
    if t_enms is not None:
        keep = np.zeros(len(perm), dtype=bool)
        keep[perm] = keep_s
        pick = np.argsort(local * n + hrank)  # (image, pick order): the order Algorithm 1 adds
        pick = pick[keep[pick]]
        e_img = np.bincount(local[pick], weights=h[pick], minlength=len(cidx))
    groups = (ls[starts] + cidx[0], lab_s[starts].astype(np.int64), pres)
    return cidx, h_img, e_img, groups, protos


def _entropy_rank(h: np.ndarray) -> np.ndarray:
    """Each detection's place in the pick order of Algorithm 1 (largest entropy first, ties:
    lower row first), as an integer, so that one integer key sorts by (image, class, pick):
    several times faster than ``np.lexsort`` over those columns."""
    rank = np.empty(len(h), dtype=np.int64)
    rank[np.argsort(-h, kind="stable")] = np.arange(len(h))
    return rank
