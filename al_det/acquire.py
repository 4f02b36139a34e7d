"""Acquisition: select the next images to label, in a work dir or on any dump.

Reads a dump (docs/detections-dump.md) and the labeled set; semantics: docs/acquisition.md.

* File mode (``al-det acquire --dets``): reads the dump folder and the labeled COCO file;
  writes ``OUT.json`` (the selected images in selection order, the categories, no
  annotations) and ``OUT.selection.json`` (strategy, resolved parameters, seed, and per
  selected image its id, key and reason).
* Work-dir mode (the cycle's stage, :func:`run_acquire`): reads ``cycle_K/dump/``,
  ``labeled.json``, ``unlabeled.json`` and, in simulation, the pool file (the only reader of
  the unlabeled images' ground truth: the oracle); writes ``cycle_K/selection.json`` and then
  either the next cycle's ``labeled.json`` and ``unlabeled.json`` (``unlabeled.json`` last: it
  marks the cycle as existing) or, in labelling mode, the hand-off files for the annotation
  tool (:mod:`al_det.handoff`) and ``cycle_K/to_label.json`` last. The selection is a pure
  function of the dump, the splits and the config, so a rerun after a crash redoes it exactly.

Everything is checked and selected before the first write, so nothing is written on any
error. Imports no torch.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import orjson

from . import coco, splits, testhooks
from .atomic import write_json
from .config import ExperimentConfig, apply_overrides, override, strategy_params
from .dump import Dump, prune_features, read_dump
from .errors import AcquireError, CocoError, ConfigError, SplitError, WorkdirError
from .handoff import write_handoff
from .strategies import STRATEGIES, Strategy, make_strategy
from .strategies.base import Pool
from .strategies.summary import PassAhead, pass_ahead
from .workdir import Workdir, load_frozen, locked_workdir, open_workdir, read_split

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Selection:
    """The outcome of one acquisition. ``keys``: the ranking key of each image (basic or ENMS
    entropy; coreset: distance to the nearest centre; random: None). ``reasons``: "main" for
    images taken by the strategy itself, "fill" for DivProto's fill-up."""

    strategy: str
    params: dict
    seed: int | None
    image_ids: tuple
    keys: tuple
    reasons: tuple
    note: str = ""
    # the selected image records and the dump's categories: the COCO file of the selection
    images: tuple = dataclasses.field(default=(), repr=False)
    categories: tuple = dataclasses.field(default=(), repr=False)

    def to_json(self) -> dict:
        return {
            "strategy": self.strategy,
            "params": dict(self.params),
            "seed": self.seed,
            "note": self.note,
            "images": [{"id": i, "key": k, "reason": r}
                       for i, k, r in zip(self.image_ids, self.keys, self.reasons, strict=True)],
        }

    def describe(self) -> str:
        """One line: how many, by which strategy, and (DivProto) main pass vs fill-up."""
        n_main = self.reasons.count("main")
        line = f"selected {len(self.image_ids)} images with {self.strategy}"
        if n_main == len(self.reasons):
            return line + (f" ({self.note})" if self.note else "")
        return (f"{line}: {n_main} by the DivProto main pass, {len(self.reasons) - n_main} by "
                f"the fill-up ({self.note})")


# ------------------------------------------------------------------------------ the library
def select_images(dump: Dump, labeled: Mapping[str, Any], budget: int,
                  strategy: str | Strategy, params: Mapping[str, Any] | None = None,
                  ahead: PassAhead | None = None) -> Selection:
    """Select ``budget`` images of ``dump`` not in ``labeled`` with ``strategy`` (a name, with
    ``params``, or a strategy object); ``ahead``: the streaming pass of the dump, if
    :func:`~al_det.strategies.summary.pass_ahead` started it for this strategy."""
    if isinstance(strategy, str):
        strategy = make_strategy(strategy, params or {})
    _check_categories(dump, labeled)
    if isinstance(budget, bool) or not isinstance(budget, (int, np.integer)) or budget <= 0:
        raise AcquireError(f"budget must be a positive integer, got {budget!r}")
    lab_ids = {im["id"] for im in labeled["images"]}
    cand_rows = np.array([r for r, i in enumerate(dump.image_ids) if i not in lab_ids],
                         dtype=np.int64)
    if budget > len(cand_rows):
        raise AcquireError(f"budget {budget} exceeds the {len(cand_rows)} candidate images of "
                           f"{dump.path} (dump images not in the labeled set); lower the budget")
    if not strategy.streams_features:
        dump.check_features()  # it never reads features; the dump must still be sound
    picked = strategy.select(Pool(dump, cand_rows, labeled, int(budget), ahead))
    ids = dump.image_ids
    resolved = dataclasses.asdict(strategy)
    name = next(k for k, v in STRATEGIES.items() if type(strategy) is v)
    rows = [int(cand_rows[i]) for i in picked.order]
    return Selection(name, resolved, resolved.get("seed"), tuple(ids[r] for r in rows),
                     tuple(picked.keys), tuple(picked.reasons), picked.note,
                     tuple(dump.images[r] for r in rows), tuple(dump.categories))


def _check_categories(dump: Dump, labeled: Mapping[str, Any]) -> None:
    def pairs(cats):
        return {(c.get("id"), c.get("name")) for c in cats}

    ours, theirs = pairs(dump.categories), pairs(labeled["categories"])
    if ours != theirs:
        only_d = sorted(ours - theirs, key=str)[:5]
        only_l = sorted(theirs - ours, key=str)[:5]
        raise AcquireError(f"{dump.path}: categories differ from the labeled set's: only in "
                           f"the dump {only_d}, only in the labeled file {only_l} (id, name); "
                           "run inference with the model trained on this labeled set")


def coco_selection(selection: Selection) -> dict:
    """The COCO dict of the selection: images in selection order, no annotations."""
    return {"images": list(selection.images), "categories": list(selection.categories),
            "annotations": []}


def select(dump: str | os.PathLike | Dump, labeled: str | os.PathLike | Mapping[str, Any],
           strategy: str, budget: int, **params: Any) -> Selection:
    """The Python API of acquisition: select ``budget`` images of ``dump`` (a dump folder or a
    :class:`~al_det.dump.Dump`) that are not in ``labeled`` (a COCO file or dict) with
    ``strategy`` and its parameters, e.g. ``select("dump", "labeled.json", "enms_divproto",
    100, t_intra=0.6)``. ``al-det acquire --dets`` is this plus the writing of the files."""
    strat = make_strategy(strategy, params)  # cheap checks before reading a large dump
    if isinstance(dump, Dump):
        lab = labeled if isinstance(labeled, Mapping) else load_labeled(Path(labeled))
        return select_images(dump, lab, budget, strat)
    with pass_ahead(Path(dump), strat) as ahead:
        lab = labeled if isinstance(labeled, Mapping) else load_labeled(Path(labeled))
        opened = read_dump(dump, check_features=False)  # features are checked while streamed
        return select_images(opened, lab, budget, strat, ahead=ahead)


# -------------------------------------------------------------------------------- file mode
def selection_path(output: Path) -> Path:
    """``OUT.json`` -> ``OUT.selection.json`` (beside it)."""
    stem = output.name[:-5] if output.name.endswith(".json") else output.name
    return output.with_name(stem + ".selection.json")


def load_labeled(path: Path) -> dict:
    """Read the labeled COCO file; CocoError if not a JSON object with images and categories."""
    try:
        data = orjson.loads(Path(path).read_bytes())
    except FileNotFoundError as exc:
        raise CocoError(f"{path}: labeled COCO file not found") from exc
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CocoError(f"{path}: not valid JSON ({exc}); give a COCO annotation file") from exc
    if not isinstance(data, dict):
        raise CocoError(f"{path}: must be a JSON object (a COCO annotation file)")
    for key in ("images", "categories"):
        recs = data.get(key)
        if not isinstance(recs, list) or not all(isinstance(r, dict) and "id" in r for r in recs):
            raise CocoError(f"{path}: '{key}' missing or not a list of records with an 'id'")
    anns = data.get("annotations", [])
    if not isinstance(anns, list) or not all(isinstance(a, dict) for a in anns):
        raise CocoError(f"{path}: 'annotations' must be a list of objects")
    return data


def file_params(overrides: Sequence[str]) -> dict:
    """``--set acquire.KEY=VALUE`` overrides of file mode as strategy parameters, parsed by
    the config's one override parser; keys outside ``acquire.`` are errors."""
    raw: dict = {}
    apply_overrides(raw, overrides)
    other = [k for k in raw if k != "acquire"]
    if other or not isinstance(raw.get("acquire", {}), dict):
        raise ConfigError(f"--set {other[0] if other else 'acquire'}: file-mode acquire takes "
                          "acquire.<param>=<value> only")
    return dict(raw.get("acquire", {}))


def check_output(output: Path) -> None:
    """The output's folder must be one (or creatable): a file in its way is named now, before
    any work."""
    for parent in Path(output).absolute().parents:
        if parent.exists():
            if not parent.is_dir():
                raise AcquireError(f"--output {output}: {parent} is a file, not a folder; give "
                                   "an output path in a folder")
            return


def run_acquire_standalone(dets: Path, labeled: Path, budget: int, strategy: str,
                           output: Path, params: Mapping[str, Any]) -> Selection:
    """`al-det acquire --dets`: read, select, then write OUT.json and OUT.selection.json
    (OUT.json, the final file, last)."""
    output = Path(output)
    make_strategy(strategy, params)  # cheap checks first
    check_output(output)
    sel = select(dets, labeled, strategy, budget, **params)
    coco_out = coco_selection(sel)
    side = selection_path(output)
    write_json(side, sel.to_json(), indent=1)
    try:
        write_json(output, coco_out)
    except BaseException:
        side.unlink(missing_ok=True)
        raise
    return sel


# --------------------------------------------------------------------------- work-dir mode
def run_acquire(wd: Workdir, k: int, cfg: ExperimentConfig) -> Selection | None:
    """The acquire stage of cycle ``k``: select its images and write the next split (or
    to_label.json); None if it was done already."""
    if wd.stage_done(k, "acquire", cfg.mode):
        log.info("cycle %d: acquisition already done", k)
        return None
    cycle = wd.cycle(k)
    # the seed differs per cycle so random does not replay the same draws every cycle
    strategy = make_strategy(cfg.acquire.strategy, strategy_params(cfg.acquire, cfg.seed + k))
    with pass_ahead(cycle.dump, strategy) as ahead:
        labeled, unlabeled = read_split(cycle.labeled), read_split(cycle.unlabeled)
        # infer validated the whole dump when it merged it; the strategies that use the
        # features check them again in their single pass, so they are not read twice here
        dump = read_dump(cycle.dump, check_features=False)
        _check_dump_matches(dump, unlabeled, cycle.dump)
        pool = None if cfg.mode == "labelling" else coco.load_coco(Path(cfg.data.pool))
        where = f"{cycle.labeled} and {cycle.unlabeled}"
        if pool is not None:
            splits.check_splits(pool, labeled, unlabeled, where)
        budget = splits.resolve_count(cfg.acquire.budget, len(labeled["images"]) +
                                      len(unlabeled["images"]), "acquire.budget")
        selection = select_images(dump, labeled, budget, strategy, ahead=ahead)
    record = {**selection.to_json(), "cycle": k}
    if pool is None:
        write_json(cycle.selection, record, indent=1)
        testhooks.pause_at(f"acquire:{k}")  # test-only (AL_DET_TEST_PAUSE_AT)
        by_id = {im["id"]: im for im in unlabeled["images"]}
        write_handoff(cycle, [by_id[i] for i in selection.image_ids], dump,
                      unlabeled["categories"], cfg.data.pool_images,
                      cfg.label.preannotation_thresh, url_prefix=cfg.label.image_url_prefix,
                      model_version=f"{cfg.name} cycle {k} {cfg.model.name}")
        # to_label.json last: it marks the acquisition as done
        write_json(cycle.to_label, coco_selection(selection))
        _prune_older(wd, k, cfg)
        log.info("cycle %d: %d images to label in %s", k, budget, cycle.to_label)
        return selection
    nxt_labeled, nxt_unlabeled = splits.next_splits(pool, labeled, unlabeled,
                                                   list(selection.image_ids), where)
    nxt = wd.cycle(k + 1)
    write_json(cycle.selection, record, indent=1)
    testhooks.pause_at(f"acquire:{k}")  # test-only (AL_DET_TEST_PAUSE_AT)
    write_json(nxt.labeled, nxt_labeled)
    write_json(nxt.unlabeled, nxt_unlabeled)
    _prune_older(wd, k, cfg)
    log.info("cycle %d: %s selected %d images -> cycle %d has %d labeled", k,
             cfg.acquire.strategy, budget, k + 1, len(nxt_labeled["images"]))
    return selection


def _prune_older(wd: Workdir, k: int, cfg: ExperimentConfig) -> None:
    """``infer.keep_features: last``: the cycles before ``k`` are acquired, so their feature
    arrays (the bulk of a dump: ~9 GB a COCO cycle) go; this cycle's stay for reports."""
    if cfg.infer.keep_features != "last":
        return
    freed = sum(prune_features(wd.cycle(j).dump) for j in range(k) if wd.cycle(j).dump.is_dir())
    if freed:
        log.info("deleted the feature arrays of cycles before %d (%.1f MB; infer.keep_features:"
                 " last)", k, freed / 2**20)


def _check_dump_matches(dump: Dump, unlabeled: dict, path: Path) -> None:
    want = {img["id"] for img in unlabeled["images"]}
    have = set(dump.image_ids)
    if not want <= have:
        missing = sorted(want - have)[:5]
        raise SplitError(f"{path}: the dump lacks unlabeled images {missing}; rerun `al-det infer`")


def acquire_workdir(workdir: Path, cycle: int | None, overrides: Sequence[str],
                    force: bool) -> Selection | None:
    """`al-det acquire -w`: the cycle's acquisition with the frozen config. Command-line
    changes to it (``--set``, ``--strategy``, ...) are changes of the experiment: refused
    unless ``force``, then recorded in history.jsonl and frozen, like any other."""
    wd = Workdir(Path(workdir))
    cfg = override(load_frozen(wd), overrides)
    with locked_workdir(wd):
        wd, cfg = open_workdir(workdir, force, cfg=cfg)
        k = _acquire_cycle(wd, cycle, cfg)
        return run_acquire(wd, k, cfg)


def _acquire_cycle(wd: Workdir, cycle: int | None, cfg: ExperimentConfig) -> int:
    """The cycle to acquire for: the given one, or the latest; when that one has no dump yet,
    say what was done and what to run next rather than only that the dump is missing."""
    k = wd.resolve_cycle(cycle).index
    if cycle is not None or wd.stage_done(k, "infer") or wd.stage_done(k, "acquire", cfg.mode):
        return k
    done = f"cycle {k - 1}'s acquisition is done; " if k > 0 else ""
    steps = "inference" if wd.stage_done(k, "train") else "training and inference"
    run = "" if wd.stage_done(k, "train") else f"`al-det train -w {wd.root}`, then "
    raise WorkdirError(f"{wd.cycle(k).dump}: not found: {done}the latest cycle, {k}, needs "
                       f"{steps} first: run {run}`al-det infer -w {wd.root}`")
