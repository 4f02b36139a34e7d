"""COCO results files (any detector's detections): read and validate against the ground truth.

Reads a JSON list of ``{"image_id", "category_id", "bbox": [x, y, w, h], "score"}`` records
(what pycocotools' ``loadRes`` reads and ``al-det evaluate`` writes as ``detections.json``);
writes nothing. Every problem raises :class:`~al_det.errors.CocoError` naming the file, the
record and what to do: pycocotools would assert, crash, or score nonsense instead.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from al_det.errors import CocoError

_NUM_TYPES = (int, float)  # exact types: JSON true/false (bool) is not a number here


def _is_num(v: Any) -> bool:
    return type(v) in _NUM_TYPES and math.isfinite(v)


def load_results(path: Path, gt: dict, gt_source: str = "the ground truth") -> list[dict]:
    """The results list of ``path``, each record checked against ``gt``'s images and categories."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise CocoError(f"{path}: file not found; give the detections file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise CocoError(f"{path}: cannot read ({exc}); give a COCO results JSON file") from None
    except json.JSONDecodeError as exc:
        raise CocoError(f"{path}: invalid JSON at line {exc.lineno} column {exc.colno} "
                        f"({exc.msg}); fix or re-export the file") from None
    if not isinstance(data, list):
        raise CocoError(f"{path}: top level is a JSON {type(data).__name__}, not a list; give "
                        "a COCO results list [{image_id, category_id, bbox, score}, ...]")
    images = {im["id"] for im in gt["images"]}
    categories = {c["id"] for c in gt["categories"]}
    for i, record in enumerate(data):
        problem = _problem(record, images, categories, gt_source)
        if problem:
            raise CocoError(f"{path}: results[{i}] {problem}")
    return data


def _problem(record: Any, images: set, categories: set, gt_source: str) -> str | None:
    """What is wrong with one result record, or None."""
    if not isinstance(record, dict):
        return "is not an object; give {image_id, category_id, bbox, score}"
    missing = [k for k in ("image_id", "category_id", "bbox", "score") if k not in record]
    if missing:
        return f"has no {', '.join(missing)}; give {{image_id, category_id, bbox, score}}"
    iid, cid, bbox, score = (record[k] for k in ("image_id", "category_id", "bbox", "score"))
    if type(iid) is not int or iid not in images:
        return f"names image id {iid!r}, not an image of {gt_source}; evaluate against the " \
               "ground truth the detector ran on"
    if type(cid) is not int or cid not in categories:
        return f"(image id {iid}) names category id {cid!r}, not a category of {gt_source}; " \
               "use the ground truth's category ids"
    if type(bbox) is not list or len(bbox) != 4 or not all(_is_num(v) for v in bbox):
        return f"(image id {iid}) has bbox {bbox!r}, not 4 finite numbers [x, y, width, height]"
    if bbox[2] < 0 or bbox[3] < 0:
        return f"(image id {iid}) has bbox {bbox} with a negative width or height; give " \
               "[x, y, width, height], not corner coordinates"
    if not _is_num(score) or not 0.0 <= score <= 1.0:
        return f"(image id {iid}) has score {score!r}; scores must be numbers in [0, 1]"
    return None
