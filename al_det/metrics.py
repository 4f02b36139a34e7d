"""Detection metrics of a COCO results list against COCO ground truth: COCO or VOC07.

Reads nothing from disk and writes nothing: takes a validated COCO ground-truth dict and a
results list and returns plain dicts. Imports no torch (``al-det evaluate --gt --dets`` must
run without it).

* ``coco``: pycocotools' COCOeval bbox stats ``AP``, ``AP50``, ``AP75``, ``APs``, ``APm``,
  ``APl`` and ``per_class`` (category name -> AP averaged as pycocotools averages AP: the mean
  of COCOeval's precision array over IoU thresholds and recall points where it is > -1, area
  "all", maxDets 100).
* ``voc07``: ``mAP`` and ``per_class`` by :mod:`al_det.voc07`.

A value that is undefined (pycocotools' -1: no ground truth of that class or size range) is
``None`` here, ``null`` in JSON and an empty cell in ``summary.csv``.
"""

from __future__ import annotations

import contextlib
import io
import warnings
from collections.abc import Sequence

import numpy as np

COCO_METRICS = ("AP", "AP50", "AP75", "APs", "APm", "APl")
VOC07_METRICS = ("mAP",)
HEADLINE = {"coco": COCO_METRICS, "voc07": VOC07_METRICS}
NO_DETECTIONS = "no detections at all on the test set: AP is 0"


def compute(metric: str, gt: dict, detections: Sequence[dict]) -> dict:
    """The headline metrics of ``metric`` (see :data:`HEADLINE`) and ``per_class``."""
    if metric == "coco":
        return coco_scores(gt, detections)
    if metric == "voc07":
        from al_det.voc07 import voc07_metrics

        return voc07_metrics(gt, detections)
    raise ValueError(f"unknown metric {metric!r}")  # config validation rules this out


def coco_eval(gt: dict, detections: Sequence[dict]):  # noqa: ANN201 - a pycocotools COCOeval
    """A summarized COCOeval of ``detections`` (copied: pycocotools adds fields to them)."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints its progress
        gt_api = COCO()
        gt_api.dataset = gt
        gt_api.createIndex()
        ev = COCOeval(gt_api, gt_api.loadRes([dict(d) for d in detections]), "bbox")
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return ev


def coco_scores(gt: dict, detections: Sequence[dict]) -> dict:
    """COCO stats and per-class AP; no detections gives 0 everywhere defined, with a warning."""
    if not detections:
        warnings.warn(NO_DETECTIONS, stacklevel=2)
        # as COCOeval: a class with only crowd ground truth has no AP
        with_gt = {a["category_id"] for a in gt["annotations"] if not a.get("iscrowd", 0)}
        return {**dict.fromkeys(COCO_METRICS, 0.0),
                "per_class": {c["name"]: 0.0 if c["id"] in with_gt else None
                              for c in gt["categories"]}}
    ev = coco_eval(gt, detections)
    stats = {name: defined(v) for name, v in zip(COCO_METRICS, ev.stats[:6], strict=True)}
    return {**stats, "per_class": coco_per_class(ev, gt["categories"])}


def coco_per_class(ev, categories: Sequence[dict]) -> dict[str, float | None]:  # noqa: ANN001
    """AP per category name from COCOeval's precision array [T, R, K, A, M]."""
    precision = ev.eval["precision"]
    area = ev.params.areaRngLbl.index("all")
    max_dets = ev.params.maxDets.index(100)
    column = {cid: k for k, cid in enumerate(ev.params.catIds)}
    out = {}
    for cat in categories:
        p = precision[:, :, column[cat["id"]], area, max_dets]
        out[cat["name"]] = float(np.mean(p[p > -1])) if (p > -1).any() else None
    return out


def defined(value: float | None) -> float | None:
    """pycocotools' -1 (undefined) as None; any other value as a float."""
    if value is None or value < 0:
        return None
    return float(value)
