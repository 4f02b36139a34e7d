"""DivProto (Algorithm 2, docs/acquisition.md) over candidates ordered by basic entropy.

Reads the pool's one-pass summary (prototypes computed on demand, only for visited candidates)
and the labeled set's annotation counts; writes nothing. The walk goes over the ordered
candidates in blocks. Within a block, the intra-class maxima of the block's candidates of a
class against the images selected so far are one matrix product, made when a test first needs
that class, and each acceptance updates them with one vector product, so the result is exactly
that of the one-by-one walk of the spec. Prototypes are computed only for the candidates a
block can still test (protos.py), the next block's while this one is walked.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

from ..errors import AcquireError
from . import ties
from .base import (
    SIM_BAND,
    Picked,
    Pool,
    Strategy,
    check_bool,
    check_unit,
    minority_quotas,
    stable_order,
)
from .blas import blas_threads
from .summary import Summary, summarize

BLOCK = 512


@dataclass(frozen=True)
class DivProto(Strategy):
    """DivProto over the basic-entropy ranking (the paper's ablation without ENMS)."""

    streams_features = True

    t_intra: float = 0.7
    t_inter: float = 0.3
    alpha: float = 0.5
    beta: float = 0.75
    intra_missing: str = "novel"
    intra: bool = True
    inter: bool = True

    def __post_init__(self) -> None:
        for name in ("t_intra", "t_inter"):
            check_unit(name, getattr(self, name))
        for name in ("alpha", "beta"):
            check_unit(name, getattr(self, name), low_open=True)
        check_bool("intra", self.intra), check_bool("inter", self.inter)
        if self.intra_missing not in ("novel", "skip"):
            raise AcquireError(f"acquire.intra_missing: must be 'novel' or 'skip', "
                               f"got {self.intra_missing!r}")

    def select(self, pool: Pool) -> Picked:
        minority = self.minority(pool)  # first: the streaming pass may still be running
        s = summarize(pool, self, want_protos=self.intra)
        return divproto_walk(s, s.basic, pool, self, minority)

    def minority(self, pool: Pool) -> dict:
        """Step 1: the minority classes and their quotas (none with ``inter`` off)."""
        return minority_quotas(pool.labeled, self.alpha, self.beta, pool.budget) \
            if self.inter else {}


class _Bank:
    """Per class, the prototypes of the images selected so far (growing float32 matrices)
    and which candidate each came from."""

    def __init__(self, dim: int) -> None:
        self.dim, self.mats, self.counts = dim, {}, {}
        self.owners: dict[int, list[int]] = {}

    def get(self, c: int) -> np.ndarray | None:
        n = self.counts.get(c, 0)
        return self.mats[c][:n] if n else None

    def add(self, c: int, proto: np.ndarray, owner: int) -> None:
        self.owners.setdefault(c, []).append(owner)
        n = self.counts.get(c, 0)
        mat = self.mats.get(c)
        if mat is None or n == len(mat):
            grown = np.empty((max(16, 2 * n), self.dim), np.float32)
            if n:
                grown[:n] = mat[:n]
            self.mats[c] = mat = grown
        mat[n] = proto
        self.counts[c] = n + 1


class _Walk:
    """State of one main pass (Algorithm 2, steps 2-4)."""

    def __init__(self, s: Summary, pool: Pool, cfg: DivProto, minority: dict) -> None:
        self.s, self.cfg, self.budget, self.minority = s, cfg, pool.budget, minority
        self.bank = _Bank(s.protos.dim) if cfg.intra else None
        self.selected: list[int] = []
        self._dets: dict[tuple[int, int], tuple] = {}
        self.rejected = {"inter": 0, "intra": 0}  # candidates the walk turned down, and why

    def detections(self, i: int, c: int) -> tuple[np.ndarray, np.ndarray]:
        """Candidate i's detections of class c (cached: a selected image's are asked again by
        each later near-threshold test)."""
        if (i, c) not in self._dets:
            self._dets[i, c] = self.s.protos.detections(i, c)
        return self._dets[i, c]

    def done(self) -> bool:
        return len(self.selected) >= self.budget or (self.cfg.inter and not self.minority)

    def groups(self, i: int) -> tuple[list, list]:
        a, b = self.s.grp_start[i], self.s.grp_start[i + 1]
        return self.s.grp_cls[a:b].tolist(), self.s.grp_pres[a:b].tolist()

    def passes_inter(self, i: int) -> bool:
        cls, pres = self.groups(i)
        mp = max([p for c, p in zip(cls, pres, strict=True) if c in self.minority], default=0.0)
        return mp > self.cfg.t_inter

    def run(self, order: np.ndarray) -> None:
        blocks = [order[pos:pos + BLOCK].tolist() for pos in range(0, len(order), BLOCK)]
        # the next block is filtered and its prototypes computed in a second thread while
        # this one is walked (the kernel releases the GIL); its minority test may see a larger
        # minority set than the walk will, so it keeps a superset, and the walk tests again
        with ThreadPoolExecutor(max_workers=1) as ahead:
            nxt = ahead.submit(self._prepare, blocks[0]) if blocks else None
            for j in range(len(blocks)):
                if self.done():
                    return
                block, protos = nxt.result()
                self.rejected["inter"] += len(blocks[j]) - len(block)
                if j + 1 < len(blocks):
                    nxt = ahead.submit(self._prepare, blocks[j + 1])
                cache = _BlockCache(self, block, protos) if self.cfg.intra else None
                for i in block:
                    if self.done():
                        return
                    if self.cfg.inter and not self.passes_inter(i):
                        self.rejected["inter"] += 1
                        continue
                    if cache is not None and not cache.intra_ok(i):
                        self.rejected["intra"] += 1
                        continue
                    self.accept(i, cache)

    def _prepare(self, block: list[int]) -> tuple[list[int], np.ndarray | None]:
        """The block's candidates that pass the minority test now (the set only shrinks), and
        their prototypes when the walk tests intra-class redundancy."""
        if self.cfg.inter:
            block = [i for i in block if self.passes_inter(i)]
        return block, self.s.protos.of(block) if self.cfg.intra else None

    def stop_reason(self) -> str:
        """Why the main pass ended, in words for the user."""
        cfg = self.cfg
        if len(self.selected) >= self.budget:
            return "the main pass met the budget"
        if cfg.inter and not self.minority:
            return "the main pass stopped: every minority class met its quota"
        why = []
        if self.rejected["inter"]:
            why.append(f"{self.rejected['inter']} had no minority class above t_inter "
                       f"{cfg.t_inter}")
        if self.rejected["intra"]:
            why.append(f"{self.rejected['intra']} were redundant (a class prototype at or above "
                       f"t_intra {cfg.t_intra})")
        return "the main pass ran out of candidates: " + ("; ".join(why) or "none left")

    def accept(self, i: int, cache: _BlockCache | None) -> None:
        self.selected.append(i)
        cls, pres = self.groups(i)
        if cache is not None:
            cache.add(i)
        if self.cfg.inter:
            for c, p in zip(cls, pres, strict=True):
                if c in self.minority and p > self.cfg.t_inter:
                    self.minority[c] -= 1
                    if self.minority[c] == 0:
                        del self.minority[c]


class _BlockCache:
    """The block's prototypes and, per class once first needed, the running max similarity
    of the block's prototypes of that class to the selected images' ones.

    ``M_g(i) < T_intra`` holds exactly when some class of i has its max below T_intra (or, with
    ``novel``, no selected image has it), so a test stops at the first such class, cheapest
    (smallest bank) first; a class's products are made only when a test first needs them, and
    then for all of the block's prototypes of that class at once (one matrix product)."""

    def __init__(self, walk: _Walk, block: list[int], protos: np.ndarray) -> None:
        self.walk, s = walk, walk.s
        self.where, n = {}, 0
        for i in block:
            a, b = int(s.grp_start[i]), int(s.grp_start[i + 1])
            self.where[i] = (n, n + b - a)
            n += b - a
        self.protos = protos
        self.cls = np.concatenate([s.grp_cls[s.grp_start[i]:s.grp_start[i + 1]] for i in block]
                                  ) if block else np.zeros(0, np.int64)
        self.best = np.full(n, -np.inf, dtype=np.float32)
        order = np.argsort(self.cls, kind="stable")
        cuts = np.flatnonzero(np.diff(self.cls[order])) + 1
        self.rows_of = {int(self.cls[r[0]]): r for r in np.split(order, cuts)} if n else {}
        self.mine: dict[int, np.ndarray] = {}  # per class whose maxima are in self.best: its
        # prototypes in this block, gathered once for every later update

    def intra_ok(self, i: int) -> bool:
        a, b = self.where[i]
        bank, t = self.walk.bank, self.walk.cfg.t_intra
        tests = []
        for k in range(a, b):
            c = int(self.cls[k])
            if bank.get(c) is None:
                if self.walk.cfg.intra_missing == "novel":
                    return True  # a class nothing selected shows: M_g = -inf
            else:
                tests.append((bank.counts[c], k, c))
        for _, k, c in sorted(tests):
            self._ensure(c)
            best = float(self.best[k])
            if (self._exactly_below(i, k, c) if abs(best - t) < SIM_BAND else best < t):
                return True
        return not tests  # no class of i in the bank: M_g = -inf

    def _ensure(self, c: int) -> None:
        if c not in self.mine:
            rows = self.rows_of[c]
            self.mine[c] = mine = self.protos[rows]
            self.best[rows] = (mine @ self.walk.bank.get(c).T).max(axis=1)

    def _exactly_below(self, i: int, k: int, c: int) -> bool:
        """Whether candidate i's class-c max similarity to the selected images is below
        T_intra, decided exactly (ties.py) for the bank rows that float32 puts near it (the
        others are below it by far more than float32's error)."""
        bank, t = self.walk.bank, self.walk.cfg.t_intra
        near = np.flatnonzero(bank.get(c) @ self.protos[k] >= t - 2 * SIM_BAND)
        dets, mine = self.walk.detections, self.walk.detections(i, c)
        return all(ties.below(dets(bank.owners[c][j], c), mine, t) for j in near.tolist())

    def add(self, i: int) -> None:
        a, b = self.where[i]
        for k in range(a, b):
            c = int(self.cls[k])
            self.walk.bank.add(c, self.protos[k], i)
            mine = self.mine.get(c)
            if mine is not None:
                rows = self.rows_of[c]
                self.best[rows] = np.maximum(self.best[rows], mine @ self.protos[k])


def divproto_walk(s: Summary, keys: np.ndarray, pool: Pool, cfg: DivProto,
                  minority: dict) -> Picked:
    """Main pass then fill-up (steps 4-5); keys are the ranking keys of the candidates."""
    order = stable_order(keys)
    walk = _Walk(s, pool, cfg, minority)
    with blas_threads(1):  # small products: threaded OpenBLAS measured 7x slower here
        walk.run(order)  # with both switches off it accepts the first b: the plain ranking
    main = walk.selected
    taken = np.zeros(len(keys), dtype=bool)
    taken[main] = True
    fill = order[~taken[order]][: max(0, pool.budget - len(main))]
    picked = np.concatenate([np.asarray(main, dtype=np.int64), fill])
    reasons = ["main"] * len(main) + ["fill"] * len(fill)
    return Picked(picked, [float(keys[i]) for i in picked], reasons, walk.stop_reason())
