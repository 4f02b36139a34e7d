"""Shared math of the strategies (docs/acquisition.md, "Building blocks"), each once.

Pure numpy over in-memory arrays; reads and writes nothing. Numerical conventions:
entropies, keys and every threshold comparison on scores are float64 (a float32 score is
widened first, so ``p > T`` means the same as in the spec's real arithmetic); similarities are
computed in float32 for speed and every one that lands within ``SIM_BAND`` of a threshold is
recomputed in float64 from the raw features (prototypes included), every sum in row order as
the spec writes it. A similarity that equals the threshold in real arithmetic is decided as
there: exactly by DivProto (ties.py); by ENMS where float64 gets it exact (a row and its copy,
small integer rows), the only cases in which raw rows meet a threshold exactly in practice.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from ..errors import AcquireError

P_CLIP = 1e-6
SIM_BAND = 1e-4  # float32 similarity error is ~1e-6 for D <= 4096; recheck this close


@dataclass(frozen=True)
class Pool:
    """What a strategy selects from: ``cand_rows`` are the candidates' dump rows, ascending."""

    dump: Any  # al_det.dump.Dump
    cand_rows: np.ndarray
    labeled: Mapping[str, Any]
    budget: int
    ahead: Any = None  # al_det.strategies.summary.PassAhead: the streaming pass, started early


class Strategy:
    """What every strategy is: a frozen dataclass (its fields are its parameters, checked in
    ``__post_init__``) with ``select``, and what it reads from the dump, so that the caller can
    check and stream the dump without knowing the strategy by name."""

    # optional dump arrays it needs beyond offsets, boxes, scores and labels
    reads: ClassVar[tuple[str, ...]] = ()
    # it reads features.npy in the streaming pass, which checks the rows as it goes; the
    # others never read features, so the caller checks them (the dump must still be sound)
    streams_features: ClassVar[bool] = False
    # the labeled images are its initial centres (coreset, cdal): infer dumps them too
    labeled_centres: ClassVar[bool] = False

    def stream_t_enms(self) -> float | None:
        """The ENMS threshold of its streaming pass (None: no ENMS in the pass)."""
        return None

    def select(self, pool: Pool) -> Picked:
        raise NotImplementedError


@dataclass(frozen=True)
class Picked:
    """A strategy's answer: candidate indices in selection order, with key and reason each,
    and a note on how it went (DivProto: why its main pass stopped)."""

    order: np.ndarray
    keys: list
    reasons: list
    note: str = ""


def labeled_rows(pool: Pool, strategy: str, need: str) -> np.ndarray:
    """The dump rows of the labeled images, ascending: the initial centres of the k-center
    strategies (coreset, cdal), which therefore need them in the dump."""
    dump = pool.dump
    row_of = {iid: r for r, iid in enumerate(dump.image_ids)}
    missing = [im["id"] for im in pool.labeled["images"] if im["id"] not in row_of]
    if missing:
        raise AcquireError(f"{dump.path}: labeled image {missing[0]!r} (and {len(missing) - 1} "
                           f"more) not in the dump; {strategy} needs the labeled images' "
                           f"{need} as initial centres")
    return np.array(sorted(row_of[im["id"]] for im in pool.labeled["images"]), np.int64)


def instance_entropy(scores: np.ndarray) -> np.ndarray:
    """Eq. 1 in float64: ``-p ln p - (1-p) ln(1-p)``, p clipped into [1e-6, 1-1e-6]."""
    p = np.clip(np.asarray(scores, dtype=np.float64), P_CLIP, 1.0 - P_CLIP)
    return -p * np.log(p) - (1.0 - p) * np.log(1.0 - p)


def minority_quotas(labeled: Mapping[str, Any], alpha: float, beta: float,
                    budget: int) -> dict[Any, int]:
    """Step 1 of DivProto: the minority classes (in order) with their quotas."""
    counts = {c["id"]: 0 for c in labeled["categories"]}
    for ann in labeled.get("annotations") or []:
        if ann.get("iscrowd", 0) != 1 and ann.get("category_id") in counts:
            counts[ann["category_id"]] += 1
    ranked = sorted(counts, key=lambda cid: (counts[cid], cid))
    n_minor = max(1, int(np.floor(round(alpha * len(ranked), 9))))
    quota = max(1, int(np.floor(round(beta * budget / n_minor, 9))))
    return {cid: quota for cid in ranked[:n_minor]}


def stable_order(keys: np.ndarray) -> np.ndarray:
    """Indices by key, largest first; ties keep the input (dump row) order."""
    return np.argsort(-np.asarray(keys, dtype=np.float64), kind="stable")


def check_unit(name: str, value: Any, low_open: bool = False) -> float:
    """Validate a threshold-like parameter: a real number in [0, 1] (or (0, 1])."""
    if isinstance(value, bool) or not isinstance(value, (int, float, np.floating, np.integer)):
        raise AcquireError(f"acquire.{name}: must be a number, got {value!r}")
    v = float(value)
    if not (0.0 < v <= 1.0 if low_open else 0.0 <= v <= 1.0):
        rng = "(0, 1]" if low_open else "[0, 1]"
        raise AcquireError(f"acquire.{name}={value!r} must lie in {rng}")
    return v


def check_bool(name: str, value: Any) -> bool:
    if not isinstance(value, (bool, np.bool_)):
        raise AcquireError(f"acquire.{name}: must be true or false, got {value!r}")
    return bool(value)
