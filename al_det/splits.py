"""Labeled / unlabeled splits of the pool: the initial split and each cycle's next split.

Pure functions over COCO dicts (see :mod:`al_det.coco`): nothing here reads or writes files.
Every function that builds splits checks the cycle invariants before returning and raises
:class:`~al_det.errors.SplitError` naming the offending images:

* labeled and unlabeled are disjoint and their union is the pool;
* the unlabeled split carries no annotations (the ground truth of unlabeled images is read
  only by the simulated oracle, :func:`next_splits`);
* each cycle the labeled split grows by exactly the selection, previous order kept.
"""

from __future__ import annotations

import difflib
import math
import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote, urlsplit

import numpy as np

from al_det.coco import subset
from al_det.errors import SplitError

MAX_LISTED = 5
# Slack for fractions: 0.29 * 100 is 28.999999999999996 in floating point, and must give 29.
_FRACTION_EPS = 1e-9


def _ids(ids: Iterable[Any]) -> str:
    ids = list(ids)
    more = f" and {len(ids) - MAX_LISTED} more" if len(ids) > MAX_LISTED else ""
    return f"{ids[:MAX_LISTED]}{more}"


def _duplicates(ids: Iterable[Any]) -> list:
    seen: set = set()
    dup = []
    for i in ids:
        if i in seen:
            dup.append(i)
        seen.add(i)
    return dup


def resolve_count(value: float, pool_size: int, key: str) -> int:
    """Turn a config count into a number of images.

    An integer (or integral float such as ``100.0``; ``1.0`` means one image) is a count. A
    value strictly between 0 and 1 is a fraction of ``pool_size``, rounded down but at least 1
    (so ``0.05`` of 10 images is 1 image, never 0). Raises SplitError naming ``key`` if the
    result is <= 0 or larger than the pool.
    """
    if type(value) not in (int, float) or not math.isfinite(value) or value <= 0:
        raise SplitError(f"{key}: {value!r} is not a positive count or fraction; give an "
                         "image count (e.g. 500) or a fraction of the pool below 1 (e.g. 0.05)")
    if value < 1:
        count = max(1, math.floor(value * pool_size + _FRACTION_EPS))
    elif value == int(value):
        count = int(value)
    else:
        raise SplitError(f"{key}: {value!r} is neither a whole count nor a fraction below 1; "
                         "give e.g. 500 or 0.05")
    if count > pool_size:
        raise SplitError(f"{key}: {value!r} asks for {count} images but the pool has only "
                         f"{pool_size}; lower {key}")
    return count


def initial_split(pool: dict, count: int, seed: int) -> tuple[list[int], list[int]]:
    """Choose ``count`` pool images at random: (labeled ids, unlabeled ids), each in pool order.

    The draw is ``numpy.random.default_rng(seed).choice`` over the image ids *sorted by id*,
    so the same seed picks the same images whatever the order of the pool file.
    """
    order = [im["id"] for im in pool["images"]]
    n = len(order)
    if not 0 < count <= n:
        raise SplitError(f"initial split: cannot label {count} of {n} pool images; give a "
                         f"count between 1 and {n}")
    by_id = sorted(order)
    picks = np.random.default_rng(seed).choice(n, size=count, replace=False)
    chosen = {by_id[i] for i in picks.tolist()}
    labeled = [i for i in order if i in chosen]
    unlabeled = [i for i in order if i not in chosen]
    return labeled, unlabeled


def make_splits(pool: dict, labeled_ids: Iterable[int], with_gt: bool = True) -> tuple[dict, dict]:
    """Build (labeled COCO, unlabeled COCO) from the pool.

    The labeled split gets the pool's ground truth for its images (``with_gt``; False for a
    real-labelling project whose pool has none yet); the unlabeled split gets the remaining
    pool images, in pool order, without annotations.
    """
    labeled_ids = list(labeled_ids)
    pool_ids = [im["id"] for im in pool["images"]]
    _check_selection(labeled_ids, set(pool_ids), set(), set(pool_ids), "labeled ids")
    chosen = set(labeled_ids)
    labeled = subset(pool, labeled_ids, with_annotations=with_gt)
    unlabeled = subset(pool, [i for i in pool_ids if i not in chosen], with_annotations=False)
    check_splits(pool, labeled, unlabeled)
    return labeled, unlabeled


def _check_selection(ids: list, pool_ids: set, labeled_ids: set, unlabeled_ids: set,
                     what: str) -> None:
    """Reject duplicates, images outside the pool, already labeled or not unlabeled."""
    if not ids:
        raise SplitError(f"{what}: no images selected; select at least one image")
    dup = _duplicates(ids)
    if dup:
        raise SplitError(f"{what}: image ids {_ids(dup)} selected more than once; "
                         "select each image once")
    for bad, why in (([i for i in ids if i not in pool_ids], "are not in the pool"),
                     ([i for i in ids if i in labeled_ids], "are already labeled"),
                     ([i for i in ids if i not in unlabeled_ids], "are not in the unlabeled "
                      "split")):
        if bad:
            raise SplitError(f"{what}: image ids {_ids(bad)} {why}; select only unlabeled "
                             "pool images")


def next_splits(pool: dict, labeled: dict, unlabeled: dict,
                selected_ids: Iterable[int], where: str = "splits") -> tuple[dict, dict]:
    """Simulated oracle: label the selected images by copying their ground truth from the pool.

    Returns (next labeled, next unlabeled). The labeled split keeps its previous images and
    annotations in order, then the selected images in selection order with the pool's
    annotations; it grows by exactly ``len(selected_ids)``.
    """
    selected = list(selected_ids)
    check_splits(pool, labeled, unlabeled, where)
    _check_selection(selected, {im["id"] for im in pool["images"]},
                     {im["id"] for im in labeled["images"]},
                     {im["id"] for im in unlabeled["images"]}, "selection")
    new = subset(pool, selected, with_annotations=True)
    chosen = set(selected)
    nxt_labeled = _extend(labeled, new["images"], new["annotations"], pool["categories"])
    nxt_unlabeled = subset(unlabeled, [im["id"] for im in unlabeled["images"]
                                       if im["id"] not in chosen], with_annotations=False)
    _check_growth(labeled, nxt_labeled, len(selected))
    check_splits(pool, nxt_labeled, nxt_unlabeled, "next splits")
    return nxt_labeled, nxt_unlabeled


def _extend(labeled: dict, images: list, annotations: list, categories: list) -> dict:
    out = {k: labeled[k] for k in ("info", "licenses") if k in labeled}
    out["images"] = labeled["images"] + images
    out["annotations"] = labeled["annotations"] + annotations
    out["categories"] = categories
    return out


def _check_growth(before: dict, after: dict, n: int) -> None:
    grown = len(after["images"]) - len(before["images"])
    if grown != n:  # an internal invariant, but cheap: never write a split that breaks it
        raise SplitError(f"labeled split grew by {grown} images instead of {n}; this is a bug, "
                         "please report it")


def check_splits(pool: dict, labeled: dict, unlabeled: dict, where: str = "splits") -> None:
    """Check: no duplicates, labeled and unlabeled disjoint, union = pool, unlabeled unannotated.

    Labeled annotations must also belong to labeled images. Errors start with ``where`` (the
    split files, when the splits were read from files) and name up to 5 image ids.
    """
    lab = [im["id"] for im in labeled["images"]]
    unl = [im["id"] for im in unlabeled["images"]]
    for name, ids in (("labeled", lab), ("unlabeled", unl)):
        dup = _duplicates(ids)
        if dup:
            raise SplitError(f"{where}: {name} image ids {_ids(dup)} appear more than once; "
                             "the split files were edited or corrupted, rebuild them")
    lab_set, unl_set = set(lab), set(unl)
    pool_ids = {im["id"] for im in pool["images"]}
    problems = (
        (sorted(lab_set & unl_set), "are both labeled and unlabeled"),
        (sorted((lab_set | unl_set) - pool_ids), "are in the splits but not in the pool"),
        (sorted(pool_ids - lab_set - unl_set), "are in the pool but in neither split"),
        (sorted({a["image_id"] for a in unlabeled.get("annotations", [])}),
         "have annotations in the unlabeled split"),
        (sorted({a["image_id"] for a in labeled.get("annotations", [])} - lab_set),
         "have labeled annotations but are not labeled images"),
    )
    for bad, why in problems:
        if bad:
            raise SplitError(f"{where}: image ids {_ids(bad)} {why}; the split files do not "
                             "match the pool, rebuild them from the last good cycle")


@dataclass(frozen=True)
class LabelImport:
    """The next splits made from an annotation export, and what went into them."""

    labeled: dict
    unlabeled: dict
    images: int  # selected images now labeled
    boxes: int  # annotations imported
    negatives: int  # imported images without any box (absent ones included)
    absent: int  # selected images the export left out (``missing_as_empty``)


def import_labels(labeled: dict, unlabeled: dict, to_label_ids: Iterable[int],
                  annotations_coco: dict, cmap_match: dict[int, int], source: str,
                  missing_as_empty: bool = False) -> tuple[dict, dict]:
    """Real labelling: ingest a user's annotation export; (next labeled, next unlabeled).

    See :func:`import_export`, which also says how many images, boxes and negatives.
    """
    result = import_export(labeled, unlabeled, to_label_ids, annotations_coco, cmap_match,
                           source, missing_as_empty)
    return result.labeled, result.unlabeled


def import_export(labeled: dict, unlabeled: dict, to_label_ids: Iterable[int],
                  annotations_coco: dict, cmap_match: dict[int, int], source: str,
                  missing_as_empty: bool = False) -> LabelImport:
    """Real labelling: ingest a user's annotation export for the images sent to label.

    ``annotations_coco`` is a validated COCO dict exported by CVAT / Label Studio (an image's
    ``width``/``height`` may be None when it has no box: Label Studio writes that);
    ``cmap_match`` maps its category ids to ours (:meth:`al_det.coco.CategoryMap.match`).
    Images are matched by file name, never id (:func:`match_images`). Every selected image
    must be in the export (an image without boxes is a valid negative) unless
    ``missing_as_empty``: then the images it leaves out are labeled negatives. The next labeled
    split is the previous one plus the selected images (our records, selection order) with
    their annotations remapped to our image / category ids and given new unique ids.
    """
    to_label = list(to_label_ids)
    unl_by_id = {im["id"]: im for im in unlabeled["images"]}
    lab_ids = {im["id"] for im in labeled["images"]}
    _check_selection(to_label, lab_ids | set(unl_by_id), lab_ids, set(unl_by_id), "to_label")
    ours = [unl_by_id[i] for i in to_label]
    theirs_to_ours = match_images(ours, annotations_coco["images"], source, missing_as_empty)
    new_anns = _remap_annotations(annotations_coco["annotations"], theirs_to_ours, cmap_match,
                                  _next_ann_id(labeled), source)
    chosen = set(to_label)
    nxt_labeled = _extend(labeled, ours, new_anns, labeled["categories"])
    nxt_unlabeled = subset(unlabeled, [im["id"] for im in unlabeled["images"]
                                       if im["id"] not in chosen], with_annotations=False)
    _check_growth(labeled, nxt_labeled, len(to_label))
    _check_pair(nxt_labeled, nxt_unlabeled, labeled, unlabeled)
    with_boxes = {a["image_id"] for a in new_anns}
    return LabelImport(nxt_labeled, nxt_unlabeled, len(to_label), len(new_anns),
                       len(chosen - with_boxes), len(chosen - set(theirs_to_ours.values())))


# Label Studio stores an uploaded file as ``<8 hex digits>-<original name>``.
_UPLOAD_PREFIX = re.compile(r"^[0-9a-f]{8}-(?=.)")


def match_images(ours: list[dict], their_images: list, source: str,
                 missing_as_empty: bool = False) -> dict[int, int]:
    """Match an export's images to the selected ones by name: {their image id: our image id}.

    Labelling tools renumber image ids and rewrite paths, so each exported ``file_name`` is
    tried, in order, as: the exact file name; a path ending in one of ours
    (``images/sub/a.jpg``, ``/data/local-files/?d=sub/a.jpg``, ``C:\\x\\sub\\a.jpg``); the
    same base name; the base name without Label Studio's upload prefix
    (``/data/upload/1/1a2b3c4d-a.jpg``). The first rule that finds exactly one of ours wins;
    one that finds several is an error naming them. An exported image that matches none of
    ours, or the same one as another, is an error; so is a selected image the export leaves
    out, unless ``missing_as_empty``. Sizes must agree (either orientation, for EXIF), except
    where the export has none.
    """
    index = _NameIndex(ours)
    mapping: dict[int, int] = {}
    taken: dict[int, str] = {}
    for im in their_images:
        mine = index.find(im["file_name"], source)
        if mine["id"] in taken:
            raise SplitError(f"{source}: images {taken[mine['id']]!r} and {im['file_name']!r} "
                             f"both match selected image {mine['file_name']!r} (image id "
                             f"{mine['id']}); remove the duplicate task / image and export again")
        _check_size(im, mine, source)
        taken[mine["id"]] = im["file_name"]
        mapping[im["id"]] = mine["id"]
    missing = [f"{im['file_name']} (image id {im['id']})" for im in ours if im["id"] not in taken]
    if missing and not missing_as_empty:
        raise SplitError(f"{source}: no annotations for {len(missing)} of {len(ours)} selected "
                         f"images: {_ids(missing)}; label and export them, or pass "
                         "--missing-as-empty if they were looked at and hold no object "
                         "(Label Studio leaves images without boxes out of its COCO export)")
    return mapping


class _NameIndex:
    """Our selected images by file name, by path suffix, by base name."""

    def __init__(self, ours: list[dict]):
        self.by_name = {im["file_name"]: im for im in ours}
        self.by_base: dict[str, list[dict]] = {}
        for im in ours:
            self.by_base.setdefault(_base(im["file_name"]), []).append(im)

    def find(self, name: str, source: str) -> dict:
        if name in self.by_name:
            return self.by_name[name]
        path = _their_path(name)
        base = _base(path)
        rules = (
            ("path", lambda im: path == _slashed(im["file_name"])
             or path.endswith("/" + _slashed(im["file_name"]).lstrip("/"))),
            ("base name", lambda im: True),
        )
        for rule, ok in rules:
            found = [im for im in self.by_base.get(base, []) if ok(im)]
            if len(found) == 1:
                return found[0]
            if len(found) > 1:
                raise self._ambiguous(name, rule, found, source)
        stripped = _UPLOAD_PREFIX.sub("", base)
        found = self.by_base.get(stripped, []) if stripped != base else []
        if len(found) == 1:
            return found[0]
        if found:
            raise self._ambiguous(name, "base name without the upload prefix", found, source)
        raise self._unmatched(name, source)

    @staticmethod
    def _ambiguous(name: str, rule: str, found: list[dict], source: str) -> SplitError:
        cands = [f"{im['file_name']} (image id {im['id']})" for im in found]
        return SplitError(f"{source}: image {name!r} matches {len(found)} selected images by "
                          f"{rule}: {_ids(cands)}; export with the full relative paths of "
                          "to_label.json (or rename the images so their base names differ)")

    def _unmatched(self, name: str, source: str) -> SplitError:
        close = difflib.get_close_matches(_base(_their_path(name)), list(self.by_base), n=3)
        hint = f"; the closest selected names are {close}" if close else ""
        return SplitError(f"{source}: image {name!r} is not one of the {len(self.by_name)} "
                          f"selected images of to_label.json{hint}; export only the images of "
                          "to_label.json (one project or task per cycle)")


def _check_size(im: dict, mine: dict, source: str) -> None:
    size = (im.get("width"), im.get("height"))
    if size == (None, None):  # Label Studio's COCO export of an image without boxes
        return
    want = (mine["width"], mine["height"])
    if size != want and size != want[::-1]:
        raise SplitError(f"{source}: image {im['file_name']!r} is {size[0]}x{size[1]} but "
                         f"pool image id {mine['id']} ({mine['file_name']}) is "
                         f"{want[0]}x{want[1]}; label the original images, not resized ones")


def _slashed(name: str) -> str:
    return name.replace("\\", "/")


def _their_path(name: str) -> str:
    """An exported image name as a plain '/' path: URL, ``?d=`` and backslashes undone."""
    if "?d=" in name:  # Label Studio local files: /data/local-files/?d=sub/a.jpg
        name = unquote(name.split("?d=", 1)[1])
    elif "://" in name:  # http(s)://host/a%20b.jpg, s3://bucket/a.jpg
        name = unquote(urlsplit(name).path)
    return _slashed(name)


def _base(name: str) -> str:
    return _slashed(name).rsplit("/", 1)[-1]


def _next_ann_id(labeled: dict) -> int:
    return max((a["id"] for a in labeled["annotations"]), default=0) + 1


def _remap_annotations(anns: list, images: dict[int, int], cats: dict[int, int],
                       first_id: int, source: str) -> list[dict]:
    out = []
    for ann in anns:
        if ann["image_id"] not in images:  # cannot happen after load_coco + _match_images
            raise SplitError(f"{source}: annotation id {ann['id']} is on an image that was "
                             "not matched; export only the images of to_label.json")
        if ann["category_id"] not in cats:
            raise SplitError(f"{source}: annotation id {ann['id']} has category id "
                             f"{ann['category_id']} that is not mapped to the pool's "
                             "categories; match the categories by name first")
        new = dict(ann, id=first_id + len(out), image_id=images[ann["image_id"]],
                   category_id=cats[ann["category_id"]])
        out.append(new)
    return out


def _check_pair(labeled: dict, unlabeled: dict, prev_labeled: dict, prev_unlabeled: dict) -> None:
    """Invariants without a pool file: same images overall, disjoint, unlabeled unannotated."""
    union = {"images": prev_labeled["images"] + prev_unlabeled["images"]}
    check_splits(union, labeled, unlabeled)
