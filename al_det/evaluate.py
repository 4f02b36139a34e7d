"""``al-det evaluate -w``: the metrics (``evaluate.metric``) of a cycle's model on the test set.

Reads ``cycle_K/model.pth``, the test COCO file and its images; writes
``cycle_K/detections.json`` (COCO results format, category ids of the test file),
``cycle_K/metrics.json`` (the headline metrics, ``per_class`` AP by category name, the
metric's name) and the cycle's row of ``WORKDIR/summary.csv``. Under torchrun each rank runs
an exact shard of the test images and rank 0 gathers, writes and scores. The metrics are
computed (:mod:`al_det.metrics`: pycocotools for ``coco``, :mod:`al_det.voc07` for ``voc07``)
from the written detections file, so anyone can recompute them from the artifacts, e.g. with
``al-det evaluate --gt TEST.json --dets cycle_K/detections.json --metric voc07``.

summary.csv has the columns ``cycle``, ``labeled_images``, ``labeled_fraction`` and the
metric's headline numbers: ``AP, AP50, AP75, APs, APm, APl`` for ``coco``, ``mAP`` for
``voc07``; an undefined value (no ground truth in that size range) is an empty cell.
"""

from __future__ import annotations

import csv
import json
import logging
import warnings
from pathlib import Path

from al_det import atomic, coco, metrics
from al_det.config import ExperimentConfig
from al_det.errors import ConfigError
from al_det.workdir import Workdir

log = logging.getLogger(__name__)

METRICS = metrics.COCO_METRICS
SUMMARY_FIELDS = ("cycle", "labeled_images", "labeled_fraction", *METRICS)


def summary_fields(metric: str) -> tuple[str, ...]:
    """The summary.csv columns of a work dir evaluated with ``metric``."""
    return ("cycle", "labeled_images", "labeled_fraction", *metrics.HEADLINE[metric])


def run_evaluate(wd: Workdir, k: int, cfg: ExperimentConfig) -> dict | None:
    """Evaluate cycle ``k``; returns the metrics on rank 0 (None on the other ranks)."""
    from al_det import dist

    cycle = wd.cycle(k)
    if cfg.data.test is None:
        raise ConfigError(f"{wd.config}: data.test is not set: there is no test set to evaluate")
    test_path = Path(cfg.data.test)
    test = coco.load_coco(test_path)
    results = _predict(wd, k, cfg, test)
    gathered = dist.all_gather_object(results)
    if not dist.is_main():
        return None
    detections = sorted((d for part in gathered for d in part),
                        key=lambda d: (d["image_id"], -d["score"]))
    atomic.write_json(cycle.detections, detections)
    metric = cfg.evaluate.metric
    scores = metrics.compute(metric, test, json.loads(cycle.detections.read_text()))
    per_class = scores.pop("per_class")
    labeled = len(json.loads(cycle.labeled.read_text())["images"])
    unlabeled = len(json.loads(cycle.unlabeled.read_text())["images"])
    row = {"cycle": k, "labeled_images": labeled,
           "labeled_fraction": round(labeled / max(1, labeled + unlabeled), 6), **scores}
    atomic.write_json(cycle.metrics, {**row, "per_class": per_class, "metric": metric,
                                      "detections": len(detections),
                                      "test": str(test_path)}, indent=1)
    update_summary(wd.summary, row, summary_fields(metric))
    headline = ", ".join(f"{n} {_fmt(scores[n])}" for n in metrics.HEADLINE[metric][:2])
    log.info("cycle %d: %s (%d labeled images)", k, headline, labeled)
    return row


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.4f}"


def _predict(wd: Workdir, k: int, cfg: ExperimentConfig, test: dict) -> list[dict]:
    """This rank's shard of the test set, as COCO result records."""
    import torch

    from al_det import checkpoint, data, dist, models

    cmap = coco.CategoryMap.from_json(json.loads(wd.categories.read_text()))
    test_ids = cmap.match(test["categories"], cfg.data.test)
    to_test_id = {ours: theirs for theirs, ours in test_ids.items()}
    device = dist.device()
    model = checkpoint.load_trained(wd.cycle(k).model, cfg, len(cmap.labels), device)
    models.set_inference_params(model, cfg.infer.score_thresh, cfg.infer.detections_per_img)
    indices = dist.shard_indices(len(test["images"]), dist.rank(), dist.world_size())
    loader = data.inference_loader(test, Path(cfg.data.test_images), indices,
                                   cfg.infer.batch_size, cfg.infer.workers)
    results = []
    with torch.inference_mode():
        for images, image_ids in dist.progress(loader, desc=f"evaluate cycle {k}"):
            outputs = model([img.to(device) for img in images])
            for image_id, out in zip(image_ids, outputs, strict=True):
                results.extend(_records(image_id, out, cmap, to_test_id))
    return results


def _records(image_id: int, out: dict, cmap: coco.CategoryMap, to_test_id: dict) -> list[dict]:
    boxes = out["boxes"].float().cpu().tolist()
    scores = out["scores"].float().cpu().tolist()
    labels = out["labels"].cpu().tolist()
    return [
        {"image_id": image_id, "category_id": to_test_id[cmap.cat_id_of(label)],
         "bbox": [x1, y1, x2 - x1, y2 - y1], "score": score}
        for (x1, y1, x2, y2), score, label in zip(boxes, scores, labels, strict=True)
    ]


def coco_metrics(gt: dict, detections: list[dict]) -> dict[str, float]:
    """COCOeval bbox stats as pycocotools gives them (-1: undefined); no detections gives zeros
    and a warning (pycocotools would crash). :func:`al_det.metrics.compute` adds per-class AP."""
    if not detections:
        warnings.warn(metrics.NO_DETECTIONS, stacklevel=2)
        return dict.fromkeys(METRICS, 0.0)
    ev = metrics.coco_eval(gt, detections)
    return {name: float(v) for name, v in zip(METRICS, ev.stats[:6], strict=True)}


def update_summary(path: Path, row: dict, fields: tuple[str, ...] = SUMMARY_FIELDS) -> None:
    """Replace or add the cycle's row of summary.csv, rewritten atomically, sorted by cycle.

    An undefined metric (None, or pycocotools' -1) is written as an empty cell.
    """
    rows = {}
    if path.exists():
        with open(path, newline="") as fh:
            rows = {int(r["cycle"]): r for r in csv.DictReader(fh)}
    rows[int(row["cycle"])] = {k: _cell(k, row.get(k)) for k in fields}
    with atomic.atomic_open(path, "w") as fh:
        # rows of an earlier metric (a forced config change) keep the columns they share
        writer = csv.DictWriter(fh, fieldnames=fields, lineterminator="\n", restval="",
                                extrasaction="ignore")
        writer.writeheader()
        for k in sorted(rows):
            writer.writerow(rows[k])


def _cell(field: str, value: object) -> object:
    if field in ("cycle", "labeled_images", "labeled_fraction"):
        return value
    return metrics.defined(value)  # type: ignore[arg-type]
