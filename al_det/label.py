"""``al-det label``: real labelling rounds with CVAT, Label Studio or any COCO exporter.

Reads ``cycle_K/to_label.json`` (written by ``acquire`` in labelling mode), the cycle's splits
and the user's export of those images: a COCO file (CVAT's "COCO 1.0", Label Studio's "COCO",
any other) or Label Studio's own "JSON" export (a task list, converted by
:mod:`al_det.labelstudio`); the format is told from the content. Writes cycle K+1's
``labeled.json`` and ``unlabeled.json`` (``unlabeled.json`` last). Images are matched by file
name (:func:`al_det.splits.match_images`) and categories by name, since labelling tools
renumber both.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from al_det import atomic, labelstudio, splits
from al_det.coco import check_coco
from al_det.errors import CocoError, WorkdirError
from al_det.workdir import Workdir, locked_workdir, open_workdir, read_split

log = logging.getLogger(__name__)


def run_label(workdir: Path, cycle: int | None, annotations: Path, force: bool = False,
              missing_as_empty: bool = False) -> str:
    """Import ``annotations`` as cycle K+1's labels; return the line saying what was done."""
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
        export, kind = load_export(Path(annotations))
        cmap = wd.read_categories()
        match = cmap.match(used_categories(export, str(annotations)), str(annotations),
                           allow_missing=True)  # an export may list only the labels used
        result = splits.import_export(
            labeled, unlabeled, [img["id"] for img in to_label["images"]], export, match,
            str(annotations), missing_as_empty=missing_as_empty)
        atomic.write_json(nxt.labeled, result.labeled)
        atomic.write_json(nxt.unlabeled, result.unlabeled)
    absent = f", {result.absent} of them absent from the export" if result.absent else ""
    line = (f"cycle {k + 1}: imported {_n(result.images, 'image')} ({_n(result.boxes, 'box')}, "
            f"{_n(result.negatives, 'image')} without boxes{absent}) from {kind} "
            f"{annotations}; {len(result.labeled['images'])} labeled, "
            f"{len(result.unlabeled['images'])} unlabeled")
    log.info("%s", line)
    return line


def _n(count: int, noun: str) -> str:
    return f"{count} {noun}" + ("" if count == 1 else "es" if noun.endswith("x") else "s")


def load_export(path: Path) -> tuple[dict, str]:
    """Read a labelling tool's export as a validated COCO dict; (coco, what it was).

    Label Studio's COCO export gives an image without boxes ``width``/``height`` null when it
    could not open the file: such records are accepted (they carry no box) and matched by
    name only.
    """
    try:
        data = json.loads(Path(path).read_bytes())
    except FileNotFoundError:
        raise CocoError(f"{path}: file not found; give the export's path") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CocoError(f"{path}: not JSON ({exc}); export COCO or Label Studio JSON") from None
    kind = "COCO"
    if labelstudio.is_tasks(data):
        data, kind = labelstudio.tasks_to_coco(data, str(path)), "Label Studio JSON"
    elif isinstance(data, list):
        raise CocoError(f"{path}: a JSON list but not Label Studio tasks (each with 'data'); "
                        "export Label Studio's 'JSON' (not JSON-MIN or CSV) or COCO")
    elif not isinstance(data, dict):
        raise CocoError(f"{path}: top level is a JSON {type(data).__name__}; export COCO")
    return _check_sizeless(data, path), kind


def _check_sizeless(data: dict, path: Path) -> dict:
    """coco.check_coco, letting through box-less images with null width and height."""
    images = data.get("images")
    if not isinstance(images, list):
        return check_coco(data, path)
    with_boxes = {a.get("image_id") for a in data.get("annotations") or []
                  if isinstance(a, dict)}
    sizeless = [im for im in images if isinstance(im, dict) and im.get("width") is None
                and im.get("height") is None and im.get("id") not in with_boxes]
    skip = {id(im) for im in sizeless}
    checked = check_coco({**data, "images": [im for im in images if id(im) not in skip]},
                              path)
    seen = {im["id"] for im in checked["images"]}
    for im in sizeless:
        if type(im.get("id")) is not int or im["id"] in seen or not im.get("file_name"):
            raise CocoError(f"{path}: image record {im!r} has no unique integer id or no "
                            "file_name; export the file again")
        seen.add(im["id"])
    return {**checked, "images": checked["images"] + sizeless}


def used_categories(export: dict, source: str) -> list[dict]:
    """The export's categories that some annotation uses (tools list every label of the
    project; an unused one that is not a pool category is no reason to stop)."""
    used = {a["category_id"] for a in export["annotations"]}
    unused = [c["name"] for c in export["categories"] if c["id"] not in used]
    if unused:
        log.info("%s: categories %s have no box in this export", source, unused)
    return [c for c in export["categories"] if c["id"] in used]
