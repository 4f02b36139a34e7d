"""The VOC path at small size: a VOC-layout folder (XML with difficult objects, JPEGs, split
files) -> scripts/voc_to_coco.py -> init, train (SSD recipe), evaluate with voc07."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

from click.testing import CliRunner
from PIL import Image, ImageDraw

from al_det.cli import main

REPO = Path(__file__).resolve().parents[1]
SIZE = (64, 48)  # width, height
# stem -> objects (class, difficult, xmin, ymin, xmax, ymax), VOC's 1-based inclusive pixels
VOC2007 = {
    "000001": [("dog", 0, 5, 5, 30, 30), ("cat", 1, 40, 10, 60, 40)],
    "000002": [("cat", 0, 10, 8, 40, 44)],
    "000003": [("dog", 0, 30, 4, 60, 28), ("dog", 1, 2, 30, 20, 46)],
    "000004": [("cat", 0, 4, 4, 24, 24), ("dog", 0, 34, 20, 62, 46)],
    "000005": [("dog", 0, 8, 10, 50, 40), ("cat", 1, 52, 30, 64, 48)],
    "000006": [("cat", 0, 20, 2, 58, 30)],
    "000007": [("cat", 0, 3, 20, 33, 47), ("dog", 0, 36, 2, 63, 26)],
    "000008": [("dog", 0, 12, 12, 44, 44)],
}
VOC2012 = {"2008_000001": [("cat", 0, 6, 6, 40, 40)], "2008_000002": [("dog", 0, 20, 10, 60, 45)]}
COLOURS = {"cat": (230, 60, 40), "dog": (40, 80, 230)}


def xml(objects: list[tuple]) -> str:
    body = "".join(
        f"<object><name>{n}</name><difficult>{d}</difficult><bndbox><xmin>{x0}</xmin>"
        f"<ymin>{y0}</ymin><xmax>{x1}</xmax><ymax>{y1}</ymax></bndbox></object>"
        for n, d, x0, y0, x1, y1 in objects)
    return (f"<annotation><size><width>{SIZE[0]}</width><height>{SIZE[1]}</height>"
            f"<depth>3</depth></size>{body}</annotation>")


def write_year(root: Path, year: int, images: dict, splits: dict[str, list[str]]) -> None:
    base = root / f"VOC{year}"
    for sub in ("Annotations", "ImageSets/Main", "JPEGImages"):
        (base / sub).mkdir(parents=True)
    for stem, objects in images.items():
        (base / "Annotations" / f"{stem}.xml").write_text(xml(objects))
        img = Image.new("RGB", SIZE, (128, 128, 128))
        draw = ImageDraw.Draw(img)
        for name, _, x0, y0, x1, y1 in objects:
            draw.rectangle([x0 - 1, y0 - 1, x1 - 1, y1 - 1], fill=COLOURS[name])
        img.save(base / "JPEGImages" / f"{stem}.jpg", quality=95)
    for split, stems in splits.items():
        (base / "ImageSets" / "Main" / f"{split}.txt").write_text("\n".join(stems) + "\n")


CONFIG = """\
seed: 1
cycles: 1
initial: 6
data:
  pool: voc/trainval0712.json
  pool_images: VOCdevkit
  test: voc/test2007.json
model: {name: tiny_frcnn, min_size: 64, max_size: 64}
train: {epochs: 1, batch_size: 2, warmup_iters: 1, workers: 0, augment: ssd}
evaluate: {metric: voc07}
infer: {score_thresh: 0.0, batch_size: 4, workers: 0}
"""


def cli(*args: str) -> str:
    result = CliRunner().invoke(main, list(args), catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result.output


def test_voc_folder_to_voc07_metrics(tmp_path: Path) -> None:
    devkit = tmp_path / "VOCdevkit"
    stems = sorted(VOC2007)
    write_year(devkit, 2007, VOC2007, {"trainval": stems[3:], "test": stems[:3]})
    write_year(devkit, 2012, VOC2012, {"trainval": sorted(VOC2012)})
    subprocess.run([sys.executable, str(REPO / "scripts" / "voc_to_coco.py"), "--devkit",
                    str(devkit), "--out", str(tmp_path / "voc")], check=True,
                   capture_output=True)
    test = json.loads((tmp_path / "voc" / "test2007.json").read_text())
    # difficult objects become iscrowd: 1, which voc07 neither counts nor trains on
    assert len(test["images"]) == 3 and sum(a["iscrowd"] for a in test["annotations"]) == 2
    pool = json.loads((tmp_path / "voc" / "trainval0712.json").read_text())
    assert len(pool["images"]) == 7 and sum(a["iscrowd"] for a in pool["annotations"]) == 1

    config = tmp_path / "voc.yaml"
    config.write_text(CONFIG)
    wd = tmp_path / "wd"
    cli("init", "-c", str(config), "-w", str(wd))
    cli("train", "-w", str(wd))
    cli("evaluate", "-w", str(wd))

    metrics = json.loads((wd / "cycle_000" / "metrics.json").read_text())
    assert metrics["metric"] == "voc07" and 0.0 <= metrics["mAP"] <= 1.0
    per_class = metrics["per_class"]
    assert len(per_class) == 20 and per_class["aeroplane"] is None  # no ground truth
    assert per_class["cat"] is not None and per_class["dog"] is not None
    assert metrics["mAP"] == (per_class["cat"] + per_class["dog"]) / 2
    with open(wd / "summary.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert list(rows[0]) == ["cycle", "labeled_images", "labeled_fraction", "mAP"]
    assert float(rows[0]["mAP"]) == metrics["mAP"] and rows[0]["labeled_images"] == "6"

    # the artifacts recompute: file mode on the cycle's detections gives the same numbers
    out = tmp_path / "again.json"
    cli("evaluate", "--gt", str(tmp_path / "voc" / "test2007.json"), "--dets",
        str(wd / "cycle_000" / "detections.json"), "--metric", "voc07", "--output", str(out))
    again = json.loads(out.read_text())
    assert again == {"mAP": metrics["mAP"], "per_class": per_class}
    status = cli("status", "-w", str(wd)).splitlines()
    assert status[0].endswith("mAP") and status[1].endswith(f"{metrics['mAP']:.4f}")
