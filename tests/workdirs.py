"""A work dir holding just what training reads, for the training tests."""

from __future__ import annotations

import json
from pathlib import Path

from al_det import atomic
from al_det.coco import CategoryMap
from al_det.workdir import Workdir


def make_workdir(root: Path, demo: dict[str, Path], n_images: int = 3) -> Workdir:
    """categories.json and cycle_000/labeled.json: the first ``n_images`` of the demo pool."""
    pool = json.loads(Path(demo["pool"]).read_text())
    images = pool["images"][:n_images]
    ids = {im["id"] for im in images}
    labeled = dict(pool, images=images,
                   annotations=[a for a in pool["annotations"] if a["image_id"] in ids])
    wd = Workdir(root)
    atomic.write_json(wd.categories, CategoryMap(pool["categories"]).to_json())
    atomic.write_json(wd.cycle(0).labeled, labeled)
    return wd
