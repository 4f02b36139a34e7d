"""Importing CVAT and Label Studio exports (shaped as the tools write them) for `al-det label`:
every name form, ids renumbered from 0 and 1, categories renumbered and reordered, images
left out; the imported boxes are compared with the truth."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import tool_exports as tx

from al_det.coco import CategoryMap
from al_det.errors import AlDetError, CocoError, SplitError
from al_det.label import load_export, used_categories
from al_det.labelstudio import tasks_to_coco
from al_det.splits import import_export, make_splits

CATS = [{"id": 7, "name": "square", "supercategory": "shape"},
        {"id": 3, "name": "circle", "supercategory": "shape"},
        {"id": 42, "name": "cross", "supercategory": "shape"}]
SELECTED = [113, 104, 117, 108, 110, 101]


def make_pool() -> dict:
    """30 images in sub-folders, 0-3 float boxes each (some negatives), odd category ids."""
    rng = np.random.default_rng(0)
    images = [{"id": 100 + i, "file_name": f"cam{i % 3}/frame {i:03d}.jpg",
               "width": 640 - 10 * (i % 2), "height": 480} for i in range(30)]
    anns = []
    for im in images:
        for _ in range(int(rng.integers(0, 4)) if im["id"] != 104 else 0):
            w, h = rng.uniform(5, 200, 2)
            x, y = rng.uniform(0, im["width"] - w), rng.uniform(0, im["height"] - h)
            anns.append({"id": len(anns) + 1, "image_id": im["id"],
                         "category_id": CATS[int(rng.integers(0, 3))]["id"],
                         "bbox": [float(x), float(y), float(w), float(h)], "area": float(w * h),
                         "iscrowd": 0})
    return {"images": images, "annotations": anns, "categories": CATS}


POOL = make_pool()


def splits() -> tuple[dict, dict]:
    labeled, unlabeled = make_splits(POOL, [100, 102, 105])
    return labeled, unlabeled


def imported(tmp_path: Path, export: object, missing_as_empty: bool = False):  # noqa: ANN201
    path = tmp_path / "export.json"
    path.write_text(json.dumps(export))
    coco, kind = load_export(path)
    match = CategoryMap(CATS).match(used_categories(coco, str(path)), str(path),
                                    allow_missing=True)
    labeled, unlabeled = splits()
    return import_export(labeled, unlabeled, SELECTED, coco, match, str(path),
                         missing_as_empty), kind


def assert_truth(result, rounding: int = 6) -> None:  # noqa: ANN001
    """The imported boxes of the selected images are the pool's, to ``rounding`` digits."""
    got: dict[int, list] = {i: [] for i in SELECTED}
    for a in result.labeled["annotations"]:
        if a["image_id"] in got:
            got[a["image_id"]].append((a["category_id"], [round(v, rounding) for v in a["bbox"]]))
    want = {i: sorted((c, [round(v, rounding) for v in b]) for c, b in boxes)
            for i, boxes in tx.truth_of(POOL, SELECTED).items()}
    assert {i: sorted(v) for i, v in got.items()} == want
    assert [im["id"] for im in result.labeled["images"]] == [100, 102, 105] + SELECTED
    assert not {im["id"] for im in result.unlabeled["images"]} & set(SELECTED)


N_NEG = sum(1 for boxes in tx.truth_of(POOL, SELECTED).values() if not boxes)
N_BOXES = sum(len(b) for b in tx.truth_of(POOL, SELECTED).values())


def test_pool_has_negatives_among_the_selection() -> None:
    assert 1 <= N_NEG < len(SELECTED) and N_BOXES > 3


@pytest.mark.parametrize("form", ["exact", "base"])
def test_cvat_coco(tmp_path: Path, form: str) -> None:
    order = ["cross", "square", "circle"]  # the task's label order, not the pool's ids
    export = tx.cvat_coco(POOL, list(reversed(SELECTED)), tx.NAME_FORMS[form], order)
    result, kind = imported(tmp_path, export)
    assert kind == "COCO" and result.absent == 0
    assert (result.images, result.boxes, result.negatives) == (6, N_BOXES, N_NEG)
    assert_truth(result, rounding=2)  # CVAT rounds boxes to 2 digits


@pytest.mark.parametrize("form", ["upload", "upload_nested", "data_upload", "windows",
                                  "local_files", "url", "exact"])
@pytest.mark.parametrize("empty", ["kept", "null size"])
def test_labelstudio_coco_every_name_form(tmp_path: Path, form: str, empty: str) -> None:
    export = tx.labelstudio_coco(POOL, SELECTED, tx.NAME_FORMS[form], empty,
                                 extra_labels=("zebra",))
    assert export["images"][0]["id"] == 0 and export["categories"][0]["id"] == 0
    result, _ = imported(tmp_path, export)
    assert (result.boxes, result.negatives, result.absent) == (N_BOXES, N_NEG, 0)
    assert_truth(result)


def test_labelstudio_coco_leaves_out_images_without_boxes(tmp_path: Path) -> None:
    export = tx.labelstudio_coco(POOL, SELECTED, tx.ls_data_upload, "left out")
    with pytest.raises(SplitError, match=rf"no annotations for {N_NEG} of 6 selected images: "
                                         r"\[.*'cam1/frame 004.jpg \(image id 104\)'\].*"
                                         r"--missing-as-empty"):
        imported(tmp_path, export)
    result, _ = imported(tmp_path, export, missing_as_empty=True)
    assert (result.boxes, result.negatives, result.absent) == (N_BOXES, N_NEG, N_NEG)
    assert_truth(result)


def test_labelstudio_json(tmp_path: Path) -> None:
    tasks = tx.labelstudio_json(POOL, SELECTED, tx.ls_data_upload)
    result, kind = imported(tmp_path, tasks)
    assert kind == "Label Studio JSON" and result.absent == 0
    assert (result.boxes, result.negatives) == (N_BOXES, N_NEG)
    assert_truth(result)


def test_labelstudio_json_unlabeled_and_skipped_tasks_are_absent(tmp_path: Path) -> None:
    tasks = tx.labelstudio_json(POOL, SELECTED, tx.ls_local_files, unlabeled=(113,),
                                skipped=(104,))
    with pytest.raises(SplitError, match=r"no annotations for 2 of 6 .*frame 013.jpg.*"
                                         r"frame 004.jpg"):
        imported(tmp_path, tasks)
    result, _ = imported(tmp_path, tasks, missing_as_empty=True)
    assert result.absent == 2
    assert not [a for a in result.labeled["annotations"] if a["image_id"] in (113, 104)]


def test_labelstudio_json_rotated_box_becomes_its_extent() -> None:
    region = {"type": "rectanglelabels", "original_width": 200, "original_height": 100,
              "value": {"x": 50, "y": 10, "width": 10, "height": 20, "rotation": 90,
                        "rectanglelabels": ["circle"]}}
    tasks = [{"id": 1, "data": {"image": "a.jpg"}, "annotations": [{"result": [region]}]}]
    coco = tasks_to_coco(tasks, "t.json")
    # rotated clockwise by 90 degrees about (100, 10): w=20 px, h=20 px -> x from 80 to 100
    assert coco["annotations"][0]["bbox"] == pytest.approx([80, 10, 20, 20])
    assert coco["images"] == [{"id": 1, "file_name": "a.jpg", "width": 200, "height": 100}]


def test_ambiguous_base_name_names_the_candidates(tmp_path: Path) -> None:
    pool = {**POOL, "images": POOL["images"] + [
        {"id": 200, "file_name": "cam0/x.jpg", "width": 10, "height": 10},
        {"id": 201, "file_name": "cam1/x.jpg", "width": 10, "height": 10}]}
    labeled, unlabeled = make_splits(pool, [100])
    export = {"images": [{"id": 1, "file_name": "images/1a2b3c4d-x.jpg", "width": 10,
                          "height": 10}], "annotations": [], "categories": []}
    with pytest.raises(SplitError, match=r"'images/1a2b3c4d-x.jpg' matches 2 selected images "
                                         r"by base name without the upload prefix: "
                                         r"\['cam0/x.jpg \(image id 200\)', 'cam1/x.jpg"):
        import_export(labeled, unlabeled, [200, 201], export, {}, "e.json")
    export["images"][0]["file_name"] = "C:\\data\\cam1\\x.jpg"  # a path picks the right one
    export["images"].append({"id": 2, "file_name": "cam0/x.jpg", "width": 10, "height": 10})
    result = import_export(labeled, unlabeled, [200, 201], export, {}, "e.json")
    assert result.images == 2 and result.negatives == 2


def test_unmatched_and_duplicate_images(tmp_path: Path) -> None:
    export = tx.cvat_coco(POOL, SELECTED + [111])
    with pytest.raises(SplitError, match=r"image 'cam2/frame 011.jpg' is not one of the 6 "
                                         r"selected images.*closest selected names"):
        imported(tmp_path, export)
    export = tx.labelstudio_coco(POOL, SELECTED, tx.ls_upload, "kept")
    export["images"].append({**export["images"][0], "id": 99,  # the same file uploaded twice
                             "file_name": "/data/upload/1/deadbeef-frame 013.jpg"})
    with pytest.raises(SplitError, match=r"images 'images/1a2b3c4d-frame 013.jpg' and "
                                         r"'/data/upload/1/deadbeef-frame 013.jpg' both match "
                                         r"selected image 'cam1/frame 013.jpg'"):
        imported(tmp_path, export)


def test_used_category_not_in_pool_is_an_error_unused_is_ignored(tmp_path: Path) -> None:
    export = tx.labelstudio_coco(POOL, SELECTED, tx.ls_upload, "kept", extra_labels=("zebra",))
    imported(tmp_path, export)  # zebra unused: fine
    zebra = next(c["id"] for c in export["categories"] if c["name"] == "zebra")
    export["annotations"][0]["category_id"] = zebra
    with pytest.raises(CocoError, match=r"category 'zebra' .* is not in the pool's categories"):
        imported(tmp_path, export)


def test_resized_images_are_refused(tmp_path: Path) -> None:
    export = tx.cvat_coco(POOL, SELECTED)
    export["images"][0]["width"] //= 2
    with pytest.raises(SplitError, match=r"'cam1/frame 013.jpg' is 315x480 but pool image id "
                                         r"113 .* is 630x480; label the original images"):
        imported(tmp_path, export)


@pytest.mark.parametrize("text, msg", [
    ("[1, 2]", "not Label Studio tasks"),
    ('"x"', "top level is a JSON str"),
    ("{", "not JSON"),
    ('{"images": [{"id": 1, "file_name": "a", "width": null, "height": null}, '
     '{"id": 1, "file_name": "b", "width": 5, "height": 5}], "annotations": [], '
     '"categories": []}', "no unique integer id"),
])
def test_bad_export_files(tmp_path: Path, text: str, msg: str) -> None:
    path = tmp_path / "e.json"
    path.write_text(text)
    with pytest.raises(AlDetError, match=msg):
        load_export(path)
