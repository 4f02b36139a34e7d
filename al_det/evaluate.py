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

import json
import logging
import warnings
from pathlib import Path

from al_det import atomic, coco, metrics, testhooks
from al_det.config import ExperimentConfig
from al_det.errors import ConfigError
from al_det.results import load_results
from al_det.summary import summary_fields, update_summary
from al_det.workdir import Workdir, read_split

log = logging.getLogger(__name__)



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
    metric = cfg.evaluate.metric
    scores = metrics.compute(metric, test, json.loads(cycle.detections.read_text()))
    per_class = scores.pop("per_class")
    labeled = len(read_split(cycle.labeled)["images"])
    unlabeled = len(read_split(cycle.unlabeled)["images"])
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

    cmap = wd.read_categories()
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
        return dict.fromkeys(metrics.COCO_METRICS, 0.0)
    ev = metrics.coco_eval(gt, detections)
    return {name: float(v) for name, v in zip(metrics.COCO_METRICS, ev.stats[:6], strict=True)}


# ------------------------------------------------------------ file mode (no torch)
def evaluate_files(gt_path: Path, dets_path: Path, metric: str,
                   output: Path | None = None) -> dict:
    """The ``metric`` scores of a results file against a COCO ground truth; written to
    ``output`` (atomically) when given. Every input is validated before anything is written."""
    if metric not in metrics.HEADLINE:
        raise ConfigError(f"--metric {metric!r} is not one of {list(metrics.HEADLINE)}")
    gt = coco.load_coco(Path(gt_path))
    detections = load_results(Path(dets_path), gt, str(gt_path))
    scores = metrics.compute(metric, gt, detections)
    if output is not None:
        atomic.write_json(Path(output), scores, indent=1)
    return scores


def format_scores(scores: dict) -> str:
    """The headline metrics, then one line per class (``-``: undefined)."""
    def fmt(v: float | None) -> str:
        return "-" if v is None else f"{v:.4f}"

    lines = [f"{name:<6} {fmt(v)}" for name, v in scores.items() if name != "per_class"]
    width = max((len(n) for n in scores["per_class"]), default=0)
    lines.append("per class:")
    lines += [f"  {name:<{width}}  {fmt(v)}" for name, v in scores["per_class"].items()]
    return "\n".join(lines)
