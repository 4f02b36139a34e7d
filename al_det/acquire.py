"""Acquisition: select the next images to label from a detections dump.

Reads a dump (docs/detections-dump.md) and the labeled COCO file; writes the selected
images as a COCO file (``OUT.json``: images in selection order, the categories, no
annotations) and ``OUT.selection.json`` (strategy, resolved parameters, seed, and per selected
image its id, key and reason). Semantics: docs/acquisition.md. Imports no torch.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import os
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import orjson

from .atomic import write_json
from .dump import Dump, read_dump
from .errors import AcquireError, CocoError
from .strategies import STRATEGIES
from .strategies.base import Pool
from .strategies.summary import PassAhead, pass_ahead

# Every acquisition parameter any strategy takes; one a strategy does not use is ignored.
KNOWN_PARAMS = sorted({f.name for cls in STRATEGIES.values() for f in dataclasses.fields(cls)})
# Strategies that stream features.npy themselves (and check it for NaN on the way).
_STREAMS_FEATURES = {"enms", "divproto", "enms_divproto"}


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

    def to_json(self) -> dict:
        return {
            "strategy": self.strategy,
            "params": dict(self.params),
            "seed": self.seed,
            "images": [{"id": i, "key": k, "reason": r}
                       for i, k, r in zip(self.image_ids, self.keys, self.reasons, strict=True)],
        }


def _did_you_mean(word: str, options: Sequence[str]) -> str:
    close = difflib.get_close_matches(word, list(options), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def make_strategy(strategy: str, params: Mapping[str, Any]):
    """Instantiate a strategy from the dict, with only the parameters it uses."""
    if strategy not in STRATEGIES:
        raise AcquireError(f"unknown strategy {strategy!r}{_did_you_mean(strategy, STRATEGIES)};"
                           f" choose one of {', '.join(STRATEGIES)}")
    for name in params:
        if name not in KNOWN_PARAMS:
            raise AcquireError(f"unknown acquisition parameter {name!r}"
                               f"{_did_you_mean(name, KNOWN_PARAMS)}; known: "
                               f"{', '.join(KNOWN_PARAMS)}")
    cls = STRATEGIES[strategy]
    used = {f.name for f in dataclasses.fields(cls)}
    return cls(**{k: v for k, v in params.items() if k in used})


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


def select_images(dump: Dump, labeled: Mapping[str, Any], budget: int, strategy: str,
                  params: Mapping[str, Any], ahead: PassAhead | None = None) -> Selection:
    """Select ``budget`` images of ``dump`` not in ``labeled`` with ``strategy`` (``ahead``:
    the streaming pass of the dump, if :func:`streaming_ahead` started it)."""
    strat = make_strategy(strategy, params)
    _check_categories(dump, labeled)
    if isinstance(budget, bool) or not isinstance(budget, (int, np.integer)) or budget <= 0:
        raise AcquireError(f"budget must be a positive integer, got {budget!r}")
    lab_ids = {im["id"] for im in labeled["images"]}
    cand_rows = np.array([r for r, i in enumerate(dump.image_ids) if i not in lab_ids],
                         dtype=np.int64)
    if budget > len(cand_rows):
        raise AcquireError(f"budget {budget} exceeds the {len(cand_rows)} candidate images of "
                           f"{dump.path} (dump images not in the labeled set); lower the budget")
    if strategy not in _STREAMS_FEATURES:
        dump.check_features()  # the others never read features; the dump must still be sound
    picked = strat.select(Pool(dump, cand_rows, labeled, int(budget), ahead))
    ids = dump.image_ids
    resolved = dataclasses.asdict(strat)
    seed = resolved.get("seed", params.get("seed"))
    return Selection(strategy, resolved, seed, tuple(ids[cand_rows[i]] for i in picked.order),
                     tuple(picked.keys), tuple(picked.reasons))


def coco_selection(selection: Selection, dump_or_images: Dump | Sequence[dict],
                   categories: Sequence[dict]) -> dict:
    """The COCO dict of the selection: images in selection order, no annotations."""
    images = dump_or_images.images if isinstance(dump_or_images, Dump) else dump_or_images
    by_id = {im["id"]: im for im in images}
    return {"images": [by_id[i] for i in selection.image_ids],
            "categories": list(categories), "annotations": []}


def write_selection_coco(path: str | os.PathLike, selection: Selection,
                         dump_or_images: Dump | Sequence[dict],
                         categories: Sequence[dict]) -> None:
    """Write the selection's COCO file atomically."""
    write_json(path, coco_selection(selection, dump_or_images, categories))


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


@contextmanager
def streaming_ahead(dump: Path, strategy: str, params: Mapping[str, Any]
                    ) -> Iterator[PassAhead | None]:
    """For the strategies that stream features.npy, start that pass over the dump folder now,
    so that it overlaps the reading of the JSON files that comes before selection."""
    if strategy not in _STREAMS_FEATURES:
        yield None
        return
    t_enms = getattr(make_strategy(strategy, params), "t_enms", None)
    with pass_ahead(Path(dump), None if t_enms is None else float(t_enms)) as ahead:
        yield ahead


def run_acquire_standalone(dets: Path, labeled: Path, budget: int, strategy: str,
                           output: Path, params: Mapping[str, Any]) -> Selection:
    """`al-det acquire`: read, select, then write OUT.json and OUT.selection.json.

    Everything is checked and selected before the first write, so nothing is written on any
    error; OUT.json (the stage's final file) is written last.
    """
    output = Path(output)
    make_strategy(strategy, params)  # cheap checks before reading a large dump
    with streaming_ahead(Path(dets), strategy, params) as ahead:
        lab = load_labeled(Path(labeled))
        dump = read_dump(dets, check_features=False)  # features are checked while streamed
        sel = select_images(dump, lab, budget, strategy, params, ahead)
    coco = coco_selection(sel, dump, dump.categories)
    side = selection_path(output)
    write_json(side, sel.to_json(), indent=1)
    try:
        write_json(output, coco)
    except BaseException:
        side.unlink(missing_ok=True)
        raise
    return sel
