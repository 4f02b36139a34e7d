"""Hand-worked cases, one per rule of docs/acquisition.md, plus acquire's errors."""

from __future__ import annotations

import json
import math
import threading

import numpy as np
import pytest

from al_det import kernels
from al_det.acquire import run_acquire_standalone, select_images
from al_det.dump import read_dump, write_dump
from al_det.errors import AcquireError, CocoError, DumpError
from al_det.strategies import groups as groups_mod
from al_det.strategies import summary as summary_mod
from al_det.strategies.base import Pool, minority_quotas
from al_det.strategies.enms import Enms
from al_det.strategies.summary import summarize


def H(p):
    return -p * math.log(p) - (1 - p) * math.log(1 - p)


CATS = [{"id": 1, "name": "a"}, {"id": 2, "name": "b"}, {"id": 3, "name": "c"}]


def build(tmp_path, images, image_features=None, cats=CATS, dtype=np.float32):
    """``images``: per image a list of (label, score, feature)."""
    counts = [len(d) for d in images]
    dets = [d for im in images for d in im]
    dim = len(dets[0][2]) if dets else 2
    recs = [{"id": 100 + i, "file_name": f"{i}.jpg", "width": 9, "height": 9}
            for i in range(len(images))]
    write_dump(tmp_path / "dump", recs, cats, np.concatenate([[0], np.cumsum(counts)]),
               np.ones((len(dets), 4)), [d[1] for d in dets], [d[0] for d in dets],
               np.array([d[2] for d in dets], dtype=dtype).reshape(len(dets), dim),
               image_features=image_features)
    return read_dump(tmp_path / "dump")


def labeled(anns=(), images=(), cats=CATS):
    return {"images": list(images), "categories": cats,
            "annotations": [{"id": k, "image_id": 1, "category_id": c, "iscrowd": crowd}
                            for k, (c, crowd) in enumerate(anns)]}


def keys_by_id(sel):
    return dict(zip(sel.image_ids, sel.keys, strict=True))


# ----------------------------------------------------------------- ENMS


def test_enms_suppresses_same_class_similar_only(tmp_path):
    img = [(1, 0.5, [1, 0]), (1, 0.4, [1, 0.1]),  # similar, same class: removed
           (2, 0.4, [1, 0]),  # similar but another class: kept
           (1, 0.3, [0, 1])]  # same class, orthogonal: kept
    d = build(tmp_path, [img, []])
    sel = select_images(d, labeled(), 2, "enms", {})
    assert keys_by_id(sel)[100] == pytest.approx(H(0.5) + H(0.4) + H(0.3), abs=1e-7)
    assert keys_by_id(sel)[101] == 0.0  # no detection
    assert sel.image_ids == (100, 101)


@pytest.mark.parametrize("t, feats, n_kept", [
    (0.0, [[1, 0], [0, 1]], 2),  # sim 0, not > 0
    (1.0, [[1, 0], [1, 0]], 2),  # sim 1, not > 1
    (0.99, [[1, 0], [1, 0]], 1),
])
def test_enms_threshold_is_strict(tmp_path, t, feats, n_kept):
    d = build(tmp_path, [[(1, 0.5, f) for f in feats]])
    sel = select_images(d, labeled(), 1, "enms", {"t_enms": t})
    assert sel.keys[0] == pytest.approx(n_kept * H(0.5))


def test_enms_duplicates_survive_t_enms_one(tmp_path):
    """sim of a row and its copy is exactly 1, not > 1 (|a| |a| rounded apart from a.a put it
    a rounding above 1 for 9 of these 50 rows): with T_enms = 1 nothing is suppressed, and
    integer rows meeting at exactly 1/2 are not suppressed by T_enms = 0.5."""
    feats = np.random.default_rng(5).standard_normal((50, 8)).astype(np.float32).tolist()
    d = build(tmp_path, [[(1, 0.5, f), (1, 0.5, f)] for f in feats]
              + [[(1, 0.5, [1, 1, 0, 0, 0, 0, 0, 0]), (1, 0.5, [0, 1, 1, 0, 0, 0, 0, 0])]])
    assert select_images(d, labeled(), 51, "enms", {"t_enms": 1.0}).keys == \
        pytest.approx([2 * H(0.5)] * 51)
    half = keys_by_id(select_images(d, labeled(), 51, "enms", {"t_enms": 0.5}))
    assert half[150] == pytest.approx(2 * H(0.5)) and half[100] == pytest.approx(H(0.5))


@pytest.mark.parametrize("rows, expected", [
    ([[1, 0], [1, 1], [0, 1]], 2),  # row 0 first: removes row 1 only, row 2 stays
    ([[1, 1], [1, 0], [0, 1]], 1),  # row 0 (the middle one) first: removes both others
])
def test_enms_ties_pick_lower_row(tmp_path, rows, expected):
    d = build(tmp_path, [[(1, 0.5, f) for f in rows]])
    sel = select_images(d, labeled(), 1, "enms", {"t_enms": 0.5})
    assert sel.keys[0] == pytest.approx(expected * H(0.5))


def test_prototype_weighs_all_detections_by_entropy(tmp_path):
    img = [(1, 0.5, [1, 0]), (1, 0.1, [1, 0.2]), (2, 0.3, [0, 3])]
    d = build(tmp_path, [img])
    pool = Pool(d, np.array([0]), labeled(), 1)
    s = summarize(pool, Enms(t_enms=0.5), want_protos=True)  # ENMS drops row 1, not from Eq. 3
    p = (H(0.5) * np.array([1, 0]) + H(0.1) * np.array([1, 0.2])) / (H(0.5) + H(0.1))
    assert s.grp_cls.tolist() == [1, 2] and s.grp_pres.tolist() == pytest.approx([0.5, 0.3])
    got = s.protos.of([0])
    np.testing.assert_allclose(got[0], p / np.linalg.norm(p), rtol=1e-6)
    np.testing.assert_allclose(got[1], [0, 1], atol=1e-7)
    assert s.enms[0] == pytest.approx(H(0.5) + H(0.3))


# ----------------------------------------------------------------- DivProto


def intra_case(tmp_path):
    i1 = [(1, 0.5, [1, 0])] * 3  # basic entropy 3 H(.5): first
    i2 = [(1, 0.5, [1, 0.05]), (2, 0.5, [0, 1])]  # class 1 like i1's, class 2 new
    i3 = [(2, 0.5, [0, 1])]
    return build(tmp_path, [i1, i2, i3, []])  # the last image has no detection


@pytest.mark.parametrize("missing, budget, expected", [
    ("novel", 2, [100, 101]),  # i2's class 2 is new: M_g = -inf, accepted
    ("skip", 2, [100, 102]),  # i2 judged on class 1 only (0.999 >= 0.7): rejected
    ("novel", 3, [100, 101, 103]),  # i3 repeats i2's class 2; no-detection image accepted
    ("skip", 3, [100, 102, 103]),
])
def test_intra_missing_rules(tmp_path, missing, budget, expected):
    d = intra_case(tmp_path)
    p = {"inter": False, "intra_missing": missing}
    sel = select_images(d, labeled(), budget, "divproto", p)
    assert list(sel.image_ids) == expected and set(sel.reasons) == {"main"}


def test_intra_rejects_then_fills_up(tmp_path):
    d = intra_case(tmp_path)
    sel = select_images(d, labeled(), 4, "divproto", {"inter": False})
    assert list(sel.image_ids) == [100, 101, 103, 102]
    assert sel.reasons == ("main", "main", "main", "fill")


def test_intra_threshold_is_strict_for_duplicates(tmp_path):
    """T_intra = 1 rejects exactly the duplicates (sim 1 is not < 1), though float32
    prototypes put their similarity a rounding away from 1 either side: the test near the
    threshold recomputes it from the raw features, exactly at a tie (ties.py). Ten random
    features, each in an image at score 0.5 and a duplicate at 0.45 (a lower entropy: walked
    after all the first ones), and one two-detection image twice."""
    rng = np.random.default_rng(3)
    feats = rng.standard_normal((10, 7)).astype(np.float32).tolist()
    pair = [(1, 0.3, feats[0][::-1]), (1, 0.6, feats[1][::-1])]
    d = build(tmp_path, [[(1, 0.5, f)] for f in feats] + [[(1, 0.45, f)] for f in feats]
              + [pair, pair])
    sel = select_images(d, labeled(), 22, "divproto", {"inter": False, "t_intra": 1.0})
    first, dups = list(range(100, 110)), list(range(110, 120))
    assert list(sel.image_ids) == [120] + first + [121] + dups
    assert sel.reasons == ("main",) * 11 + ("fill",) * 11


def test_minority_classes_and_quota_rounding():
    cats = [{"id": i, "name": str(i)} for i in (5, 2, 9, 4)]
    lab = labeled([(5, 0), (5, 0), (2, 0), (2, 1), (2, 1), (2, 1), (9, 0)], cats=cats)
    # counts without crowd: 5->2, 2->1, 9->1, 4->0; ties by id: 4, 2, 9, 5
    assert list(minority_quotas(lab, 0.5, 0.75, 10)) == [4, 2]
    assert list(minority_quotas(lab, 0.75, 0.75, 10)) == [4, 2, 9]
    assert minority_quotas(lab, 0.1, 0.75, 10) == {4: 7}  # C_minor = max(1, 0)
    assert minority_quotas(lab, 0.5, 0.01, 10) == {4: 1, 2: 1}  # quota at least 1
    many = [{"id": i, "name": str(i)} for i in range(1, 101)]
    assert len(minority_quotas(labeled(cats=many), 0.29, 0.5, 10)) == 29  # 28.999999999999996
    assert minority_quotas(labeled(cats=CATS), 0.34, 0.57, 100) == {1: 57}  # 56.99999999999999


def inter_case(tmp_path):
    c0 = [(2, 0.5, [1, 0])] * 3  # top entropy, no minority class
    c1 = [(1, 0.5, [1, 0])] * 2
    c2 = [(1, 0.2, [1, 0]), (2, 0.5, [0, 1])]  # minority presence 0.2 <= 0.3
    c3 = [(1, 0.35, [0, 1])]
    c4 = [(1, 0.9, [1, 1])]
    return build(tmp_path, [c0, c1, c2, c3, c4, []])


def test_quota_decrement_removes_class_and_stops_main_pass(tmp_path):
    d = inter_case(tmp_path)
    lab = labeled([(2, 0)] * 5 + [(3, 0)] * 5)  # class 1 is the only minority (alpha*3 ~ 1)
    p = {"intra": False, "alpha": 0.34, "beta": 0.5}  # quota floor(0.5 * 4 / 1) = 2
    sel = select_images(d, lab, 4, "divproto", p)
    # c1 and c3 use up class 1's quota; the minority set is empty, so c4 is not reached
    assert list(sel.image_ids) == [101, 103, 100, 102]
    assert sel.reasons == ("main", "main", "fill", "fill")
    assert sel.keys[0] == pytest.approx(2 * H(0.5))


def test_main_pass_stops_at_budget(tmp_path):
    d = inter_case(tmp_path)
    lab = labeled([(2, 0)] * 5 + [(3, 0)] * 5)
    sel = select_images(d, lab, 1, "divproto", {"intra": False, "alpha": 0.34})
    assert list(sel.image_ids) == [101] and sel.reasons == ("main",)


def test_switches_off_is_plain_ranking(tmp_path):
    d = inter_case(tmp_path)
    plain = select_images(d, labeled(), 5, "entropy", {})
    off = select_images(d, labeled(), 5, "divproto", {"intra": False, "inter": False})
    assert off.image_ids == plain.image_ids == (100, 101, 102, 103, 104)
    assert set(off.reasons) == {"main"}
    enms_off = select_images(d, labeled(), 5, "enms_divproto", {"intra": False, "inter": False})
    assert enms_off.image_ids == select_images(d, labeled(), 5, "enms", {}).image_ids


# ----------------------------------------------------------------- random, coreset


def test_random_is_seeded(tmp_path):
    d = build(tmp_path, [[(1, 0.5, [1, 0])]] * 30)
    a = select_images(d, labeled(), 10, "random", {"seed": 3})
    assert a.image_ids == select_images(d, labeled(), 10, "random", {"seed": 3}).image_ids
    assert a.image_ids != select_images(d, labeled(), 10, "random", {"seed": 4}).image_ids
    expect = np.random.default_rng(3).choice(30, 10, replace=False) + 100
    assert list(a.image_ids) == expect.tolist() and a.seed == 3 and a.params == {"seed": 3}


def test_coreset_farthest_first_from_labeled_centres(tmp_path):
    x = np.array([[0.0], [1.0], [5.0], [10.0], [10.0], [6.0]])  # row 0 is labeled
    d = build(tmp_path, [[]] * 6, image_features=x)
    sel = select_images(d, labeled(images=[{"id": 100}]), 3, "coreset", {})
    # 10 (first of the tied rows), then 5 (d=5), then 1 and 6 tie at 1: the lower row, 1
    assert list(sel.image_ids) == [103, 102, 101]
    assert sel.keys == pytest.approx((10.0, 5.0, 1.0))


# ----------------------------------------------------------------- errors and the command


@pytest.mark.parametrize("budget, strategy, params, match", [
    (99, "entropy", {}, "budget 99 exceeds the 6"),
    (0, "entropy", {}, "positive integer"),
    (1, "enmss", {}, "did you mean 'enms'"),
    (1, "entropy", {"t_intar": 0.5}, "did you mean 't_intra'"),
    (1, "divproto", {"t_intra": 1.5}, "t_intra=1.5 must lie in"),
    (1, "divproto", {"alpha": 0}, "alpha=0 must lie in"),
    (1, "divproto", {"intra_missing": "drop"}, "intra_missing"),
    (1, "divproto", {"inter": "yes"}, "true or false"),
    (1, "coreset", {}, "needs image_features"),
])
def test_acquire_errors(tmp_path, budget, strategy, params, match):
    d = inter_case(tmp_path)
    with pytest.raises(AcquireError, match=match):
        select_images(d, labeled(), budget, strategy, params)


def test_unused_known_params_are_ignored(tmp_path):
    d = inter_case(tmp_path)
    sel = select_images(d, labeled(), 2, "enms", {"t_intra": 0.1, "seed": 5, "t_enms": 0.4})
    assert sel.params == {"t_enms": 0.4}


def test_categories_must_match(tmp_path):
    d = inter_case(tmp_path)
    other = CATS[:2] + [{"id": 3, "name": "zebra"}]
    with pytest.raises(AcquireError, match="zebra"):
        select_images(d, labeled(cats=other), 1, "entropy", {})


def test_coreset_labeled_image_missing_from_dump(tmp_path):
    d = build(tmp_path, [[]] * 3, image_features=np.zeros((3, 2)))
    with pytest.raises(AcquireError, match="labeled image 7"):
        select_images(d, labeled(images=[{"id": 7}]), 1, "coreset", {})


def test_run_acquire_standalone_writes_both_files(tmp_path):
    inter_case(tmp_path)
    lab = tmp_path / "labeled.json"
    lab.write_text(json.dumps(labeled([(2, 0)] * 5, images=[{"id": 1}])))
    out = tmp_path / "out" / "next.json"
    sel = run_acquire_standalone(tmp_path / "dump", lab, 3, "enms_divproto", out, {"seed": 1})
    coco = json.loads(out.read_text())
    assert [im["id"] for im in coco["images"]] == list(sel.image_ids)
    assert coco["categories"] == CATS and coco["annotations"] == []
    side = json.loads((tmp_path / "out" / "next.selection.json").read_text())
    assert side["strategy"] == "enms_divproto" and side["params"]["t_enms"] == 0.5
    assert [i["id"] for i in side["images"]] == list(sel.image_ids)
    assert {i["reason"] for i in side["images"]} <= {"main", "fill"}


@pytest.mark.parametrize("content, err", [
    ("not json", CocoError), ("[]", CocoError), ('{"images": []}', CocoError),
])
def test_standalone_bad_labeled_writes_nothing(tmp_path, content, err):
    inter_case(tmp_path)
    lab = tmp_path / "labeled.json"
    lab.write_text(content)
    out = tmp_path / "out" / "next.json"
    with pytest.raises(err):
        run_acquire_standalone(tmp_path / "dump", lab, 3, "entropy", out, {})
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_standalone_error_writes_nothing(tmp_path):
    inter_case(tmp_path)
    lab = tmp_path / "labeled.json"
    lab.write_text(json.dumps(labeled()))
    out = tmp_path / "next.json"
    with pytest.raises(AcquireError):
        run_acquire_standalone(tmp_path / "dump", lab, 50, "entropy", out, {})
    assert not out.exists() and not (tmp_path / "next.selection.json").exists()


# ----------------------------------------------------------------- streaming-pass kernels


def test_kernel_widens_every_float16_pattern():
    """Every finite nonzero float16 value v (subnormals included), as the row [1, v] of a
    one-row group, whose prototype is the row over its length: a wrong or flushing widening
    shows up as a relative error far above 1e-6."""
    vals = np.arange(2**16, dtype=np.int64).astype(np.uint16).view(np.float16)
    vals = vals[np.isfinite(vals) & (vals != 0)]  # 61,438 values
    n = len(vals)
    rows = np.stack([np.ones(n, np.float16), vals], axis=1)
    protos = groups_mod.group_protos(rows, np.arange(n), np.ones(n), np.arange(n), None)
    x = rows.astype(np.float64)
    np.testing.assert_allclose(protos, x / np.linalg.norm(x, axis=1)[:, None], rtol=1e-6)


def ref_keep(feats, t):
    """Algorithm 1's keep mask for one group already in pick order, in float64."""
    f = feats.astype(np.float64)
    unit = f / np.maximum(np.linalg.norm(f, axis=1), 1e-12)[:, None]
    removed, keep = np.zeros(len(f), bool), np.zeros(len(f), bool)
    for a in range(len(f)):
        if not removed[a]:
            keep[a] = True
            removed[a + 1:] |= unit[a + 1:] @ unit[a] > t
    return keep


@pytest.mark.parametrize("dtype", [np.float16, np.float32])
@pytest.mark.parametrize("t", [0.2, 0.5, 0.8])
def test_group_kernels_match_float64(dtype, t):
    """Large groups (up to 60 rows, many survivors of the first pick) against a float64
    greedy and float64 prototypes."""
    rng = np.random.default_rng(7)
    sizes = rng.integers(1, 61, 40)
    starts = np.concatenate([[0], np.cumsum(sizes)[:-1]])
    m, dim = int(sizes.sum()), 24
    centres = rng.standard_normal((len(sizes), dim))
    feats = (np.repeat(centres, sizes, axis=0) * rng.uniform(0, 1.5, (m, 1))
             + rng.standard_normal((m, dim))).astype(dtype)
    feats[starts[3] + 1] = 0.0  # a zero feature
    perm = rng.permutation(m)  # group rows lie anywhere in the raw chunk
    raw = np.empty_like(feats)
    raw[perm] = feats
    h = rng.uniform(0.01, 0.69, m)
    keep = groups_mod.enms_mask(raw, perm, starts, np.array([0, m]), t, None)  # one image
    protos = groups_mod.group_protos(raw, perm, h, starts, None)
    f64 = feats.astype(np.float64)
    for g, (a, k) in enumerate(zip(starts, sizes, strict=True)):
        assert keep[a:a + k].tolist() == ref_keep(feats[a:a + k], t).tolist(), g
        p = h[a:a + k] @ f64[a:a + k] / h[a:a + k].sum()
        np.testing.assert_allclose(protos[g], p / max(np.linalg.norm(p), 1e-12), atol=2e-6)


@pytest.mark.parametrize("bits", [0x7C00, 0xFC00, 0x7E00, 0xFFFF, 0x7C01])  # inf, NaN, payloads
@pytest.mark.parametrize("labeled_row", [False, True])
def test_nonfinite_float16_rejected_by_every_streaming_strategy(tmp_path, bits, labeled_row):
    imgs = [[(1, 0.5, [1, 0]), (1, 0.4, [1, 0.1]), (2, 0.3, [0, 1])], [(1, 0.2, [1, 1])], []]
    d = build(tmp_path, imgs, dtype=np.float16)
    f = np.load(d.path / "features.npy")
    f.view(np.uint16)[1, 1] = bits
    np.save(d.path / "features.npy", f)
    d = read_dump(d.path, check_features=False)
    lab = labeled(images=[{"id": 100}]) if labeled_row else labeled()
    for strategy in ("enms", "divproto", "enms_divproto"):
        with pytest.raises(DumpError, match="features.npy: NaN or infinity in detection row 1"):
            select_images(d, lab, 1, strategy, {})


def test_large_float16_features_are_not_taken_for_nan(tmp_path):
    big = [65504.0, -65504.0, 65504.0]  # squared lengths above 2**32: exact recheck passes
    d = build(tmp_path, [[(1, 0.5, big), (1, 0.4, big)], [(2, 0.3, big)]], dtype=np.float16)
    sel = select_images(read_dump(d.path, check_features=False), labeled(), 2, "enms_divproto",
                        {"inter": False})
    assert sorted(sel.image_ids) == [100, 101]


def test_first_nonfinite_row_float32_overflow_is_not_nan():
    x = np.ones((5, 3), np.float32)
    x[1] = 3e38  # finite, but its squared length overflows float32: looked at again, skipped
    assert kernels.first_nonfinite_row(x) == -1
    x[3, 2] = np.nan
    assert kernels.first_nonfinite_row(x) == 3
    x[2, 0] = -np.inf
    assert kernels.first_nonfinite_row(x) == 2
    h = np.full((3, 4), 65504.0, np.float16)  # float16's largest finite value
    assert kernels.first_nonfinite_row(h) == -1
    h[2, 3] = np.inf
    assert kernels.first_nonfinite_row(h) == 2


def test_standalone_streams_once_ahead_and_reports_nan(tmp_path, monkeypatch):
    """`al-det acquire` runs the pass in its background thread (once), and an error the pass
    meets there is raised by the command, nothing written."""
    calls = []
    real = summary_mod.stream_summary

    def spy(*args, **kwargs):
        calls.append(threading.current_thread().name)
        return real(*args, **kwargs)

    monkeypatch.setattr(summary_mod, "stream_summary", spy)
    imgs = [[(1, 0.5, [1, 0]), (1, 0.4, [1, 0.1]), (2, 0.3, [0, 1])], [(1, 0.2, [1, 1])], []]
    d = build(tmp_path, imgs, dtype=np.float16)
    lab = tmp_path / "labeled.json"
    lab.write_text(json.dumps(labeled()))
    out = tmp_path / "next.json"
    sel = run_acquire_standalone(d.path, lab, 2, "enms_divproto", out, {})
    assert calls == ["al-det-pass"] and len(sel.image_ids) == 2
    out.unlink(), (tmp_path / "next.selection.json").unlink()
    f = np.load(d.path / "features.npy")
    f[2, 0] = np.nan
    np.save(d.path / "features.npy", f)
    with pytest.raises(DumpError, match="NaN or infinity in detection row 2"):
        run_acquire_standalone(d.path, lab, 2, "enms", out, {})
    assert not out.exists() and not (tmp_path / "next.selection.json").exists()
    lab.write_text("{")  # the JSON error comes first; the pass is stopped, not left running
    with pytest.raises(CocoError):
        run_acquire_standalone(d.path, lab, 2, "enms", out, {})
    assert not [t for t in threading.enumerate() if t.name == "al-det-pass"]


@pytest.mark.parametrize("n", [0, 1, 31, 32, 33, 64, 100, 1000])
def test_order_groups_is_a_stable_sort(n):
    """Per image: pick order = stable sort by entropy, descending; groups = that, stably by
    class (insertion runs of 32, merged beyond), against numpy's stable argsort."""
    rng = np.random.default_rng(n)
    sizes = [n, 3, n // 2]
    starts = np.concatenate([[0], np.cumsum(sizes)])
    h = rng.integers(0, 4, starts[-1]).astype(np.float64)  # many ties
    cls = rng.integers(0, 5, starts[-1])
    perm, pick = kernels.order_groups(starts, h, cls)
    for a, b in zip(starts[:-1], starts[1:], strict=True):
        want = a + np.argsort(-h[a:b], kind="stable")
        assert pick[a:b].tolist() == want.tolist()
        assert perm[a:b].tolist() == want[np.argsort(cls[want], kind="stable")].tolist()


def test_tie_test_is_exact():
    """ties.below against Fraction arithmetic at thresholds on and a rounding either side of
    the float64 similarity, features spanning 1e-13..1e13 with zeros; and prototypes equal in
    real arithmetic (weights scaled by 4) meet at exactly 1."""
    from fractions import Fraction

    from al_det.strategies import ties

    def frac_below(a, b, t):
        sa, sb = ([sum((Fraction(w) * Fraction(x) for w, x in zip(h.tolist(), col, strict=True)),
                       Fraction(0)) for col in f.T.tolist()] for h, f in (a, b))
        dot = sum(x * y for x, y in zip(sa, sb, strict=True))
        return dot < 0 or dot * dot < Fraction(t) ** 2 * sum(x * x for x in sa) * sum(
            y * y for y in sb)

    rng = np.random.default_rng(11)
    for _ in range(100):
        n, dim = rng.integers(1, 4), rng.integers(1, 6)
        f = rng.standard_normal((n, dim)) * np.exp(rng.uniform(-30, 30, (n, dim)))
        f[rng.random((n, dim)) < 0.2] = 0.0
        a = (rng.uniform(0.01, 0.69, n), f)
        b = (rng.uniform(0.01, 0.69, n), f if rng.random() < 0.5 else rng.standard_normal((n, dim)))
        sim = kernels.cosine64(ties.proto64(*a), ties.proto64(*b))
        for t in (sim, np.nextafter(sim, 2.0), np.nextafter(sim, -2.0)):
            t = float(min(max(t, 0.0), 1.0))
            assert ties._rational_below(a, b, t) == frac_below(a, b, t)
    f = rng.standard_normal((3, 64)).astype(np.float16).astype(np.float64)
    h = np.array([0.5, 0.6, 0.3])
    assert not ties.below((h, f), (4 * h, f), 1.0) and ties.below((h, f), (h, f[::-1]), 1.0)
