"""``WORKDIR/summary.csv``: one row per evaluated cycle, its one reader and one writer.

Columns: cycle, labeled_images, labeled_fraction and the metrics of :data:`METRICS`. Written by
``evaluate`` (atomically, sorted by cycle), read by ``status`` and ``report``.
"""

from __future__ import annotations

import csv
from pathlib import Path

from al_det import atomic

METRICS = ("AP", "AP50", "AP75", "APs", "APm", "APl")
SUMMARY_FIELDS = ("cycle", "labeled_images", "labeled_fraction", *METRICS)


def read_summary(path: Path) -> list[dict[str, str]]:
    """The rows of summary.csv (as strings), by cycle; none if it does not exist yet."""
    if not Path(path).exists():
        return []
    with open(path, newline="") as fh:
        return sorted(csv.DictReader(fh), key=lambda r: int(r["cycle"]))


def update_summary(path: Path, row: dict) -> None:
    """Replace or add the cycle's row of summary.csv, rewritten atomically, sorted by cycle."""
    rows = {int(r["cycle"]): r for r in read_summary(path)}
    rows[int(row["cycle"])] = {k: row[k] for k in SUMMARY_FIELDS}
    with atomic.atomic_open(path, "w") as fh:
        writer = csv.DictWriter(fh, fieldnames=SUMMARY_FIELDS, lineterminator="\n")
        writer.writeheader()
        for k in sorted(rows):
            writer.writerow(rows[k])
