"""`al-det evaluate --gt --dets`: any detector's results, COCO or VOC07, errors, no torch."""

from __future__ import annotations

import contextlib
import io
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from al_det.cli import main
from al_det.voc07 import voc07_metrics

CATS = [{"id": 3, "name": "circle"}, {"id": 17, "name": "square"}, {"id": 40, "name": "empty"}]


def make_gt() -> dict:
    """Three images, two classes with ground truth (one box difficult/crowd), one without."""
    boxes = [(5, 3, [10, 10, 20, 20], 0), (5, 17, [50, 40, 30, 30], 0),
             (9, 3, [0, 0, 40, 30], 0), (9, 3, [60, 60, 8, 8], 0), (12, 17, [5, 50, 60, 40], 0),
             (12, 3, [70, 10, 20, 20], 1)]
    return {
        "images": [{"id": i, "file_name": f"{i}.png", "width": 100, "height": 100}
                   for i in (5, 9, 12)],
        "categories": CATS,
        "annotations": [{"id": n, "image_id": i, "category_id": c, "bbox": b,
                         "area": b[2] * b[3], "iscrowd": crowd}
                        for n, (i, c, b, crowd) in enumerate(boxes, 1)],
    }


def make_dets() -> list[dict]:
    """TPs, a duplicate, a shifted box, false positives, a tie and a box on the crowd region."""
    rows = [(5, 3, [10, 10, 20, 20], 0.9), (5, 3, [11, 10, 20, 20], 0.8),
            (5, 17, [55, 45, 30, 30], 0.7), (9, 3, [2, 1, 40, 30], 0.7),
            (9, 17, [0, 0, 40, 30], 0.6), (12, 17, [5, 50, 60, 40], 0.95),
            (12, 3, [70, 10, 20, 20], 0.5), (9, 3, [80, 80, 10, 10], 0.3),
            (12, 40, [1, 1, 10, 10], 0.2)]
    return [{"image_id": i, "category_id": c, "bbox": b, "score": s} for i, c, b, s in rows]


@pytest.fixture()
def files(tmp_path: Path) -> tuple[Path, Path]:
    gt, dets = tmp_path / "gt.json", tmp_path / "dets.json"
    gt.write_text(json.dumps(make_gt()))
    dets.write_text(json.dumps(make_dets()))
    return gt, dets


def invoke(*args: str) -> object:
    return CliRunner().invoke(main, ["evaluate", *args])


def test_voc07_file_mode_prints_and_writes(files: tuple[Path, Path], tmp_path: Path) -> None:
    gt, dets = files
    out = tmp_path / "m.json"
    result = invoke("--gt", str(gt), "--dets", str(dets), "--metric", "voc07", "--output",
                    str(out))
    assert result.exit_code == 0, result.output
    written = json.loads(out.read_text())
    assert set(written) == {"mAP", "per_class"}
    assert written == voc07_metrics(make_gt(), make_dets())
    # square: TP (.95), TP shifted by 5 px (.7, IoU 625/1175 > .5), FP (.6): AP 1.
    # circle (3 positives): TP .9, duplicate FP .8, TP .7, on the crowd box .5 (ignored), FP .3:
    # recall 1/3 for t <= .3 (precision 1), 2/3 for t in .4 .. .6 (precision 2/3), no more
    assert written["per_class"]["square"] == pytest.approx(1.0)
    assert written["per_class"]["circle"] == pytest.approx((4 + 3 * 2 / 3) / 11)
    assert written["per_class"]["empty"] is None
    assert "mAP" in result.output and "circle" in result.output


def cocoeval_direct(gt: Path, dets: Path):  # noqa: ANN201
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    with contextlib.redirect_stdout(io.StringIO()):
        coco_gt = COCO(str(gt))
        ev = COCOeval(coco_gt, coco_gt.loadRes(str(dets)), "bbox")
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return ev


def test_coco_file_mode_equals_cocoeval_run_directly(files: tuple[Path, Path],
                                                     tmp_path: Path) -> None:
    gt, dets = files
    out = tmp_path / "m.json"
    result = invoke("--gt", str(gt), "--dets", str(dets), "--output", str(out))  # coco: default
    assert result.exit_code == 0, result.output
    got = json.loads(out.read_text())
    assert set(got) == {"AP", "AP50", "AP75", "APs", "APm", "APl", "per_class"}
    ev = cocoeval_direct(gt, dets)
    for name, value in zip(("AP", "AP50", "AP75", "APs", "APm", "APl"), ev.stats[:6],
                           strict=True):
        assert got[name] == (None if value == -1 else pytest.approx(value, abs=1e-12)), name
    precision = ev.eval["precision"]  # [IoU, recall, category (sorted ids), area, maxDets]
    for k, cid in enumerate(sorted(c["id"] for c in CATS)):
        p = precision[:, :, k, 0, 2]
        name = next(c["name"] for c in CATS if c["id"] == cid)
        want = float(np.mean(p[p > -1])) if (p > -1).any() else None
        assert got["per_class"][name] == (want if want is None else pytest.approx(want)), name
    assert got["per_class"]["empty"] is None
    assert np.mean([v for v in got["per_class"].values() if v is not None]) == \
        pytest.approx(got["AP"])  # COCO's AP is the mean of the per-class APs


@pytest.mark.parametrize("bad, message", [
    ({"image_id": 99}, "names image id 99"),
    ({"category_id": 4}, "names category id 4"),
    ({"bbox": [1, 2, 3]}, "not 4 finite numbers"),
    ({"bbox": [1, 2, float("nan"), 4]}, "not 4 finite numbers"),
    ({"bbox": [1, 2, "3", 4]}, "not 4 finite numbers"),
    ({"score": 1.5}, "scores must be numbers in [0, 1]"),
    ({"score": -0.1}, "scores must be numbers in [0, 1]"),
])
def test_bad_results_are_one_line_and_write_nothing(files: tuple[Path, Path], tmp_path: Path,
                                                    bad: dict, message: str) -> None:
    gt, dets = files
    rows = make_dets()
    rows[3] = {**rows[3], **bad}
    dets.write_text(json.dumps(rows))  # NaN is written as the JSON extension NaN
    out = tmp_path / "m.json"
    for metric in ("coco", "voc07"):
        result = invoke("--gt", str(gt), "--dets", str(dets), "--metric", metric, "--output",
                        str(out))
        assert result.exit_code == 2, result.output
        assert result.output.count("\n") == 1 and message in result.output
        assert str(dets) in result.output and "results[3]" in result.output
        assert not out.exists()


def test_not_a_list_and_mixed_modes_are_errors(files: tuple[Path, Path], tmp_path: Path) -> None:
    gt, dets = files
    dets.write_text(json.dumps({"annotations": make_dets()}))
    result = invoke("--gt", str(gt), "--dets", str(dets))
    assert result.exit_code == 2 and "not a list" in result.output
    result = invoke("-w", str(tmp_path), "--gt", str(gt))
    assert result.exit_code == 2 and "cannot be combined with --gt" in result.output
    result = invoke("--gt", str(gt))
    assert result.exit_code == 2 and "missing --dets" in result.output


@pytest.mark.parametrize("metric, keys", [("coco", 7), ("voc07", 2)])
def test_empty_results_give_zero_with_a_warning(files: tuple[Path, Path], tmp_path: Path,
                                                metric: str, keys: int) -> None:
    gt, dets = files
    dets.write_text("[]")
    out = tmp_path / "m.json"
    result = CliRunner().invoke(
        main, ["evaluate", "--gt", str(gt), "--dets", str(dets), "--metric", metric,
               "--output", str(out)])
    assert result.exit_code == 0, result.output
    assert "warning: no detections" in result.stderr
    written = json.loads(out.read_text())
    assert len(written) == keys
    assert written["per_class"] == {"circle": 0.0, "square": 0.0, "empty": None}
    assert all(v == 0.0 for k, v in written.items() if k != "per_class")


def test_file_mode_does_not_import_torch(files: tuple[Path, Path], tmp_path: Path) -> None:
    gt, dets = files
    code = (
        "import sys\nfrom al_det.cli import main\n"
        f"for metric in ('coco', 'voc07'):\n"
        f"    try:\n        main(['evaluate', '--gt', {str(gt)!r}, '--dets', {str(dets)!r},"
        f" '--metric', metric, '--output', {str(tmp_path / 'm.json')!r}])\n"
        "    except SystemExit as e:\n        assert e.code in (0, None), e.code\n"
        "print('torch' in sys.modules, 'torchvision' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip().splitlines()[-1] == "False False"
    assert json.loads((tmp_path / "m.json").read_text())["mAP"] is not None
