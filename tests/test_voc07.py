"""VOC07 11-point mAP: hand-worked cases, and an independent plain transcription of the rule."""

from __future__ import annotations

import math
import random
import warnings

import numpy as np
import pytest

from al_det.voc07 import voc07_metrics

CATS = [{"id": 7, "name": "cat"}]


def gt_of(boxes: list[tuple], categories: list[dict] = CATS) -> dict:
    """Ground truth from (image_id, category_id, bbox, flags) tuples; flags like {"iscrowd": 1}."""
    images = sorted({b[0] for b in boxes} | {1, 2})
    anns = [{"id": i, "image_id": b[0], "category_id": b[1], "bbox": list(b[2]),
             "area": b[2][2] * b[2][3], "iscrowd": 0, **(b[3] if len(b) > 3 else {})}
            for i, b in enumerate(boxes, 1)]
    return {"images": [{"id": i, "file_name": f"{i}.jpg", "width": 100, "height": 100}
                       for i in images],
            "categories": categories, "annotations": anns}


def det(image_id: int, bbox: tuple, score: float, cat: int = 7) -> dict:
    return {"image_id": image_id, "category_id": cat, "bbox": list(bbox), "score": score}


def ap(gt: dict, dets: list[dict], name: str = "cat") -> float | None:
    return voc07_metrics(gt, dets)["per_class"][name]


def test_true_positives_duplicates_and_false_positives() -> None:
    gt = gt_of([(1, 7, (0, 0, 10, 10)), (2, 7, (20, 20, 10, 10))])
    dets = [det(1, (0, 0, 10, 10), 0.9),    # TP
            det(1, (1, 0, 10, 10), 0.8),    # IoU 90/110 with a matched box: duplicate, FP
            det(2, (50, 50, 5, 5), 0.7),    # no overlap: FP
            det(2, (20, 20, 10, 10), 0.6)]  # TP
    # recall .5 .5 .5 1, precision 1 .5 1/3 .5: t <= .5 -> 1 (6 thresholds), t > .5 -> .5 (5)
    assert ap(gt, dets) == pytest.approx((6 * 1 + 5 * 0.5) / 11, abs=1e-12)
    assert voc07_metrics(gt, dets)["mAP"] == pytest.approx(8.5 / 11, abs=1e-12)


def test_difficult_boxes_are_neither_tp_nor_fp() -> None:
    gt = gt_of([(1, 7, (0, 0, 10, 10)), (1, 7, (30, 30, 10, 10), {"iscrowd": 1}),
                (2, 7, (0, 0, 10, 10), {"difficult": 1})])  # one positive in all
    dets = [det(1, (30, 30, 10, 10), 0.95),  # on a difficult (iscrowd) box: ignored
            det(2, (0, 0, 10, 10), 0.9),     # on a difficult box: ignored
            det(2, (60, 60, 10, 10), 0.6),   # FP
            det(1, (0, 0, 10, 10), 0.5),     # TP
            det(1, (30, 30, 10, 10), 0.4)]   # a difficult box again: still ignored, not FP
    # counted: FP, TP -> precision 0, .5 at recall 0, 1: AP .5 (were the ignored ones FPs: .25)
    assert ap(gt, dets) == pytest.approx(0.5, abs=1e-12)


def test_best_box_is_taken_even_if_already_matched() -> None:
    gt = gt_of([(1, 7, (0, 0, 10, 10)), (1, 7, (2, 0, 10, 10))])  # boxes overlap, IoU .667
    dets = [det(1, (0, 0, 10, 10), 0.9),    # IoU 1 with the first: TP
            det(1, (0.5, 0, 10, 10), 0.8)]  # IoU .905 with the matched first, .739 with the
    # unmatched second: the best box decides, so FP. Recall .5 .5, precision 1 .5 -> 6/11
    assert ap(gt, dets) == pytest.approx(6 / 11, abs=1e-12)
    twins = gt_of([(1, 7, (0, 0, 10, 10)), (1, 7, (0, 0, 10, 10))])  # equal IoU: the first box
    assert ap(twins, [det(1, (0, 0, 10, 10), 0.9), det(1, (0, 0, 10, 10), 0.8)]) == \
        pytest.approx(6 / 11, abs=1e-12)


def test_iou_of_exactly_half_is_a_miss_and_there_is_no_plus_one() -> None:
    gt = gt_of([(1, 7, (0, 0, 10, 10))])
    # IoU 100/200 = 0.5 exactly: not > 0.5, an FP. With the old devkit's +1 pixel it would be
    # 121/231 = 0.524, a TP.
    assert ap(gt, [det(1, (0, 0, 10, 20), 0.9)]) == 0.0
    assert ap(gt, [det(1, (0, 0, 10, 19), 0.9)]) == pytest.approx(1.0)  # 100/190


def test_score_ties_keep_input_order() -> None:
    gt = gt_of([(1, 7, (0, 0, 10, 10))])
    fp, tp = det(1, (50, 50, 5, 5), 0.5), det(1, (0, 0, 10, 10), 0.5)
    assert ap(gt, [fp, tp]) == pytest.approx(0.5, abs=1e-12)  # precision 0 then .5
    assert ap(gt, [tp, fp]) == pytest.approx(1.0, abs=1e-12)  # precision 1 then .5
    other = det(2, (0, 0, 1, 1), 0.5, cat=8)  # another class between them changes nothing
    two = gt_of([(1, 7, (0, 0, 10, 10))], [*CATS, {"id": 8, "name": "dog"}])
    assert ap(two, [fp, other, tp]) == pytest.approx(0.5, abs=1e-12)


def test_recall_thresholds_are_voc_eval_floats() -> None:
    # 3 of 5 found: recall 3/5 = 0.6 (0.59999999999999997...) does not reach voc_eval.py's
    # 6th threshold np.arange(0, 1.1, 0.1)[6] = 0.6000000000000001, so only t <= .5 count
    gt = gt_of([(1, 7, (20 * i, 0, 10, 10)) for i in range(5)])
    dets = [det(1, (20 * i, 0, 10, 10), 0.9 - 0.1 * i) for i in range(3)]
    assert ap(gt, dets) == pytest.approx(6 / 11, abs=1e-12)
    dets.append(det(1, (60, 0, 10, 10), 0.1))  # the 4th: recall 0.8 >= 0.8
    assert ap(gt, dets) == pytest.approx(9 / 11, abs=1e-12)


def test_empty_and_difficult_only_classes_and_non_contiguous_ids() -> None:
    cats = [{"id": 3, "name": "circle"}, {"id": 17, "name": "square"},
            {"id": 40, "name": "empty"}, {"id": 41, "name": "hard"}]
    gt = gt_of([(1, 3, (0, 0, 10, 10)), (2, 17, (10, 10, 20, 20)),
                (2, 41, (50, 50, 20, 20), {"iscrowd": 1})], cats)
    dets = [det(1, (0, 0, 10, 10), 0.9, cat=3), det(2, (0, 0, 5, 5), 0.8, cat=17),
            det(1, (0, 0, 10, 10), 0.7, cat=40), det(2, (50, 50, 20, 20), 0.7, cat=41)]
    m = voc07_metrics(gt, dets)
    assert m["per_class"] == {"circle": 1.0, "square": 0.0, "empty": None, "hard": None}
    assert m["mAP"] == pytest.approx(0.5)  # over circle and square only
    assert voc07_metrics(gt_of([], cats), dets)["mAP"] is None  # no positives anywhere


def test_no_detections_is_zero_with_a_warning() -> None:
    gt = gt_of([(1, 7, (0, 0, 10, 10))])
    with pytest.warns(UserWarning, match="no detections"):
        m = voc07_metrics(gt, [])
    assert m == {"mAP": 0.0, "per_class": {"cat": 0.0}}


# ----------------------------------------------------------------- an independent transcription
def reference_voc07(gt: dict, dets: list[dict]) -> dict:
    """py-faster-rcnn's voc_eval.py (use_07_metric=True) written out plainly, in pure Python,
    with the issue's changes: no +1 in the IoU, a stable sort, difficult = iscrowd or difficult.
    """
    per_class = {}
    for cat in gt["categories"]:
        recs = {}
        npos = 0
        for a in gt["annotations"]:
            if a["category_id"] != cat["id"]:
                continue
            x, y, w, h = a["bbox"]
            r = recs.setdefault(a["image_id"], {"bbox": [], "difficult": [], "det": []})
            hard = bool(a.get("iscrowd", 0) or a.get("difficult", 0))
            r["bbox"].append((x, y, x + w, y + h))
            r["difficult"].append(hard)
            r["det"].append(False)
            npos += not hard
        if npos == 0:
            per_class[cat["name"]] = None
            continue
        mine = [d for d in dets if d["category_id"] == cat["id"]]
        mine = sorted(mine, key=lambda d: -d["score"])  # sorted() is stable
        tp, fp = [], []
        for d in mine:
            x, y, w, h = d["bbox"]
            bb = (x, y, x + w, y + h)
            r = recs.get(d["image_id"])
            ovmax, jmax = -math.inf, -1
            for j, g in enumerate(r["bbox"] if r else []):
                iw = max(min(bb[2], g[2]) - max(bb[0], g[0]), 0.0)
                ih = max(min(bb[3], g[3]) - max(bb[1], g[1]), 0.0)
                inters = iw * ih
                uni = (bb[2] - bb[0]) * (bb[3] - bb[1]) + (g[2] - g[0]) * (g[3] - g[1]) - inters
                if inters / uni > ovmax:
                    ovmax, jmax = inters / uni, j
            if ovmax > 0.5:
                if not r["difficult"][jmax]:
                    if not r["det"][jmax]:
                        tp.append(1)
                        fp.append(0)
                        r["det"][jmax] = True
                    else:
                        tp.append(0)
                        fp.append(1)
                else:
                    tp.append(0)
                    fp.append(0)
            else:
                tp.append(0)
                fp.append(1)
        ctp = cfp = 0
        rec, prec = [], []
        for a, b in zip(tp, fp, strict=True):
            ctp += a
            cfp += b
            rec.append(ctp / npos)
            prec.append(ctp / max(ctp + cfp, np.finfo(np.float64).eps))
        value = 0.0
        for t in np.arange(0.0, 1.1, 0.1):
            p = [pr for rc, pr in zip(rec, prec, strict=True) if rc >= t]
            value += (max(p) if p else 0.0) / 11.0
        per_class[cat["name"]] = value
    defined = [v for v in per_class.values() if v is not None]
    return {"mAP": sum(defined) / len(defined) if defined else None, "per_class": per_class}


def random_case(seed: int) -> tuple[dict, list[dict]]:
    """GT with difficult boxes, non-contiguous ids and an empty class; detections jittered from
    the GT (TPs, duplicates, misses) and random ones, scores from a few values (ties)."""
    rng = random.Random(seed)
    cats = [{"id": cid, "name": f"c{cid}"} for cid in (2, 5, 11, 40)]  # 40: never in the GT
    boxes = []
    for image in range(1, rng.randint(2, 6) + 1):
        for _ in range(rng.randint(0, 5)):
            x, y = rng.randint(0, 60), rng.randint(0, 60)
            flags = rng.choice([{}, {}, {}, {"iscrowd": 1}, {"difficult": 1}])
            boxes.append((image, rng.choice((2, 5, 11)), (x, y, rng.randint(4, 30),
                                                          rng.randint(4, 30)), flags))
    gt = gt_of(boxes, cats)
    dets = []
    for a in gt["annotations"]:
        for _ in range(rng.choice((0, 1, 1, 2))):
            x, y, w, h = a["bbox"]
            dets.append(det(a["image_id"], (x + rng.randint(-3, 3), y + rng.randint(-3, 3),
                                            w + rng.randint(-2, 2), h), rng.choice(SCORES),
                            cat=a["category_id"] if rng.random() < 0.9 else rng.choice((2, 40))))
    for _ in range(rng.randint(0, 8)):
        dets.append(det(rng.choice([im["id"] for im in gt["images"]]),
                        (rng.uniform(0, 70), rng.uniform(0, 70), rng.uniform(1, 30),
                         rng.uniform(1, 30)), rng.choice(SCORES), cat=rng.choice((2, 5, 11, 40))))
    rng.shuffle(dets)
    return gt, dets


SCORES = (0.2, 0.5, 0.5, 0.7, 0.9, 0.9, 0.31)


@pytest.mark.parametrize("seed", range(60))
def test_matches_an_independent_transcription(seed: int) -> None:
    gt, dets = random_case(seed)
    want = reference_voc07(gt, dets)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # a case without detections warns
        got = voc07_metrics(gt, dets)
    assert got["per_class"].keys() == want["per_class"].keys()
    for name, value in want["per_class"].items():
        if value is None:
            assert got["per_class"][name] is None, name
        else:
            assert got["per_class"][name] == pytest.approx(value, abs=1e-6), name
    if want["mAP"] is None:
        assert got["mAP"] is None
    else:
        assert got["mAP"] == pytest.approx(want["mAP"], abs=1e-6)


def test_random_cases_exercise_every_branch() -> None:
    """The randomized comparison above is only worth something if it hits ties, duplicates,
    difficult matches, empty classes and APs strictly between 0 and 1."""
    seen = {"mid": 0, "none": 0, "tie": 0}
    for seed in range(60):
        gt, dets = random_case(seed)
        if not dets:
            continue
        m = reference_voc07(gt, dets)
        seen["mid"] += sum(v is not None and 0 < v < 1 for v in m["per_class"].values())
        seen["none"] += m["per_class"]["c40"] is None
        scores = [d["score"] for d in dets]
        seen["tie"] += len(set(scores)) < len(scores)
    assert all(v >= 10 for v in seen.values()), seen
