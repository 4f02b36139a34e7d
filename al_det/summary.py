"""``WORKDIR/summary.csv``: one row per evaluated cycle, its one reader and one writer.

Columns: cycle, labeled_images, labeled_fraction and the headline metrics of the work dir's
``evaluate.metric`` (:data:`al_det.metrics.HEADLINE`: AP, AP50, AP75, APs, APm, APl for COCO;
mAP for VOC07). An undefined metric (no ground truth in that size range) is an empty cell.
Written by ``evaluate`` (atomically, sorted by cycle), read by ``status`` and ``report``.
"""

from __future__ import annotations

import csv
from pathlib import Path

from al_det import atomic
from al_det.metrics import COCO_METRICS, HEADLINE, defined

COUNTS = ("cycle", "labeled_images", "labeled_fraction")
SUMMARY_FIELDS = (*COUNTS, *COCO_METRICS)


def summary_fields(metric: str) -> tuple[str, ...]:
    """The summary.csv columns of a work dir evaluated with ``metric``."""
    return (*COUNTS, *HEADLINE[metric])


def read_summary(path: Path) -> list[dict[str, str]]:
    """The rows of summary.csv (as strings; "" where undefined) by cycle; none if it does not
    exist yet."""
    if not Path(path).exists():
        return []
    with open(path, newline="") as fh:
        return sorted(csv.DictReader(fh), key=lambda r: int(r["cycle"]))


def update_summary(path: Path, row: dict, fields: tuple[str, ...] = SUMMARY_FIELDS) -> None:
    """Replace or add the cycle's row of summary.csv, rewritten atomically, sorted by cycle.
    An undefined metric (None, or pycocotools' -1) is written as an empty cell."""
    rows = {int(r["cycle"]): r for r in read_summary(path)}
    rows[int(row["cycle"])] = {k: row.get(k) if k in COUNTS else defined(row.get(k))
                               for k in fields}
    with atomic.atomic_open(path, "w") as fh:
        # rows of an earlier metric (a forced config change) keep the columns they share
        writer = csv.DictWriter(fh, fieldnames=fields, lineterminator="\n", restval="",
                                extrasaction="ignore")
        writer.writeheader()
        for k in sorted(rows):
            writer.writerow(rows[k])
