"""Label Studio's own JSON: read its export as COCO, write tasks with pre-annotations.

Pure functions over dicts; reads and writes no file (:mod:`al_det.label` reads the export,
:mod:`al_det.handoff` writes the tasks). The format is Label Studio's "JSON" export (and
import): a list of tasks, each with ``data.image`` (the image's URL or path),
``annotations[]`` (one per annotator; ``was_cancelled`` marks a skipped task) whose
``result[]`` holds ``rectanglelabels`` regions, and ``predictions[]`` of the same shape. A
region's ``value`` gives ``x``, ``y``, ``width``, ``height`` in percent of the image's
``original_width`` / ``original_height``, a ``rotation`` in degrees (clockwise, about the
top-left corner) and ``rectanglelabels: [class name]``.

The labelling config these tasks are made for (:func:`labelling_config`) names the image
``image`` and the boxes ``label``, as Label Studio's "Object Detection with Bounding Boxes"
template does.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any
from xml.sax.saxutils import quoteattr

from al_det.errors import CocoError

FROM_NAME, TO_NAME = "label", "image"
# data.<FILE_KEY> carries the pool file name, so a JSON export matches back exactly
FILE_KEY = "al_det_file_name"
BOX_TYPES = ("rectanglelabels", "labels")  # "labels" + a rectangle: the converter's other form


def is_tasks(data: Any) -> bool:
    """Whether a parsed JSON file is a Label Studio task list (not a COCO object)."""
    return isinstance(data, list) and all(
        isinstance(t, dict) and isinstance(t.get("data"), dict) for t in data)


def tasks_to_coco(tasks: list, source: str) -> dict:
    """Label Studio JSON export -> a COCO dict (not yet validated: see coco.check_coco).

    One image per task that has a submitted annotation (the most recently updated one that
    was not cancelled); tasks never labeled, or only skipped, are left out, as Label Studio's
    own COCO export does. An image without boxes has ``width``/``height`` None when no region
    carried the original size. Categories are the region label names in order of appearance,
    ids from 1. A rotated box becomes the axis-aligned box around it.
    """
    images: list[dict] = []
    annotations: list[dict] = []
    names: dict[str, int] = {}
    for n, task in enumerate(tasks):
        ann = _latest_annotation(task)
        if ann is None:
            continue
        image = {"id": len(images) + 1, "file_name": _image_name(task, n, source),
                 "width": None, "height": None}
        for region in ann.get("result") or []:
            box = _region_box(region, image, source)
            if box is None:
                continue
            cat = names.setdefault(box.pop("name"), len(names) + 1)
            annotations.append({"id": len(annotations) + 1, "image_id": image["id"],
                                "category_id": cat, "segmentation": [], "iscrowd": 0,
                                "area": box["bbox"][2] * box["bbox"][3], **box})
        images.append(image)
    categories = [{"id": i, "name": name} for name, i in names.items()]
    return {"images": images, "annotations": annotations, "categories": categories}


def _latest_annotation(task: dict) -> dict | None:
    anns = [a for a in task.get("annotations") or []
            if isinstance(a, dict) and not a.get("was_cancelled")]
    if not anns:
        return None
    return max(anns, key=lambda a: (str(a.get("updated_at") or a.get("created_at") or ""),
                                    a.get("id") or 0))


def _image_name(task: dict, n: int, source: str) -> str:
    data = task["data"]
    for key in (FILE_KEY, "image"):
        if isinstance(data.get(key), str) and data[key]:
            return data[key]
    strings = [v for v in data.values() if isinstance(v, str) and v]
    if len(strings) == 1:
        return strings[0]
    raise CocoError(f"{source}: task {task.get('id', n)} has no data.image (data keys "
                    f"{sorted(data)}); export a project whose labelling config reads $image")


def _region_box(region: Any, image: dict, source: str) -> dict | None:
    """A region's box in pixels as {"bbox", "name"}, or None for a region that is no box."""
    if not isinstance(region, dict) or region.get("type") not in BOX_TYPES:
        return None
    v = region.get("value") or {}
    labels = v.get(region["type"]) or []
    if not all(k in v for k in ("x", "y", "width", "height")) or not labels:
        return None
    w, h = region.get("original_width"), region.get("original_height")
    if not (isinstance(w, int | float) and isinstance(h, int | float) and w > 0 and h > 0):
        raise CocoError(f"{source}: image {image['file_name']!r}: a box has no original_width"
                        "/original_height; export the project again as JSON (not JSON-MIN)")
    image["width"], image["height"] = w, h
    x0, y0, x1, y1 = _rotated_extent(v["x"] * w / 100, v["y"] * h / 100, v["width"] * w / 100,
                                     v["height"] * h / 100, float(v.get("rotation") or 0.0))
    x0, y0, x1, y1 = max(0.0, x0), max(0.0, y0), min(float(w), x1), min(float(h), y1)
    return {"bbox": [x0, y0, x1 - x0, y1 - y0], "name": labels[0]}


def _rotated_extent(x: float, y: float, w: float, h: float,
                    degrees: float) -> tuple[float, float, float, float]:
    """Axis-aligned extent of a box rotated clockwise by ``degrees`` about (x, y)."""
    if degrees % 360 == 0:
        return x, y, x + w, y + h
    c, s = math.cos(math.radians(degrees)), math.sin(math.radians(degrees))
    xs = [x + dx * c - dy * s for dx, dy in ((0, 0), (w, 0), (w, h), (0, h))]
    ys = [y + dx * s + dy * c for dx, dy in ((0, 0), (w, 0), (w, h), (0, h))]
    return min(xs), min(ys), max(xs), max(ys)


def prediction_task(image: dict, url: str, boxes: Sequence[dict], model_version: str) -> dict:
    """One Label Studio task for ``image`` with ``boxes`` ({"bbox", "name", "score"}) as its
    prediction (pre-annotation): percent coordinates of the image's width and height."""
    w, h = image["width"], image["height"]
    result = [{
        "id": f"r{image['id']}_{n}", "from_name": FROM_NAME, "to_name": TO_NAME,
        "type": "rectanglelabels", "original_width": w, "original_height": h,
        "image_rotation": 0, "score": b["score"],
        "value": {"x": 100 * b["bbox"][0] / w, "y": 100 * b["bbox"][1] / h,
                  "width": 100 * b["bbox"][2] / w, "height": 100 * b["bbox"][3] / h,
                  "rotation": 0, "rectanglelabels": [b["name"]]},
    } for n, b in enumerate(boxes)]
    score = sum(b["score"] for b in boxes) / len(boxes) if boxes else 0.0
    return {"data": {TO_NAME: url, FILE_KEY: image["file_name"]},
            "predictions": [{"model_version": model_version, "score": score, "result": result}]}


def labelling_config(names: Sequence[str]) -> str:
    """The Label Studio labelling config (Settings > Labeling Interface > Code) for the tasks."""
    labels = "\n".join(f"    <Label value={quoteattr(n)}/>" for n in names)
    return (f'<View>\n  <Image name="{TO_NAME}" value="$image"/>\n'
            f'  <RectangleLabels name="{FROM_NAME}" toName="{TO_NAME}">\n{labels}\n'
            "  </RectangleLabels>\n</View>\n")
