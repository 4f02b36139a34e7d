"""``al-det evaluate``: COCO bbox metrics of a cycle's model on the test set.

Reads ``cycle_K/model.pth``, the test COCO file and its images; writes
``cycle_K/detections.json`` (COCO results format, category ids of the test file),
``cycle_K/metrics.json`` and the cycle's row of ``WORKDIR/summary.csv``. Under torchrun each
rank runs an exact shard of the test images and rank 0 gathers, writes and scores. The
metrics are computed by pycocotools from the written detections file, so anyone can recompute
them from the artifacts.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import logging
import warnings
from pathlib import Path

from al_det import atomic, coco, testhooks
from al_det.config import ExperimentConfig
from al_det.errors import ConfigError
from al_det.workdir import Workdir

log = logging.getLogger(__name__)

METRICS = ("AP", "AP50", "AP75", "APs", "APm", "APl")
SUMMARY_FIELDS = ("cycle", "labeled_images", "labeled_fraction", *METRICS)


def run_evaluate(wd: Workdir, k: int, cfg: ExperimentConfig) -> dict | None:
    """Evaluate cycle ``k``; returns the metrics on rank 0 (None on the other ranks)."""
    from al_det import dist

    cycle = wd.cycle(k)
    if cfg.data.test is None:
        raise ConfigError(f"{wd.config}: data.test is not set: there is no test set to evaluate")
    test_path = Path(cfg.data.test)
    test = coco.load_coco(test_path)
    results = _predict(wd, k, cfg, test)
    testhooks.pause_at(f"evaluate:{k}")  # test-only (AL_DET_TEST_PAUSE_AT)
    gathered = dist.all_gather_object(results)
    if not dist.is_main():
        return None
    detections = sorted((d for part in gathered for d in part),
                        key=lambda d: (d["image_id"], -d["score"]))
    atomic.write_json(cycle.detections, detections)
    metrics = coco_metrics(test, json.loads(cycle.detections.read_text()))
    labeled = len(json.loads(cycle.labeled.read_text())["images"])
    unlabeled = len(json.loads(cycle.unlabeled.read_text())["images"])
    row = {"cycle": k, "labeled_images": labeled,
           "labeled_fraction": round(labeled / max(1, labeled + unlabeled), 6), **metrics}
    atomic.write_json(cycle.metrics, {**row, "detections": len(detections),
                                      "test": str(test_path)}, indent=1)
    update_summary(wd.summary, row)
    log.info("cycle %d: AP %.4f AP50 %.4f (%d labeled images)", k, metrics["AP"],
             metrics["AP50"], labeled)
    return row


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
    """COCOeval bbox stats; no detections gives zeros and a warning (pycocotools would crash)."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    if not detections:
        warnings.warn("no detections at all on the test set: AP is 0", stacklevel=2)
        return dict.fromkeys(METRICS, 0.0)
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints its progress
        gt_api = COCO()
        gt_api.dataset = gt
        gt_api.createIndex()
        ev = COCOeval(gt_api, gt_api.loadRes(detections), "bbox")
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return {name: float(v) for name, v in zip(METRICS, ev.stats[:6], strict=True)}


def update_summary(path: Path, row: dict) -> None:
    """Replace or add the cycle's row of summary.csv, rewritten atomically, sorted by cycle."""
    rows = {}
    if path.exists():
        with open(path, newline="") as fh:
            rows = {int(r["cycle"]): r for r in csv.DictReader(fh)}
    rows[int(row["cycle"])] = {k: row[k] for k in SUMMARY_FIELDS}
    with atomic.atomic_open(path, "w") as fh:
        writer = csv.DictWriter(fh, fieldnames=SUMMARY_FIELDS, lineterminator="\n")
        writer.writeheader()
        for k in sorted(rows):
            writer.writerow(rows[k])
