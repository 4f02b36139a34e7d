"""``al-det init``: validate the config and data, freeze them, write cycle 0's splits.

Reads the experiment YAML, the pool and test COCO files (or generates the demo dataset into
``WORKDIR/data``), and in labelling mode the user's labeled COCO file. Writes
``WORKDIR/categories.json``, ``versions.json``, ``cycle_000/labeled.json`` and
``unlabeled.json``, then ``config.yaml`` last: a work dir with a config is initialised. Every
check runs before the first write, so a bad input leaves nothing behind.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Sequence
from pathlib import Path

from al_det import atomic, coco, images, splits
from al_det.config import ExperimentConfig, load_config
from al_det.errors import AlDetError, ConfigError
from al_det.workdir import (
    Workdir,
    adopt_changes,
    find_changes,
    freeze,
    library_versions,
    load_frozen,
    refuse_changes,
)

log = logging.getLogger(__name__)

def run_init(
    config_path: Path, workdir: Path, overrides: Sequence[str] = (), force: bool = False
) -> ExperimentConfig:
    """Initialise ``workdir`` (idempotent when it already holds the same config); the caller
    holds :func:`al_det.workdir.locked_workdir`."""
    wd = Workdir(Path(workdir))
    cfg = load_config(config_path, overrides)
    if wd.config.exists():
        return _reinit(wd, cfg, force)
    if cfg.data.synthetic is not None:
        cfg = _generate_demo(wd, cfg)
    pool, test, labeled_ids = _load_inputs(cfg)
    cmap = coco.CategoryMap(pool["categories"])
    if labeled_ids is None:
        count = splits.resolve_count(cfg.initial, len(pool["images"]), "initial")
        labeled_ids, _ = splits.initial_split(pool, count, cfg.seed)
    labeled, unlabeled = splits.make_splits(pool, labeled_ids)
    splits.check_splits(pool, labeled, unlabeled)
    check_budget(cfg, len(pool["images"]), len(labeled["images"]))
    cycle = wd.cycle(0)
    atomic.write_json(wd.categories, cmap.to_json(), indent=1)
    atomic.write_json(wd.versions, library_versions(), indent=1)
    atomic.write_json(cycle.labeled, labeled)
    atomic.write_json(cycle.unlabeled, unlabeled)
    freeze(wd, cfg)
    log.info("initialised %s: %d labeled, %d unlabeled images, %d categories", wd.root,
             len(labeled["images"]), len(unlabeled["images"]), len(cmap.labels))
    return cfg


def _reinit(wd: Workdir, cfg: ExperimentConfig, force: bool) -> ExperimentConfig:
    """Same config again: nothing to do. A different one (or changed library versions):
    refused unless forced, then recorded and frozen."""
    frozen = load_frozen(wd)
    if cfg.data.synthetic is not None:  # the generated paths are frozen, the recipe compared
        cfg = dataclasses.replace(
            cfg, data=dataclasses.replace(frozen.data, synthetic=cfg.data.synthetic))
    changes = find_changes(wd, cfg)
    if not force:
        refuse_changes(wd, changes)
    adopt_changes(wd, cfg, changes)
    return cfg


def describe(wd: Workdir) -> str:
    """One line on what init made: the splits of cycle 0 and the categories."""
    from al_det.workdir import read_split

    c = wd.cycle(0)
    n_lab, n_unl = (len(read_split(p)["images"]) for p in (c.labeled, c.unlabeled))
    return (f"initialised {wd.root}: {n_lab} labeled / {n_unl} unlabeled images, "
            f"{wd.read_categories().num_classes} categories")


def check_budget(cfg: ExperimentConfig, pool_size: int, labeled: int) -> None:
    """Refuse, before any model work, a budget that the pool cannot meet at some cycle."""
    if cfg.cycles < 2:
        return
    budget = splits.resolve_count(cfg.acquire.budget, pool_size, "acquire.budget")
    need = labeled + (cfg.cycles - 1) * budget
    if need > pool_size:
        raise ConfigError(
            f"acquire.budget={cfg.acquire.budget!r}: {cfg.cycles - 1} acquisitions of {budget} "
            f"images after the {labeled} initial ones need {need} images, but the pool has "
            f"{pool_size}; lower acquire.budget, cycles or initial")


def _generate_demo(wd: Workdir, cfg: ExperimentConfig) -> ExperimentConfig:
    from al_det.synthetic import generate

    syn = cfg.data.synthetic
    paths = generate(wd.data.resolve(), n_pool=syn.n_pool, n_test=syn.n_test,
                     image_size=syn.image_size, seed=syn.seed, profile=syn.profile)
    data = dataclasses.replace(
        cfg.data, pool=str(paths["pool"]), test=str(paths["test"]),
        pool_images=str(paths["images"]), test_images=str(paths["images"]),
    )
    return dataclasses.replace(cfg, data=data)


def _load_inputs(cfg: ExperimentConfig) -> tuple[dict, dict | None, list[int] | None]:
    """Pool, test and (labelling mode) the ids of the pool images the user already labeled."""
    d = cfg.data
    labelling = cfg.mode == "labelling"
    pool = coco.load_coco(Path(d.pool), require_annotations=not labelling)
    for key in ("pool_images", "test_images"):
        folder = getattr(d, key)
        if (key == "pool_images" or d.test is not None) and not (folder and Path(folder).is_dir()):
            raise ConfigError(f"data.{key}={folder!r}: no such folder; point it at the folder "
                              "the COCO file's file_name values are relative to")
    cmap = coco.CategoryMap(pool["categories"])
    test = None
    if d.test is not None:
        test = coco.load_coco(Path(d.test))
        cmap.match(test["categories"], d.test)
    if d.check_images:
        images.check_images(pool, Path(d.pool_images), d.pool)
        if test is not None:
            images.check_images(test, Path(d.test_images), d.test)
    labeled_ids = None
    if labelling:
        pool, labeled_ids = _merge_user_labels(pool, cmap, Path(d.labeled))
    return pool, test, labeled_ids


def _merge_user_labels(pool: dict, cmap: coco.CategoryMap, path: Path) -> tuple[dict, list[int]]:
    """Attach the user's labeled file to the pool (matched by file name, categories by name)."""
    user = coco.load_coco(path)
    by_name = {img["file_name"]: img["id"] for img in pool["images"]}
    missing = [img["file_name"] for img in user["images"] if img["file_name"] not in by_name]
    if missing:
        raise AlDetError(
            f"{path}: {len(missing)} labeled image(s) are not in the pool, e.g. {missing[:3]}; "
            "add them to the pool file or remove them"
        )
    match = cmap.match(user["categories"], str(path))
    ids = {img["id"]: by_name[img["file_name"]] for img in user["images"]}
    next_ann = max((a["id"] for a in pool.get("annotations", [])), default=0) + 1
    anns = list(pool.get("annotations", []))
    for i, ann in enumerate(user.get("annotations", [])):
        anns.append({**ann, "id": next_ann + i, "image_id": ids[ann["image_id"]],
                     "category_id": match[ann["category_id"]]})
    return {**pool, "annotations": anns}, [ids[img["id"]] for img in user["images"]]
