"""Work-dir acquisition: a cycle's dump and splits -> the selection and the next cycle.

Reads ``cycle_K/dump/``, ``cycle_K/labeled.json``, ``unlabeled.json`` and, in simulation, the
pool file (the only reader of the unlabeled images' ground truth: the oracle). Writes
``cycle_K/selection.json`` and then either the next cycle's ``labeled.json`` and
``unlabeled.json`` (simulation; ``unlabeled.json`` last, it marks the cycle as existing) or
``cycle_K/to_label.json`` for CVAT / Label Studio (labelling). The selection is a pure
function of the dump, the splits and the config, so a rerun after a crash redoes it exactly.
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

import orjson

from al_det import atomic, coco, splits, testhooks
from al_det.acquire import Selection, select_images, streaming_ahead, write_selection_coco
from al_det.config import AcquireConfig, ExperimentConfig
from al_det.dump import read_dump
from al_det.errors import SplitError
from al_det.workdir import Workdir

log = logging.getLogger(__name__)


def acquire_done(wd: Workdir, k: int, cfg: ExperimentConfig) -> bool:
    if cfg.mode == "labelling":
        return wd.cycle(k).to_label.exists()
    return wd.cycle(k + 1).unlabeled.exists()


def strategy_params(acq: AcquireConfig, seed: int) -> dict:
    """Every acquisition parameter of the config; the strategy keeps those it uses."""
    params = dataclasses.asdict(acq)
    del params["strategy"], params["budget"]
    return {**params, "seed": seed}


def run_acquire_cycle(wd: Workdir, k: int, cfg: ExperimentConfig) -> Selection | None:
    """Select cycle ``k``'s images and write the next split (or to_label.json)."""
    if acquire_done(wd, k, cfg):
        log.info("cycle %d: acquisition already done", k)
        return None
    cycle = wd.cycle(k)
    # the seed differs per cycle so random does not replay the same draws every cycle
    params = strategy_params(cfg.acquire, cfg.seed + k)
    with streaming_ahead(cycle.dump, cfg.acquire.strategy, params) as ahead:
        labeled = orjson.loads(cycle.labeled.read_bytes())
        unlabeled = orjson.loads(cycle.unlabeled.read_bytes())
        # infer validated the whole dump when it merged it; the strategies that use the
        # features check them again in their single pass, so they are not read twice here
        dump = read_dump(cycle.dump, check_features=False)
        _check_dump_matches(dump, unlabeled, cycle.dump)
        pool_size = len(labeled["images"]) + len(unlabeled["images"])
        budget = splits.resolve_count(cfg.acquire.budget, pool_size, "acquire.budget")
        selection = select_images(dump, labeled, budget, cfg.acquire.strategy, params, ahead)
    atomic.write_json(cycle.selection, {**selection.to_json(), "cycle": k}, indent=1)
    testhooks.pause_at(f"acquire:{k}")  # test-only (AL_DET_TEST_PAUSE_AT)
    if cfg.mode == "labelling":
        write_selection_coco(cycle.to_label, selection, unlabeled["images"],
                             unlabeled["categories"])
        log.info("cycle %d: %d images to label in %s", k, budget, cycle.to_label)
        return selection
    pool = coco.load_coco(Path(cfg.data.pool))
    nxt_labeled, nxt_unlabeled = splits.next_splits(pool, labeled, unlabeled,
                                                   list(selection.image_ids))
    splits.check_splits(pool, nxt_labeled, nxt_unlabeled)
    nxt = wd.cycle(k + 1)
    atomic.write_json(nxt.labeled, nxt_labeled)
    atomic.write_json(nxt.unlabeled, nxt_unlabeled)
    log.info("cycle %d: %s selected %d images -> cycle %d has %d labeled", k,
             cfg.acquire.strategy, budget, k + 1, len(nxt_labeled["images"]))
    return selection


def _check_dump_matches(dump, unlabeled: dict, path: Path) -> None:  # noqa: ANN001
    want = {img["id"] for img in unlabeled["images"]}
    have = set(dump.image_ids)
    if not want <= have:
        missing = sorted(want - have)[:5]
        raise SplitError(f"{path}: the dump lacks unlabeled images {missing}; rerun `al-det infer`")
