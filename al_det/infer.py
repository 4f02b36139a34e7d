"""``al-det infer``: detections and instance features of the unlabeled pool, as the dump spec says.

Reads ``cycle_K/model.pth``, ``cycle_K/unlabeled.json`` (and ``labeled.json`` when the strategy
takes the labeled images as centres: ``coreset``, ``cdal``) and the pool images; writes
``cycle_K/dump/`` (docs/detections-dump.md): the unlabeled images in ``unlabeled.json``'s order,
then, for such a strategy, the labeled ones in ``labeled.json``'s; ``probs.npy`` when
``infer.probs`` is set or the strategy reads it; ``loss_pred.npy`` when the model has the
loss-prediction module (``model.loss_prediction.enabled``). Through per-chunk shards in
``cycle_K/dump_shards/chunk_NNNNN/``. The pool is cut into chunks of ``infer.chunk_size`` images,
independent of the number of processes; the chunks are dealt to the ranks exactly (no padding,
no duplicates). A finished chunk is a complete dump of its own, so a killed or preempted job
reuses it on restart, even with another world size. Rank 0 merges the chunks, checks that
they cover the pool exactly once, validates the result and removes the shards.
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import numpy as np

from al_det import coco, testhooks
from al_det.config import ExperimentConfig
from al_det.dump import PRUNED, merge_dumps, read_dump, write_dump
from al_det.errors import DumpError
from al_det.strategies import STRATEGIES
from al_det.workdir import Cycle, Workdir, read_split

log = logging.getLogger(__name__)

def run_infer(wd: Workdir, k: int, cfg: ExperimentConfig) -> Path:
    """Write cycle ``k``'s dump (all ranks infer their chunks; rank 0 merges)."""
    from al_det import dist

    cycle = wd.cycle(k)
    if (cycle.dump / PRUNED).exists():
        log.info("%s: done; its feature arrays were deleted after acquisition", cycle.dump)
        return cycle.dump
    if (cycle.dump / "meta.json").exists():
        try:  # done, if it reads: a damaged dump is named, not taken for a finished stage
            read_dump(cycle.dump, check_features=False)
        except DumpError as exc:
            raise DumpError(f"{exc}; the cycle's dump is damaged: delete {cycle.dump} and rerun "
                            "`al-det infer`") from None
        return cycle.dump
    unlabeled = read_split(cycle.unlabeled)
    if unlabeled["images"] and covers_labeled(cfg):
        # the labeled images are the strategy's initial centres: after the candidates, so
        # that these keep the rows (and the ties) of a dump of the unlabeled images alone
        labeled = read_split(cycle.labeled)["images"]
        unlabeled = dict(unlabeled, images=unlabeled["images"] + labeled)
    size = cfg.infer.chunk_size
    chunks = [unlabeled["images"][i:i + size] for i in range(0, len(unlabeled["images"]), size)]
    mine = dist.shard_indices(len(chunks), dist.rank(), dist.world_size())
    todo = [c for c in mine if not _chunk_done(cycle, c, chunks[c])]
    if todo:
        _infer_chunks(wd, k, cfg, {c: chunks[c] for c in todo}, unlabeled["categories"])
    dist.barrier()
    if dist.is_main():
        merge_chunks(cycle, chunks, unlabeled,
                     {"model": cfg.model.name, "cycle": k,
                      "score_thresh": cfg.infer.score_thresh,
                      "detections_per_img": cfg.infer.detections_per_img})
        shutil.rmtree(cycle.shards, ignore_errors=True)
    dist.barrier()
    return cycle.dump


def _chunk_done(cycle: Cycle, c: int, images: list[dict]) -> bool:
    """A chunk is reusable when its dump is complete and holds exactly its images."""
    meta = cycle.chunk(c) / "meta.json"
    if not meta.exists():
        return False
    return [img["id"] for img in json.loads(meta.read_text())["images"]] == [
        img["id"] for img in images]


def _infer_chunks(wd: Workdir, k: int, cfg: ExperimentConfig, chunks: dict[int, list[dict]],
                  categories: list[dict]) -> None:
    import torch

    from al_det import checkpoint, data, dist, models

    cmap = wd.read_categories()
    device = dist.device()
    model = checkpoint.load_trained(wd.cycle(k).model, cfg, len(cmap.labels), device)
    models.set_inference_params(model, cfg.infer.score_thresh, cfg.infer.detections_per_img)
    root = Path(cfg.data.pool_images)
    probs = wants_probs(cfg)
    # one bar over this rank's images (rank 0 shows its own share), not over chunks
    bar = dist.progress(range(sum(map(len, chunks.values()))), desc=f"infer cycle {k}",
                        unit="img")
    ticks = iter(bar)
    for c, images_of_chunk in chunks.items():
        part = {"images": images_of_chunk, "categories": categories}
        loader = data.inference_loader(part, root, range(len(images_of_chunk)),
                                       cfg.infer.batch_size, cfg.infer.workers)
        outputs = []
        with torch.inference_mode():
            for images, _ids in loader:
                outputs.extend(models.predict_with_features(
                    model, [i.to(device) for i in images], probs=probs))
                for _ in images:
                    next(ticks, None)
        _write_chunk(wd.cycle(k).chunk(c), part, outputs, cmap, cfg)
        testhooks.pause_at(f"infer:{k}:{c}")  # test-only (AL_DET_TEST_PAUSE_AT)
    next(ticks, None)  # close the bar


def covers_labeled(cfg: ExperimentConfig) -> bool:
    """Whether the dump holds the labeled images too (the strategy's initial centres)."""
    return STRATEGIES[cfg.acquire.strategy].labeled_centres


def wants_probs(cfg: ExperimentConfig) -> bool:
    """Whether infer writes probs.npy: ``infer.probs``, or the strategy reads it (cdal)."""
    return cfg.infer.probs or "probs" in STRATEGIES[cfg.acquire.strategy].reads


def probs_columns(categories: list[dict], cmap: coco.CategoryMap) -> np.ndarray:
    """The model's probability column of each dump column: 0 (background), then the label of
    each entry of the dump's ``categories`` in its order (labels follow the ids' order)."""
    return np.asarray([0] + [cmap.label_of(c["id"]) for c in categories], dtype=np.int64)


def _write_chunk(path: Path, part: dict, outputs: list[dict], cmap: coco.CategoryMap,
                 cfg: ExperimentConfig) -> None:
    """One chunk's outputs as a dump: COCO xywh boxes, category ids, features in the set dtype,
    and the optional probs (columns in the dump's category order) and loss_pred."""
    counts = [len(o["scores"]) for o in outputs]
    offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
    cat = lambda key: np.concatenate([o[key].float().cpu().numpy() for o in outputs])  # noqa: E731
    xyxy = cat("boxes").reshape(-1, 4)
    boxes = np.concatenate([xyxy[:, :2], xyxy[:, 2:] - xyxy[:, :2]], axis=1).astype(np.float32)
    labels = np.concatenate([o["labels"].cpu().numpy() for o in outputs]).astype(np.int64)
    cat_ids = np.asarray([cmap.cat_id_of(int(lab)) for lab in labels], dtype=np.int64)
    dim = outputs[0]["features"].shape[1]
    optional = {}
    if "probs" in outputs[0]:
        columns = probs_columns(part["categories"], cmap)
        optional["probs"] = cat("probs").reshape(-1, len(columns))[:, columns].astype(
            cfg.infer.feature_dtype)
    if "loss_pred" in outputs[0]:
        optional["loss_pred"] = np.stack([o["loss_pred"].float().cpu().numpy()
                                          for o in outputs]).astype(np.float32)
    write_dump(
        path, images=part["images"], categories=part["categories"], offsets=offsets,
        boxes=boxes, scores=np.clip(cat("scores"), 0.0, 1.0).astype(np.float32),
        labels=cat_ids, features=cat("features").reshape(-1, dim).astype(cfg.infer.feature_dtype),
        image_features=np.stack([o["image_feature"].float().cpu().numpy() for o in outputs]),
        **optional,
    )


def merge_chunks(cycle: Cycle, chunks: list[list[dict]], unlabeled: dict, extra: dict) -> None:
    """Merge the chunk dumps into the cycle's dump, after checking that they cover the
    images of ``unlabeled`` (the unlabeled pool, and the labeled images when inferred too)
    exactly once."""
    out = cycle.dump
    if not chunks:
        raise DumpError(f"{out}: the unlabeled pool is empty: nothing left to acquire")
    dumps = []
    for c, images in enumerate(chunks):
        if not _chunk_done(cycle, c, images):
            raise DumpError(f"{cycle.chunk(c)}: shard missing or stale; rerun `al-det infer`")
        # features are checked once, on the merged dump, not per chunk as well
        dumps.append(read_dump(cycle.chunk(c), check_features=False))
    images = [img for d in dumps for img in d.images]
    if [i["id"] for i in images] != [i["id"] for i in unlabeled["images"]]:
        raise DumpError(f"{cycle.shards}: the shards do not cover the unlabeled pool exactly once")
    merge_dumps(dumps, out, unlabeled["categories"], extra)
