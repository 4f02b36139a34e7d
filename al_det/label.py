"""``al-det label``: real labelling rounds with CVAT, Label Studio or any COCO exporter.

Reads ``cycle_K/to_label.json`` (written by ``acquire`` in labelling mode), the cycle's splits
and the user's COCO export of those images; writes cycle K+1's ``labeled.json`` and
``unlabeled.json`` (``unlabeled.json`` last). Images are matched by file name and categories
by name, since labelling tools renumber both.
"""

from __future__ import annotations

import logging
from pathlib import Path

from al_det import atomic, coco, splits
from al_det.errors import WorkdirError
from al_det.workdir import Workdir, locked_workdir, open_workdir, read_split

log = logging.getLogger(__name__)


def run_label(workdir: Path, cycle: int | None, annotations: Path, force: bool = False) -> None:
    wd = Workdir(Path(workdir))
    with locked_workdir(wd):
        wd, _cfg = open_workdir(workdir, force)
        k = wd.resolve_cycle(cycle).index
        cur, nxt = wd.cycle(k), wd.cycle(k + 1)
        if not cur.to_label.exists():
            raise WorkdirError(f"{cur.to_label}: missing: run `al-det acquire -w {wd.root}` first")
        if nxt.unlabeled.exists():
            raise WorkdirError(f"{nxt.root}: cycle {k + 1} already has its splits")
        to_label = read_split(cur.to_label)
        labeled, unlabeled = read_split(cur.labeled), read_split(cur.unlabeled)
        export = coco.load_coco(Path(annotations))
        cmap = wd.read_categories()
        # an export may list only the labels used in this round
        match = cmap.match(export["categories"], str(annotations), allow_missing=True)
        new_labeled, new_unlabeled = splits.import_labels(
            labeled, unlabeled, [img["id"] for img in to_label["images"]], export, match,
            str(annotations),
        )
        atomic.write_json(nxt.labeled, new_labeled)
        atomic.write_json(nxt.unlabeled, new_unlabeled)
    log.info("cycle %d: %d labeled images", k + 1, len(new_labeled["images"]))
