"""Exports of labelled images written the way the real tools write them, from a ground truth.

* CVAT "COCO 1.0" (datumaro's COCO instances converter): ``licenses`` and an ``info`` of
  empty strings; categories in the task's label order, ids from 1, with ``supercategory: ""``;
  every image of the task (also those without boxes), ids from 1, with ``license``,
  ``flickr_url``, ``coco_url``, ``date_captured``; annotations ids from 1 with
  ``segmentation: []``, a float ``area``, the bbox rounded to 2 digits, ``iscrowd`` and
  ``attributes: {"occluded": false, "rotation": 0.0}``.
* Label Studio "COCO" (label-studio-converter ``Converter.convert_to_coco``): ``info`` with
  ``contributor: "Label Studio"``; every label of the project as a category, sorted by name,
  ids from 0, no supercategory; images ids from 0 named by the task's (downloaded) image
  path; annotations ids from 0 with ``segmentation: []``, ``ignore: 0``, ``iscrowd: 0`` and a
  bbox computed from percent values (``x * original_width / 100``, float noise included);
  images without a box left out, or written with ``width``/``height`` null.
* Label Studio "JSON": a list of tasks, ``data.image``, ``annotations[].result[]`` of
  ``rectanglelabels`` with ``value`` in percent of ``original_width``/``original_height``,
  plus the fields Label Studio adds (ids, dates, ``was_cancelled``, ``predictions``, ...).
"""

from __future__ import annotations

from collections.abc import Callable

Name = Callable[[dict], str]


def truth_of(pool: dict, image_ids: list[int]) -> dict[int, list]:
    """{image id: sorted [(category id, bbox)]} of the pool's ground truth."""
    out: dict[int, list] = {i: [] for i in image_ids}
    for a in pool["annotations"]:
        if a["image_id"] in out:
            out[a["image_id"]].append((a["category_id"], a["bbox"]))
    return {i: sorted(v) for i, v in out.items()}


def _by_id(pool: dict) -> dict[int, dict]:
    return {im["id"]: im for im in pool["images"]}


def _anns(pool: dict, iid: int) -> list[dict]:
    return [a for a in pool["annotations"] if a["image_id"] == iid]


def cvat_coco(pool: dict, image_ids: list[int], name: Name = lambda im: im["file_name"],
              label_order: list[str] | None = None) -> dict:
    names = label_order or [c["name"] for c in pool["categories"]]
    cat_of = {c["id"]: 1 + names.index(c["name"]) for c in pool["categories"]}
    images, anns = [], []
    for n, iid in enumerate(image_ids):
        im = _by_id(pool)[iid]
        images.append({"id": n + 1, "width": im["width"], "height": im["height"],
                       "file_name": name(im), "license": 0, "flickr_url": "", "coco_url": "",
                       "date_captured": 0})
        for a in _anns(pool, iid):
            bbox = [round(float(v), 2) for v in a["bbox"]]
            anns.append({"id": len(anns) + 1, "image_id": n + 1, "category_id": cat_of[
                a["category_id"]], "segmentation": [], "area": float(bbox[2] * bbox[3]),
                "bbox": bbox, "iscrowd": 0, "attributes": {"occluded": False, "rotation": 0.0}})
    return {
        "licenses": [{"name": "", "id": 0, "url": ""}],
        "info": {"contributor": "", "date_created": "", "description": "", "url": "",
                 "version": "", "year": ""},
        "categories": [{"id": i + 1, "name": nm, "supercategory": ""}
                       for i, nm in enumerate(names)],
        "images": images, "annotations": anns,
    }


def percent(a: dict, im: dict) -> dict:
    """A ground-truth box as Label Studio stores it: percent of the original size."""
    x, y, w, h = a["bbox"]
    W, H = im["width"], im["height"]  # noqa: N806
    return {"x": 100 * x / W, "y": 100 * y / H, "width": 100 * w / W, "height": 100 * h / H}


def labelstudio_coco(pool: dict, image_ids: list[int], name: Name,
                     empty: str = "left out", extra_labels: tuple[str, ...] = ()) -> dict:
    """``empty``: what happens to an image without boxes: "left out", "null size", "kept"."""
    names = sorted([c["name"] for c in pool["categories"]] + list(extra_labels))
    cat_of = {c["id"]: names.index(c["name"]) for c in pool["categories"]}
    images, anns = [], []
    for iid in image_ids:
        im, boxes = _by_id(pool)[iid], _anns(pool, iid)
        if not boxes and empty == "left out":
            continue
        size = (None, None) if not boxes and empty == "null size" else (im["width"],
                                                                       im["height"])
        image_id = len(images)
        images.append({"width": size[0], "height": size[1], "id": image_id,
                       "file_name": name(im)})
        for a in boxes:
            p, W, H = percent(a, im), im["width"], im["height"]  # noqa: N806
            x, y = p["x"] * W / 100, p["y"] * H / 100
            w, h = p["width"] * W / 100, p["height"] * H / 100
            anns.append({"id": len(anns), "image_id": image_id,
                         "category_id": cat_of[a["category_id"]], "segmentation": [],
                         "bbox": [x, y, w, h], "ignore": 0, "iscrowd": 0, "area": w * h})
    return {"images": images, "categories": [{"id": i, "name": n} for i, n in enumerate(names)],
            "annotations": anns,
            "info": {"year": 2024, "version": "1.0", "description": "",
                     "contributor": "Label Studio", "url": "",
                     "date_created": "2024-05-01 10:00:00.000000"}}


def labelstudio_json(pool: dict, image_ids: list[int], name: Name,
                     unlabeled: tuple[int, ...] = (), skipped: tuple[int, ...] = ()) -> list:
    """Label Studio's JSON export; ``unlabeled`` tasks have no annotation, ``skipped`` ones
    only a cancelled one. Every labelled task also has an older, superseded annotation."""
    cat_name = {c["id"]: c["name"] for c in pool["categories"]}
    tasks = []
    for n, iid in enumerate(image_ids):
        im = _by_id(pool)[iid]
        result = [{"original_width": im["width"], "original_height": im["height"],
                   "image_rotation": 0, "id": f"r{n}_{k}", "from_name": "label",
                   "to_name": "image", "type": "rectanglelabels", "origin": "manual",
                   "value": {**percent(a, im), "rotation": 0,
                             "rectanglelabels": [cat_name[a["category_id"]]]}}
                  for k, a in enumerate(_anns(pool, iid))]
        stale = {**_annotation(2 * n + 1, n + 1, "2024-05-01T09:00:00.000000Z"),
                 "result": [{**r, "value": {**r["value"], "x": 0.5}} for r in result[:1]]}
        latest = {**_annotation(2 * n + 2, n + 1, "2024-05-01T10:00:00.000000Z"),
                  "result": result}
        anns = [stale, latest]
        if iid in unlabeled:
            anns = []
        elif iid in skipped:
            anns = [{**latest, "result": [], "was_cancelled": True}]
        tasks.append({"id": n + 1, "annotations": anns, "file_upload": name(im).rsplit("/")[-1],
                      "drafts": [], "predictions": [], "data": {"image": name(im)}, "meta": {},
                      "created_at": "2024-05-01T08:00:00.000000Z",
                      "updated_at": "2024-05-01T10:00:00.000000Z", "inner_id": n + 1,
                      "total_annotations": len(anns), "cancelled_annotations": 0,
                      "total_predictions": 0, "comment_count": 0,
                      "unresolved_comment_count": 0, "last_comment_updated_at": None,
                      "project": 1, "updated_by": 1, "comment_authors": []})
    return tasks


def _annotation(aid: int, task: int, when: str) -> dict:
    return {"id": aid, "completed_by": 1, "was_cancelled": False, "ground_truth": False,
            "created_at": when, "updated_at": when, "draft_created_at": None,
            "lead_time": 12.5, "prediction": {}, "result_count": 0, "unique_id": f"u{aid}",
            "import_id": None, "last_action": None, "task": task, "project": 1,
            "updated_by": 1, "parent_prediction": None, "parent_annotation": None,
            "last_created_by": None}


# The names Label Studio (and Windows, and URLs) give an uploaded image file
def ls_upload(im: dict) -> str:
    return "images/1a2b3c4d-" + im["file_name"].rsplit("/", 1)[-1]


def ls_upload_nested(im: dict) -> str:
    return f"images/1/{im['id']:08x}-" + im["file_name"].rsplit("/", 1)[-1]


def ls_data_upload(im: dict) -> str:
    return "/data/upload/1/9f8e7d6c-" + im["file_name"].rsplit("/", 1)[-1]


def ls_windows(im: dict) -> str:
    return ("C:\\Users\\me\\AppData\\Local\\label-studio\\media\\upload\\1\\0badcafe-"
            + im["file_name"].rsplit("/", 1)[-1])


def ls_local_files(im: dict) -> str:
    return "/data/local-files/?d=" + im["file_name"]


def url(im: dict) -> str:
    return "http://localhost:8081/upload/" + im["file_name"].replace(" ", "%20")


NAME_FORMS = {"exact": lambda im: im["file_name"], "upload": ls_upload,
              "upload_nested": ls_upload_nested, "data_upload": ls_data_upload,
              "windows": ls_windows, "local_files": ls_local_files, "url": url,
              "base": lambda im: im["file_name"].rsplit("/", 1)[-1]}
