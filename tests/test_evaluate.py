"""COCO metrics and summary.csv: hand-computable cases through real pycocotools."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest

from al_det.evaluate import coco_metrics
from al_det.metrics import COCO_METRICS as METRICS
from al_det.summary import update_summary

GT = {
    "images": [{"id": 5, "file_name": "a.png", "width": 100, "height": 100},
               {"id": 9, "file_name": "b.png", "width": 100, "height": 100}],
    "categories": [{"id": 3, "name": "circle"}, {"id": 17, "name": "square"}],
    "annotations": [
        {"id": 1, "image_id": 5, "category_id": 3, "bbox": [10, 10, 20, 20], "area": 400,
         "iscrowd": 0},
        {"id": 2, "image_id": 9, "category_id": 17, "bbox": [50, 40, 30, 30], "area": 900,
         "iscrowd": 0},
    ],
}


def det(image_id: int, cat: int, bbox: list[float], score: float = 0.9) -> dict:
    return {"image_id": image_id, "category_id": cat, "bbox": bbox, "score": score}


def test_perfect_detections_give_ap_one() -> None:
    m = coco_metrics(GT, [det(5, 3, [10, 10, 20, 20]), det(9, 17, [50, 40, 30, 30])])
    assert m["AP"] == pytest.approx(1.0) and m["AP50"] == pytest.approx(1.0)


def test_wrong_class_gives_ap_zero() -> None:
    m = coco_metrics(GT, [det(5, 17, [10, 10, 20, 20]), det(9, 3, [50, 40, 30, 30])])
    assert m["AP"] == pytest.approx(0.0)


def test_iou_060_box_counts_at_050_not_075() -> None:
    # shifted by 5 px: IoU = 15*20 / (800 - 15*20) = 0.6; the circle class scores AP50 = 1
    # and AP75 = 0, the square class 1 and 1, averaged over the two classes
    m = coco_metrics(GT, [det(5, 3, [15, 10, 20, 20]), det(9, 17, [50, 40, 30, 30])])
    assert m["AP50"] == pytest.approx(1.0) and m["AP75"] == pytest.approx(0.5)


def test_no_detections_is_zero_with_a_warning() -> None:
    with pytest.warns(UserWarning, match="no detections"):
        m = coco_metrics(GT, [])
    assert m == dict.fromkeys(METRICS, 0.0)


def test_summary_row_replaced_and_sorted(tmp_path: Path) -> None:
    path = tmp_path / "summary.csv"
    row = {"cycle": 1, "labeled_images": 10, "labeled_fraction": 0.1, **dict.fromkeys(METRICS, 0.5)}
    update_summary(path, row)
    update_summary(path, {**row, "cycle": 0})
    update_summary(path, {**row, "AP": 0.7})
    rows = list(csv.DictReader(path.open()))
    assert [r["cycle"] for r in rows] == ["0", "1"] and rows[1]["AP"] == "0.7"


def test_summary_undefined_is_an_empty_cell_and_voc07_has_map(tmp_path: Path) -> None:
    from al_det.summary import summary_fields

    path = tmp_path / "summary.csv"
    row = {"cycle": 0, "labeled_images": 10, "labeled_fraction": 0.1,
           **dict.fromkeys(METRICS, 0.5), "APs": -1.0, "APm": None}
    update_summary(path, row)
    assert path.read_text().splitlines()[1] == "0,10,0.1,0.5,0.5,0.5,,,0.5"
    voc = tmp_path / "voc.csv"
    fields = summary_fields("voc07")
    update_summary(voc, {"cycle": 0, "labeled_images": 3, "labeled_fraction": 0.5,
                         "mAP": 0.25}, fields)
    update_summary(voc, {"cycle": 1, "labeled_images": 4, "labeled_fraction": 0.6,
                         "mAP": None}, fields)
    assert voc.read_text().splitlines() == [
        "cycle,labeled_images,labeled_fraction,mAP", "0,3,0.5,0.25", "1,4,0.6,"]
