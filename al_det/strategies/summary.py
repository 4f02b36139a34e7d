"""One streaming pass over a dump: per-image summaries for the entropy-based strategies.

Reads ``features/scores/labels.npy`` once, in chunks of whole images (features memory-mapped
chunk by chunk, the rest read; two worker threads, each mapping then computing its own chunk,
so one's page-table fill overlaps the other's compute), and keeps only per-image summaries:
basic entropy, ENMS entropy, and per (image, class) the class presence (ENMS runs in the
compiled kernel, see groups.py). Prototypes are not made here: the DivProto walk computes those
of the few candidates it visits from a second, targeted read (protos.py). Also rejects NaN/inf
in features (the dump check it replaces).

The pass covers every image of the dump and is then restricted to the candidates, so it can
start before the labeled file and ``meta.json`` are parsed (:func:`pass_ahead`): parsing JSON
holds the GIL, the pass mostly does not, so on two cores the two overlap.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .. import kernels
from ..dump import Dump, NpyRows, check_finite_features, feature_too_large, peek_offsets
from .base import Pool, Strategy, instance_entropy
from .groups import enms_mask, group_order
from .protos import LazyProtos

CHUNK_DETS = 32768  # 64 MB of float16 features per chunk and worker at D=1024
WORKERS = 2  # the machines this targets have few cores; one chunk each
PREFETCH = 2  # chunks beyond those submitted whose features the kernel reads ahead


@dataclass
class Summary:
    """Per-image summaries; groups of image i are ``grp_start[i]:grp_start[i+1]``."""

    basic: np.ndarray  # float64 [n]
    enms: np.ndarray | None  # float64 [n]
    grp_start: np.ndarray  # int64 [n+1]
    grp_cls: np.ndarray  # int64 [G] category id, ascending within an image
    grp_pres: np.ndarray  # float64 [G] class presence p(i, c)
    protos: LazyProtos | None = None

    def restrict(self, rows: np.ndarray, protos: LazyProtos | None) -> Summary:
        """The summaries of images ``rows`` (ascending), in that order."""
        counts = np.diff(self.grp_start)[rows]
        start = np.zeros(len(rows) + 1, dtype=np.int64)
        start[1:] = np.cumsum(counts)
        g = np.arange(int(start[-1])) + np.repeat(self.grp_start[rows] - start[:-1], counts)
        return Summary(self.basic[rows], None if self.enms is None else self.enms[rows], start,
                       self.grp_cls[g], self.grp_pres[g], protos)


def summarize(pool: Pool, strategy: Strategy, want_protos: bool) -> Summary:
    """The candidates' summaries, ENMS with ``strategy``'s threshold if it has one. Taken from
    the pool's pass ahead (which :func:`pass_ahead` started for this strategy) when that
    streams this dump, else streamed now. Prototypes, when asked, are computed later and only
    for the candidates the DivProto walk looks at (``LazyProtos``): it visits a few percent of
    the pool, so this pass needs none."""
    dump, ahead = pool.dump, pool.ahead
    whole = ahead.result(dump) if ahead is not None else None
    if whole is None:
        whole = stream_summary(dump.path, dump.offsets, strategy.stream_t_enms())
    rows = pool.cand_rows
    return whole.restrict(rows, LazyProtos(dump, rows) if want_protos else None)


def stream_summary(path: Path, offsets: np.ndarray, t_enms: float | None,
                   stop: threading.Event | None = None) -> Summary | None:
    """Stream the dump folder ``path`` once (``offsets`` from its offsets.npy). Returns None
    if ``stop`` is set first."""
    n = len(offsets) - 1
    basic = np.zeros(n)
    enms = np.zeros(n) if t_enms is not None else None
    grp_start = np.zeros(n + 1, dtype=np.int64)
    grp_cls, grp_pres = [], []
    for a, b, h_img, e_img, (counts, cls, pres) in _stream(path, offsets, t_enms):
        if stop is not None and stop.is_set():
            return None
        basic[a:b] = h_img
        if enms is not None:
            enms[a:b] = e_img
        grp_start[a + 1:b + 1] = counts
        grp_cls.append(cls), grp_pres.append(pres)
    np.cumsum(grp_start, out=grp_start)
    cls = np.concatenate(grp_cls) if grp_cls else np.zeros(0, np.int64)
    pres = np.concatenate(grp_pres) if grp_pres else np.zeros(0)
    return Summary(basic, enms, grp_start, cls, pres)


class PassAhead:
    """:func:`stream_summary` of a dump running in a background thread."""

    def __init__(self, path: Path, offsets: np.ndarray, t_enms: float | None) -> None:
        self.path, self.offsets, self.t_enms = path, offsets, t_enms
        self.stop = threading.Event()
        self._out: Summary | None = None
        self._err: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="al-det-pass", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            self._out = stream_summary(self.path, self.offsets, self.t_enms, self.stop)
        except BaseException as exc:  # noqa: BLE001 - re-raised in the caller's thread
            self._err = exc

    def result(self, dump: Dump) -> Summary | None:
        """The summary, if this pass streamed ``dump`` (same folder and offsets); None
        otherwise. Raises what the pass raised."""
        if Path(dump.path) != self.path or not np.array_equal(dump.offsets, self.offsets):
            return None
        self._thread.join()
        if self._err is not None:
            raise self._err
        return self._out

    def cancel(self) -> None:
        self.stop.set()
        self._thread.join()


@contextmanager
def pass_ahead(path: Path, strategy: Strategy) -> Iterator[PassAhead | None]:
    """Start ``strategy``'s streaming pass of the dump folder ``path`` now, so that it overlaps
    the reading of the JSON files that comes before selection (None if the strategy streams
    nothing, or if offsets.npy does not load: the caller's read of the dump will name the
    problem); stopped on exit. The kernels are loaded first, in this thread: that holds the
    GIL, and so does the JSON parsing the pass is meant to overlap."""
    offsets = peek_offsets(Path(path)) if strategy.streams_features else None
    if offsets is None:
        yield None
        return
    kernels.warm_up()
    ahead = PassAhead(Path(path), offsets, strategy.stream_t_enms())
    try:
        yield ahead
    finally:
        ahead.cancel()


def _stream(path: Path, offsets: np.ndarray, t_enms: float | None):
    """Chunk results in order; WORKERS threads each read and compute whole chunks (reads,
    numpy sorts and the kernels release the GIL, so one thread's read overlaps the other's
    compute)."""
    chunks = _image_chunks(offsets)
    files = {name: NpyRows(path / f"{name}.npy") for name in ("features", "scores", "labels")}

    def submit(j):
        if j + PREFETCH < len(chunks):  # cold cache: disk reads ahead while we compute
            a, b = chunks[j + PREFETCH]
            files["features"].prefetch(int(offsets[a]), int(offsets[b]))
        return pool.submit(_chunk, files, offsets, *chunks[j], t_enms)

    with ThreadPoolExecutor(max_workers=WORKERS) as pool:
        for a, b in chunks[:min(len(chunks), PREFETCH)]:
            files["features"].prefetch(int(offsets[a]), int(offsets[b]))
        pending = [submit(j) for j in range(min(len(chunks), WORKERS + 1))]
        for k in range(len(chunks)):
            out = pending.pop(0).result()
            if k + WORKERS + 1 < len(chunks):
                pending.append(submit(k + WORKERS + 1))
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


def _chunk(files: dict, offsets: np.ndarray, a: int, b: int, t_enms: float | None):
    """Summarise image rows a:b: (a, b, basic, ENMS, (groups per image, class, presence))."""
    o0, o1 = int(offsets[a]), int(offsets[b])
    path = files["features"].path
    raw = files["features"].mapped(o0, o1)
    if t_enms is None:  # else the ENMS kernel checks the rows as it reads them
        check_finite_features(raw, path, o0)

    def on_bad(row: int):  # names the chunk's first NaN/inf row, else the overflowing one
        check_finite_features(raw, path, o0)
        raise feature_too_large(path, o0 + row)

    scores, labels = files["scores"].read(o0, o1), files["labels"].read(o0, o1)
    local = np.repeat(np.arange(b - a), np.diff(offsets[a:b + 1]))
    h = instance_entropy(scores)
    h_img = np.bincount(local, weights=h, minlength=b - a)  # row order, like a plain sum
    perm, starts, pick = group_order(local, h, labels)
    pres = np.maximum.reduceat(scores[perm], starts).astype(np.float64) if len(perm) else \
        np.zeros(0)
    e_img = None
    if t_enms is not None:
        keep = np.zeros(len(perm), dtype=bool)
        keep[perm] = enms_mask(raw, perm, starts, offsets[a:b + 1] - o0, t_enms, on_bad)
        pick = pick[keep[pick]]  # (image, pick order): the order Algorithm 1 adds them in
        e_img = np.bincount(local[pick], weights=h[pick], minlength=b - a)
    first = perm[starts]
    counts = np.bincount(local[first], minlength=b - a)
    return a, b, h_img, e_img, (counts, labels[first].astype(np.int64), pres)
