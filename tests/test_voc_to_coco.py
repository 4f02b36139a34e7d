"""scripts/voc_to_coco.py on a tiny fake VOCdevkit: ids, boxes, difficult, errors, CLI."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
import warnings
from pathlib import Path

import pytest

from al_det.coco import load_coco

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "scripts" / "voc_to_coco.py"


def _load_script():
    spec = importlib.util.spec_from_file_location("voc_to_coco", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


voc = _load_script()


def _xml(width: int, height: int, objects: list[tuple]) -> str:
    """A VOC annotation; objects are (name, difficult, xmin, ymin, xmax, ymax)."""
    body = "".join(
        f"<object><name>{n}</name><pose>Unspecified</pose><truncated>0</truncated>"
        f"<difficult>{d}</difficult><bndbox><xmin>{x0}</xmin><ymin>{y0}</ymin>"
        f"<xmax>{x1}</xmax><ymax>{y1}</ymax></bndbox>"
        # a person's part box must not become an object
        + ("<part><name>head</name><bndbox><xmin>2</xmin><ymin>2</ymin><xmax>5</xmax>"
           "<ymax>5</ymax></bndbox></part>" if n == "person" else "")
        + "</object>"
        for n, d, x0, y0, x1, y1 in objects
    )
    return (f"<annotation><folder>VOC</folder><size><width>{width}</width>"
            f"<height>{height}</height><depth>3</depth></size>{body}</annotation>")


# year -> split -> stems; stem -> (width, height, objects)
SPLITS = {2007: {"trainval": ["000005", "000007"], "test": ["000001"]},
          2012: {"trainval": ["2008_000002", "2007_000005"]}}
ANNOTATIONS = {
    (2007, "000005"): (500, 375, [("chair", 0, 263, 211, 324, 339),
                                  ("chair", 1, 1, 1, 500, 375)]),
    (2007, "000007"): (500, 333, [("car", 0, 141, 50, 500, 330)]),
    (2007, "000001"): (353, 500, [("dog", 0, 48, 240, 195, 371),
                                  ("person", 0, 8, 12, 352, 498)]),
    (2012, "2008_000002"): (500, 375, [("tvmonitor", 0, 34, 11, 448, 293)]),
    (2012, "2007_000005"): (500, 333, [("aeroplane", 0, 10.5, 20, 30, 40)]),
}


@pytest.fixture()
def devkit(tmp_path: Path) -> Path:
    root = tmp_path / "VOCdevkit"
    for year, splits in SPLITS.items():
        base = root / f"VOC{year}"
        for sub in ("Annotations", "ImageSets/Main", "JPEGImages"):
            (base / sub).mkdir(parents=True)
        for split, stems in splits.items():
            (base / "ImageSets/Main" / f"{split}.txt").write_text("\n".join(stems) + "\n")
    for (year, stem), (w, h, objs) in ANNOTATIONS.items():
        base = root / f"VOC{year}"
        (base / "Annotations" / f"{stem}.xml").write_text(_xml(w, h, objs))
        (base / "JPEGImages" / f"{stem}.jpg").write_bytes(b"")
    return root


def test_boxes_ids_and_difficult(devkit: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    counts = voc.convert_devkit(devkit, out)
    assert counts == {"trainval0712.json": {"images": 4, "annotations": 5, "difficult": 1},
                      "test2007.json": {"images": 1, "annotations": 2, "difficult": 0}}
    tv = json.loads((out / "trainval0712.json").read_text())
    assert [im["id"] for im in tv["images"]] == [
        20070000000005, 20070000000007, 20122008000002, 20122007000005]
    assert tv["images"][0] == {"id": 20070000000005, "width": 500, "height": 375,
                               "file_name": "VOC2007/JPEGImages/000005.jpg"}
    assert tv["images"][2]["file_name"] == "VOC2012/JPEGImages/2008_000002.jpg"
    # x = xmin - 1, y = ymin - 1, w = xmax - xmin + 1, h = ymax - ymin + 1
    got = [(a["id"], a["image_id"], a["category_id"], a["bbox"], a["area"], a["iscrowd"])
           for a in tv["annotations"]]
    assert got == [
        (1, 20070000000005, 9, [262, 210, 62, 129], 62 * 129, 0),
        (2, 20070000000005, 9, [0, 0, 500, 375], 500 * 375, 1),  # difficult, full image
        (3, 20070000000007, 7, [140, 49, 360, 281], 360 * 281, 0),
        (4, 20122008000002, 20, [33, 10, 415, 283], 415 * 283, 0),
        (5, 20122007000005, 1, [9.5, 19, 20.5, 21], 20.5 * 21, 0),
    ]
    assert [(c["id"], c["name"]) for c in tv["categories"]] == list(
        enumerate(voc.VOC_CLASSES, start=1))
    assert tv["categories"][0]["name"] == "aeroplane"
    assert tv["categories"][-1]["name"] == "tvmonitor"
    test = json.loads((out / "test2007.json").read_text())
    assert [im["id"] for im in test["images"]] == [20070000000001]
    assert [(a["category_id"], a["bbox"]) for a in test["annotations"]] == [
        (12, [47, 239, 148, 132]), (15, [7, 11, 345, 487])]  # person parts are not objects


def test_loads_with_al_det_and_pycocotools(devkit: Path, tmp_path: Path) -> None:
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    out = tmp_path / "out"
    voc.convert_devkit(devkit, out)
    for name in ("trainval0712.json", "test2007.json"):
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # no warning about filled-in fields
            load_coco(out / name)  # validates
    gt = COCO(str(out / "trainval0712.json"))
    assert len(gt.getImgIds()) == 4 and len(gt.getCatIds()) == 20
    # Perfect detections of the non-difficult boxes give AP 1: the difficult one is ignored.
    dets = [{"image_id": a["image_id"], "category_id": a["category_id"], "bbox": a["bbox"],
             "score": 0.9} for a in gt.dataset["annotations"] if not a["iscrowd"]]
    ev = COCOeval(gt, gt.loadRes(dets), "bbox")
    ev.evaluate()
    ev.accumulate()
    ev.summarize()
    assert ev.stats[1] == pytest.approx(1.0)  # AP50


def test_deterministic(devkit: Path, tmp_path: Path) -> None:
    voc.convert_devkit(devkit, tmp_path / "a")
    voc.convert_devkit(devkit, tmp_path / "b")
    for name in voc.OUTPUTS:
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()


def test_cli(devkit: Path, tmp_path: Path) -> None:
    out = tmp_path / "cli"
    proc = subprocess.run([sys.executable, str(SCRIPT), "--devkit", str(devkit), "--out",
                           str(out)], capture_output=True, text=True, cwd=REPO)
    assert proc.returncode == 0, proc.stderr
    assert "trainval0712.json: 4 images, 5 objects (1 difficult" in proc.stdout
    assert sorted(p.name for p in out.iterdir()) == ["test2007.json", "trainval0712.json"]


def test_cli_missing_split_file(devkit: Path, tmp_path: Path) -> None:
    missing = devkit / "VOC2012" / "ImageSets" / "Main" / "trainval.txt"
    missing.unlink()
    proc = subprocess.run([sys.executable, str(SCRIPT), "--devkit", str(devkit), "--out",
                           str(tmp_path / "cli")], capture_output=True, text=True, cwd=REPO)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and str(missing) in lines[0], proc.stderr
    assert not (tmp_path / "cli").exists()  # nothing half-written


@pytest.mark.parametrize("breakage, expected", [
    (lambda d: __import__("shutil").rmtree(d / "VOC2012"), "VOC2012: no such folder"),
    (lambda d: (d / "VOC2007/ImageSets/Main/test.txt").unlink(), "test.txt: cannot read"),
    (lambda d: (d / "VOC2007/Annotations/000007.xml").unlink(), "000007.xml: annotation file"),
    (lambda d: (d / "VOC2007/JPEGImages/000007.jpg").unlink(), "000007.jpg: image not found"),
    (lambda d: (d / "VOC2007/Annotations/000007.xml").write_text("<annotation>"),
     "000007.xml: malformed XML"),
    (lambda d: (d / "VOC2007/Annotations/000007.xml").write_text(
        _xml(10, 10, [("unicorn", 0, 1, 1, 5, 5)])), "unknown class 'unicorn'"),
    (lambda d: (d / "VOC2007/Annotations/000007.xml").write_text(
        _xml(10, 10, [("cat", 0, 6, 1, 5, 5)])), "is empty inside"),
])
def test_errors_name_the_file(devkit: Path, tmp_path: Path, breakage, expected: str) -> None:
    breakage(devkit)
    with pytest.raises(voc.VocError, match=expected.replace("(", r"\(")):
        voc.convert_devkit(devkit, tmp_path / "out")
