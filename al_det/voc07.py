"""PASCAL VOC 2007 11-point mAP of a COCO results list against COCO ground truth (numpy only).

Reads nothing from disk: takes a COCO ground-truth dict and a COCO results list (``image_id``,
``category_id``, ``bbox`` as ``[x, y, w, h]``, ``score``) and returns
``{"mAP": float | None, "per_class": {category name: AP | None}}``. Writes nothing.

The rule is the VOC devkit's (``VOCevaldet.m``) as py-faster-rcnn's ``voc_eval.py`` computes it
with ``use_07_metric=True``, with two deliberate choices:

* per class, detections are sorted by decreasing score; equal scores keep their input order
  (a stable sort: ``voc_eval.py``'s ``argsort`` is not stable, so its order for ties is
  arbitrary);
* IoU is computed on continuous coordinates, without the old devkit's ``+ 1`` pixel (COCO
  boxes, as ``scripts/voc_to_coco.py`` writes them, are already continuous).

Each detection takes the ground-truth box of its image and class with the highest IoU (the
first on ties), matched or not. If that IoU is > 0.5: a difficult box (``iscrowd: 1``, as
``voc_to_coco.py`` writes VOC's difficult objects, or ``difficult: 1``) makes the detection
neither TP nor FP; an unmatched box makes it a TP and is marked matched; an already matched
one makes it an FP. Otherwise it is an FP. With cumulative counts, recall is
``tp / n_positives`` (non-difficult boxes) and precision ``tp / max(tp + fp, eps)``; AP is the
mean over the 11 thresholds ``numpy.arange(0, 1.1, 0.1)`` (as ``voc_eval.py``: note that these
floats are 0.30000000000000004, 0.6000000000000001 and 0.7000000000000001 at 0.3, 0.6 and 0.7)
of the best precision at recall >= t, 0 where no recall reaches t. A class without
non-difficult ground truth has no AP (``None``) and is left out of the mAP; mAP is ``None``
when no class has any.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

IOU_THRESHOLD = 0.5
RECALL_THRESHOLDS = np.arange(0.0, 1.1, 0.1)  # voc_eval.py's floats, kept bit for bit
EPS = np.finfo(np.float64).eps


@dataclass
class _ImageGT:
    """One image's ground truth of one class."""

    boxes: np.ndarray  # float64 [n, 4] xyxy
    difficult: np.ndarray  # bool [n]
    matched: np.ndarray  # bool [n], set while the class is evaluated


def is_difficult(ann: dict) -> bool:
    """VOC's difficult flag: ``iscrowd: 1`` (voc_to_coco.py) or ``difficult: 1``."""
    return bool(ann.get("iscrowd", 0)) or bool(ann.get("difficult", 0))


def xyxy(bbox: Sequence[float]) -> list[float]:
    x, y, w, h = bbox
    return [x, y, x + w, y + h]


def voc07_metrics(gt: dict, detections: Sequence[dict]) -> dict:
    """VOC07 11-point AP per category (by name) and their mean; see the module docstring."""
    if not detections:
        warnings.warn("no detections at all: VOC07 mAP is 0", stacklevel=2)
    anns = _by_category(gt["annotations"])
    dets = _by_category(detections)
    per_class = {cat["name"]: class_ap(anns.get(cat["id"], []), dets.get(cat["id"], []))
                 for cat in gt["categories"]}
    defined = [ap for ap in per_class.values() if ap is not None]
    mean = float(np.mean(defined)) if defined else None
    return {"mAP": mean, "per_class": per_class}


def _by_category(records: Sequence[dict]) -> dict[int, list[dict]]:
    """Records grouped by ``category_id``, each group in input order."""
    out: dict[int, list[dict]] = {}
    for r in records:
        out.setdefault(r["category_id"], []).append(r)
    return out


def class_ap(anns: Sequence[dict], dets: Sequence[dict]) -> float | None:
    """The 11-point AP of one class from its annotations and detections (None: no positives)."""
    images = _group_gt(anns)
    n_pos = sum(int((~g.difficult).sum()) for g in images.values())
    if n_pos == 0:
        return None
    scores = np.array([d["score"] for d in dets], dtype=np.float64)
    order = np.argsort(-scores, kind="stable")  # ties: input order
    tp = np.zeros(len(dets))
    fp = np.zeros(len(dets))
    for rank, i in enumerate(order):
        outcome = _match(images.get(dets[i]["image_id"]), xyxy(dets[i]["bbox"]))
        if outcome == "tp":
            tp[rank] = 1
        elif outcome == "fp":
            fp[rank] = 1
    tp, fp = np.cumsum(tp), np.cumsum(fp)
    recall = tp / n_pos
    precision = tp / np.maximum(tp + fp, EPS)
    return eleven_point_ap(recall, precision)


def _group_gt(anns: Sequence[dict]) -> dict[int, _ImageGT]:
    by_image: dict[int, list[dict]] = {}
    for a in anns:
        by_image.setdefault(a["image_id"], []).append(a)
    return {
        iid: _ImageGT(np.array([xyxy(a["bbox"]) for a in group], dtype=np.float64),
                      np.array([is_difficult(a) for a in group], dtype=bool),
                      np.zeros(len(group), dtype=bool))
        for iid, group in by_image.items()
    }


def _match(image: _ImageGT | None, box: list[float]) -> str:
    """``"tp"``, ``"fp"`` or ``"ignore"`` for one detection, marking the box it matches."""
    if image is None:
        return "fp"
    overlaps = iou(np.asarray(box, dtype=np.float64), image.boxes)
    j = int(np.argmax(overlaps))
    if not overlaps[j] > IOU_THRESHOLD:
        return "fp"
    if image.difficult[j]:
        return "ignore"
    if image.matched[j]:
        return "fp"
    image.matched[j] = True
    return "tp"


def iou(box: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    """IoU of one xyxy box with each row of ``boxes``, continuous coordinates (no ``+ 1``)."""
    iw = np.maximum(np.minimum(boxes[:, 2], box[2]) - np.maximum(boxes[:, 0], box[0]), 0.0)
    ih = np.maximum(np.minimum(boxes[:, 3], box[3]) - np.maximum(boxes[:, 1], box[1]), 0.0)
    inter = iw * ih
    union = ((box[2] - box[0]) * (box[3] - box[1])
             + (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1]) - inter)
    return inter / union


def eleven_point_ap(recall: np.ndarray, precision: np.ndarray) -> float:
    """Mean over :data:`RECALL_THRESHOLDS` of the best precision at recall >= t (0 if none)."""
    total = 0.0
    for t in RECALL_THRESHOLDS:
        reached = recall >= t
        total += float(precision[reached].max()) if reached.any() else 0.0
    return total / len(RECALL_THRESHOLDS)
