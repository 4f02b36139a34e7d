"""The numbers of a report: metric mean and std per (group, cycle), class balance, stage times.

Reads the work dirs' ``summary.csv`` rows (already loaded), ``categories.json``, each
cycle's ``labeled.json`` and ``timings.jsonl`` (or, for training without timings, the last
line of ``train/log.jsonl``); writes nothing. Standard deviations are over seeds, the sample
standard deviation (``ddof=1``; 0 for one seed).
"""

from __future__ import annotations

import functools
import json
from collections import Counter
from dataclasses import dataclass

import numpy as np

from al_det.report.collect import Group, Run
from al_det.timings import read_timings
from al_det.workdir import STAGES, Workdir, read_split


@dataclass(frozen=True)
class Point:
    """One cycle of one group: mean labeled images and fraction, the metric's mean and std
    (in %) over the ``n`` runs that evaluated it."""

    cycle: int
    images: float
    fraction: float
    mean: float
    std: float
    n: int
    values: tuple[float, ...]


def mean_std(values: list[float]) -> tuple[float, float]:
    arr = np.asarray(values, dtype=float)
    return float(arr.mean()), float(arr.std(ddof=1)) if len(arr) > 1 else 0.0


def curve(group: Group, metric: str) -> list[Point]:
    """Per cycle, the metric (x100) over the group's runs that have it."""
    by_cycle: dict[int, list[dict]] = {}
    for run in group.runs:
        for row in run.rows:
            if row.get(metric) not in (None, ""):
                by_cycle.setdefault(int(row["cycle"]), []).append(row)
    out = []
    for k in sorted(by_cycle):
        rows = by_cycle[k]
        vals = [100 * float(r[metric]) for r in rows]
        m, s = mean_std(vals)
        out.append(Point(k, float(np.mean([float(r["labeled_images"]) for r in rows])),
                         float(np.mean([float(r["labeled_fraction"]) for r in rows])), m, s,
                         len(vals), tuple(vals)))
    return out


def pool_size(run: Run) -> int:
    c = run.wd.cycle(0)
    return len(read_split(c.labeled)["images"]) + len(read_split(c.unlabeled)["images"])


def class_counts(run: Run) -> dict[int, dict[str, int]]:
    """Per cycle, the labeled instances of each class (names from categories.json; iscrowd
    boxes left out, as training leaves them)."""
    return _class_counts(run.wd)


@functools.lru_cache(maxsize=256)
def _class_counts(wd: Workdir) -> dict[int, dict[str, int]]:
    names = {c["id"]: c["name"] for c in json.loads(wd.categories.read_text())["categories"]}
    out = {}
    for k in wd.cycles():
        anns = read_split(wd.cycle(k).labeled).get("annotations", [])
        counts = Counter(names[a["category_id"]] for a in anns if not a.get("iscrowd"))
        out[k] = {n: counts.get(n, 0) for n in names.values()}
    return out


def balance(group: Group) -> dict[str, list[tuple[int, float, float, float]]]:
    """The std over classes of instance counts, per cycle: (cycle, labeled images, mean, std
    over seeds), for the whole labeled set ("labeled") and for the images the cycle's
    acquisition added ("acquired", the paper's Fig. 5)."""
    per: dict[str, dict[int, list[float]]] = {"labeled": {}, "acquired": {}}
    images: dict[int, list[int]] = {}
    for run in group.runs:
        counts = class_counts(run)
        for k, c in counts.items():
            per["labeled"].setdefault(k, []).append(float(np.std(list(c.values()))))
            images.setdefault(k, []).append(
                len(read_split(run.wd.cycle(k).labeled)["images"]))
            if k - 1 in counts:
                added = [c[n] - counts[k - 1][n] for n in c]
                per["acquired"].setdefault(k - 1, []).append(float(np.std(added)))
    return {kind: [(k, float(np.mean(images[k])), *mean_std(v)) for k, v in sorted(d.items())]
            for kind, d in per.items()}


def mean_counts(group: Group, k: int) -> dict[str, float]:
    """Mean labeled instances per class at cycle ``k`` over the runs that have it."""
    rows = [class_counts(r)[k] for r in group.runs if k in r.wd.cycles()]
    return {n: float(np.mean([r[n] for r in rows])) for n in rows[0]} if rows else {}


def _train_log_seconds(run: Run, k: int) -> float | None:
    log = run.wd.cycle(k).train_log
    if not log.exists():
        return None
    for line in reversed(log.read_text().splitlines()):
        try:
            rec = json.loads(line)
        except ValueError:
            continue
        if "time" in rec:
            return float(rec["time"])
    return None


def stage_seconds(run: Run) -> dict[tuple[int, str], float]:
    """(cycle, stage) -> seconds of the run that completed it (timings.jsonl; training falls
    back on its log). Cycle 0 of a sweep member counts its base's times."""
    out: dict[tuple[int, str], float] = {}
    for rec in read_timings(run.wd.root):
        out[(int(rec["cycle"]), rec["stage"])] = float(rec["seconds"])
    for k in run.wd.cycles():
        if (k, "train") not in out and (t := _train_log_seconds(run, k)) is not None:
            out[(k, "train")] = t
    return out


def timing_table(group: Group) -> dict[int, dict[str, tuple[float, int]]]:
    """cycle -> stage -> (mean seconds over the group's runs, runs counted)."""
    acc: dict[int, dict[str, list[float]]] = {}
    for run in group.runs:
        for (k, stage), sec in stage_seconds(run).items():
            if stage in STAGES:
                acc.setdefault(k, {}).setdefault(stage, []).append(sec)
    return {k: {s: (float(np.mean(v)), len(v)) for s, v in d.items()}
            for k, d in sorted(acc.items())}
