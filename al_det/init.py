"""``al-det init``: validate the config and data, freeze them, write cycle 0's splits.

Reads the experiment YAML, the pool and test COCO files (or generates the demo dataset into
``WORKDIR/data``), and in labelling mode the user's labeled COCO file. Writes
``WORKDIR/categories.json``, ``versions.json``, ``cycle_000/labeled.json`` and
``unlabeled.json``, then ``config.yaml`` last: a work dir with a config is initialised. Every
check runs before the first write, so a bad input leaves nothing behind.

Also home of :func:`open_workdir`, which later commands use to read the frozen config and
refuse a work dir whose config or library versions changed.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import shutil
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from importlib import metadata
from pathlib import Path

from al_det import atomic, coco, splits
from al_det.config import ExperimentConfig, diff_configs, dump_config, load_config
from al_det.errors import AlDetError, ConfigError, WorkdirError
from al_det.workdir import RunLock, Workdir

log = logging.getLogger(__name__)

TRACKED_PACKAGES = ("al-det", "torch", "torchvision", "numpy", "pycocotools")


def library_versions() -> dict[str, str]:
    """Installed versions, read from package metadata (no torch import)."""
    out = {}
    for name in TRACKED_PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "not installed"
    return out


@contextmanager
def locked_workdir(wd: Workdir) -> Iterator[None]:
    """Hold the work dir's lock and clear leftovers of killed writes; if what runs inside fails
    before ``config.yaml`` exists in a work dir this call created, remove that dir again, so a
    failed init leaves nothing behind."""
    fresh = not wd.root.exists()
    try:
        with RunLock(wd):
            atomic.clean_tmp(wd.root)
            yield
    except BaseException:
        if fresh and not wd.config.exists():
            shutil.rmtree(wd.root, ignore_errors=True)
        raise


def run_init(
    config_path: Path, workdir: Path, overrides: Sequence[str] = (), force: bool = False
) -> ExperimentConfig:
    """Initialise ``workdir`` (idempotent when it already holds the same config); the caller
    holds :func:`locked_workdir`."""
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
    cycle = wd.cycle(0)
    atomic.write_json(wd.categories, cmap.to_json(), indent=1)
    atomic.write_json(wd.versions, library_versions(), indent=1)
    atomic.write_json(cycle.labeled, labeled)
    atomic.write_json(cycle.unlabeled, unlabeled)
    atomic.write_text(wd.config, dump_config(cfg))
    log.info("initialised %s: %d labeled, %d unlabeled images, %d categories", wd.root,
             len(labeled["images"]), len(unlabeled["images"]), len(cmap.labels))
    return cfg


def _reinit(wd: Workdir, cfg: ExperimentConfig, force: bool) -> ExperimentConfig:
    """Same config again: nothing to do. A different one: refused unless forced."""
    frozen = load_frozen(wd)
    if cfg.data.synthetic is not None:  # the generated paths are frozen, the recipe compared
        cfg = dataclasses.replace(
            cfg, data=dataclasses.replace(frozen.data, synthetic=cfg.data.synthetic))
    changes = diff_configs(frozen, cfg)
    if not changes:
        return frozen
    if not force:
        raise ConfigError(
            f"{wd.config}: the config differs from the one this work dir was initialised "
            f"with ({'; '.join(changes)}); use a new work dir, or --force to adopt it"
        )
    record_forced(wd, "config", changes)
    atomic.write_text(wd.config, dump_config(cfg))
    return cfg


def _generate_demo(wd: Workdir, cfg: ExperimentConfig) -> ExperimentConfig:
    from al_det.synthetic import generate

    syn = cfg.data.synthetic
    paths = generate(wd.data.resolve(), n_pool=syn.n_pool, n_test=syn.n_test,
                     image_size=syn.image_size, seed=syn.seed)
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
        coco.check_images(pool, Path(d.pool_images), d.pool)
        if test is not None:
            coco.check_images(test, Path(d.test_images), d.test)
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


def load_frozen(wd: Workdir) -> ExperimentConfig:
    if not wd.config.exists():
        raise WorkdirError(f"{wd.root}: not an al-det work dir (no config.yaml): run `al-det init`")
    return load_config(wd.config)


def open_workdir(workdir: Path, force: bool = False) -> tuple[Workdir, ExperimentConfig]:
    """The work dir and its frozen config; refuses changed library versions unless forced."""
    wd = Workdir(Path(workdir))
    cfg = load_frozen(wd)
    frozen = json.loads(wd.versions.read_text()) if wd.versions.exists() else {}
    now = library_versions()
    changes = [f"{k}: {frozen.get(k)} -> {v}" for k, v in now.items() if frozen.get(k) != v]
    if changes and not force:
        raise WorkdirError(
            f"{wd.versions}: library versions changed since init ({'; '.join(changes)}); "
            "results would mix versions: use the same environment, or --force to go on"
        )
    if changes:
        record_forced(wd, "versions", changes)
        atomic.write_json(wd.versions, now, indent=1)
    return wd, cfg


def record_forced(wd: Workdir, what: str, changes: list[str]) -> None:
    """Append a forced change to history.jsonl (rewritten atomically)."""
    path = wd.root / "history.jsonl"
    old = path.read_text() if path.exists() else ""
    line = json.dumps({"time": time.strftime("%Y-%m-%dT%H:%M:%S"), "forced": what,
                       "changes": changes})
    atomic.write_text(path, old + line + "\n")
    log.warning("forced %s change: %s", what, "; ".join(changes))
