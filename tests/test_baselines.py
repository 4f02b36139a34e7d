"""The paper's baselines `learning_loss`, `cdal` (CDAL-CS) and `external` (docs/acquisition.md).

Hand-worked cases, one per rule of the spec, then the compiled `cdal` against a plain
transcription of the spec (written from the spec alone: Python floats, one image and one
class at a time, the KL divergence as the spec writes it) on randomised dumps with float16
and float32 probs, and the command line in file mode, errors included (exit 2, one line,
nothing written).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from al_det.acquire import run_acquire_standalone, select_images
from al_det.cli import main
from al_det.dump import read_dump, write_dump
from al_det.errors import AcquireError
from al_det.strategies import cdal as cdal_mod
from al_det.strategies.cdal import layout

CATS = [{"id": 7, "name": "cat"}, {"id": 3, "name": "dog"}]  # columns: 0 bg, 1 cat, 2 dog

# ----------------------------------------------------------------------------- reference


def ref_mixtures(dets):
    """{class column: P_{i,c}} of an image whose detections are (column, q) pairs."""
    out = {}
    for c in sorted({col for col, _ in dets}):
        qs = [q for col, q in dets if col == c]
        ws = [-sum(v * math.log(v) for v in q if v != 0) for q in qs]
        if all(w == 0 for w in ws):
            out[c] = [sum(q[m] for q in qs) / len(qs) for m in range(len(qs[0]))]
        else:
            out[c] = [sum(w * q[m] for w, q in zip(ws, qs, strict=True)) / sum(ws)
                      for m in range(len(qs[0]))]
    return out


def ref_kl(p, r):
    total = 0.0
    for a, b in zip(p, r, strict=True):
        a, b = max(a, 1e-12), max(b, 1e-12)
        total += a * math.log(a / b)
    return total


def ref_distance(mi, mj):
    """d(i, j) for a candidate i and a centre j (which has detections)."""
    if not mi:
        return 0.0
    shared = [c for c in mi if c in mj]
    if not shared:
        return math.inf
    return sum((ref_kl(mi[c], mj[c]) + ref_kl(mj[c], mi[c])) / 2 for c in shared)


def ref_cdal(cand_mix, lab_mix, b):
    centres = [m for m in lab_mix if m]
    near = [min([ref_distance(x, c) for c in centres], default=math.inf) for x in cand_mix]
    taken, keys = [], []
    for _ in range(b):
        best = max((i for i in range(len(cand_mix)) if i not in taken),
                   key=lambda i: (near[i], -i))
        taken.append(best)
        keys.append(near[best] if near[best] < math.inf else None)
        if cand_mix[best]:
            near = [min(near[i], ref_distance(cand_mix[i], cand_mix[best]))
                    for i in range(len(near))]
    return taken, keys


def reference(images, offsets, labels, probs, cats, labeled, b):
    col = {c["id"]: j + 1 for j, c in enumerate(cats)}
    lab_ids = {im["id"] for im in labeled["images"]}
    mix = [ref_mixtures([(col[int(labels[k])], [float(v) for v in probs[k]])
                         for k in range(offsets[r], offsets[r + 1])]) for r in range(len(images))]
    cand = [r for r, im in enumerate(images) if im["id"] not in lab_ids]
    lab = [r for r, im in enumerate(images) if im["id"] in lab_ids]
    taken, keys = ref_cdal([mix[r] for r in cand], [mix[r] for r in lab], b)
    return [images[cand[i]]["id"] for i in taken], keys


# ----------------------------------------------------------------------------- helpers


def image(i):
    return {"id": i, "file_name": f"{i}.jpg", "width": 10, "height": 10}


def dump_of(tmp_path, per_image, cats=CATS, dtype=np.float32, loss_pred=None, name="dump"):
    """A dump from per image lists of (category id, probs row) detections; image ids 1..N."""
    images = [image(i + 1) for i in range(len(per_image))]
    offsets = np.concatenate([[0], np.cumsum([len(d) for d in per_image])]).astype(np.int64)
    dets = [d for img in per_image for d in img]
    m = len(dets)
    labels = np.array([c for c, _ in dets], np.int64)
    probs = np.array([q for _, q in dets], np.float64).reshape(m, len(cats) + 1)
    return write_dump(tmp_path / name, images, cats, offsets, np.ones((m, 4)), np.full(m, 0.5),
                      labels, np.ones((m, 2), np.float16), probs=probs.astype(dtype),
                      loss_pred=loss_pred)


def labeled_of(*ids, cats=CATS):
    return {"images": [image(i) for i in ids], "categories": cats, "annotations": []}


def sym_kl(p, r):
    return (ref_kl(p, r) + ref_kl(r, p)) / 2


# ----------------------------------------------------------------------------- cdal by hand


def test_mixture_weights_by_hand(tmp_path):
    """Two cat detections: entropies ln 2 and 1.5 ln 2 weight them 1:1.5; one-hot dog detections
    (entropy 0 each) give the plain mean; classes ascend by column."""
    path = dump_of(tmp_path, [[(7, [0.5, 0.5, 0.0]), (3, [0.0, 0.0, 1.0]),
                               (7, [0.25, 0.25, 0.5]), (3, [0.0, 1.0, 0.0])]])
    lay = layout(read_dump(path))
    assert lay.mstart.tolist() == [0, 2] and lay.mcls.tolist() == [1, 2]
    # w1 = ln 2, w2 = 2 (0.25 ln 4) + 0.5 ln 2 = 1.5 ln 2: P = (q1 + 1.5 q2) / 2.5
    assert lay.P[0] == pytest.approx([0.35, 0.35, 0.3], rel=1e-14)
    assert lay.P[1].tolist() == [1e-12, 0.5, 0.5]  # the mean, clipped below at 1e-12
    assert lay.LP[1] == pytest.approx(np.log([1e-12, 0.5, 0.5]), rel=1e-15)


def test_kl_by_hand_with_clipping(tmp_path):
    """Candidate 2's cat mixture (0.5, 0.5, 0) against the centre's (0.25, 0.75, 0): the zero
    column counts 1e-12 vs 1e-12 (nothing). Candidate 3's (0, 0.5, 0.5) against the same:
    the clipping decides, and its distance is far larger, so it goes first."""
    path = dump_of(tmp_path, [[(7, [0.25, 0.75, 0.0])], [(7, [0.5, 0.5, 0.0])],
                              [(7, [0.0, 0.5, 0.5])]])
    sel = select_images(read_dump(path), labeled_of(1), 2, "cdal", {})
    near = (0.5 * math.log(0.5 / 0.25) + 0.5 * math.log(0.5 / 0.75)
            + 0.25 * math.log(0.25 / 0.5) + 0.75 * math.log(0.75 / 0.5)) / 2
    far_kl1 = (1e-12 * math.log(1e-12 / 0.25) + 0.5 * math.log(0.5 / 0.75)
               + 0.5 * math.log(0.5 / 1e-12))
    far_kl2 = (0.25 * math.log(0.25 / 1e-12) + 0.75 * math.log(0.75 / 0.5)
               + 1e-12 * math.log(1e-12 / 0.5))
    assert sel.image_ids == (3, 2)
    assert sel.keys[0] == pytest.approx((far_kl1 + far_kl2) / 2, rel=1e-12)
    # image 2 once 3 is a centre too: still nearer to 1
    assert sel.keys[1] == pytest.approx(near, rel=1e-12)
    assert sel.reasons == ("main", "main")


def test_sum_over_shared_classes_only(tmp_path):
    a, b = [0.125, 0.625, 0.25], [0.375, 0.25, 0.375]
    c, e = [0.25, 0.25, 0.5], [0.5, 0.125, 0.375]
    path = dump_of(tmp_path, [[(7, a), (3, c)], [(7, b), (3, e)], [(7, b)]])
    sel = select_images(read_dump(path), labeled_of(1), 2, "cdal", {})
    assert sel.image_ids == (2, 3)
    assert sel.keys[0] == pytest.approx(sym_kl(b, a) + sym_kl(e, c), rel=1e-12)
    assert sel.keys[1] == 0.0  # image 3's cat mixture equals image 2's: 0, and dog not shared


def test_no_shared_class_is_infinitely_far(tmp_path):
    """Image 3 shows only dog, which no centre shows: +inf, taken first (key None), even
    before image 2, whose cat mixture is far from the centre's."""
    path = dump_of(tmp_path, [[(7, [0.0, 1.0, 0.0])], [(7, [0.9, 0.05, 0.05])],
                              [(3, [0.3, 0.3, 0.4])]])
    sel = select_images(read_dump(path), labeled_of(1), 2, "cdal", {})
    assert sel.image_ids == (3, 2)
    assert sel.keys[0] is None and sel.keys[1] > 1


def test_candidates_without_detections_last_and_ties_by_row_order(tmp_path):
    """Images 2 and 4 have no detection (distance 0 from any centre), image 3 duplicates the
    centre (distance 0 too): the zeros come after image 5, in dump row order."""
    q = [0.2, 0.7, 0.1]
    path = dump_of(tmp_path, [[(7, q)], [], [(7, q)], [], [(7, [0.6, 0.2, 0.2])]])
    sel = select_images(read_dump(path), labeled_of(1), 4, "cdal", {})
    assert sel.image_ids == (5, 2, 3, 4)
    assert sel.keys[1:] == (0.0, 0.0, 0.0)


def test_labeled_images_without_detections_are_no_centres(tmp_path):
    """The only labeled image has no detection: no centre, so every candidate is at +inf and
    the first in row order (image 2, no detection: no centre either) is taken, then image 3.
    Had image 1 been a centre, image 2 would be at 0 and last."""
    a, b = [0.625, 0.25, 0.125], [0.25, 0.5, 0.25]
    path = dump_of(tmp_path, [[], [], [(7, a)], [(7, b)]])
    sel = select_images(read_dump(path), labeled_of(1), 3, "cdal", {})
    assert sel.image_ids == (2, 3, 4) and sel.keys[:2] == (None, None)
    assert sel.keys[2] == pytest.approx(sym_kl(b, a), rel=1e-12)
    path = dump_of(tmp_path, [[(7, [0.3, 0.3, 0.4])], [], [(7, [0.2, 0.7, 0.1])]], name="d2")
    assert select_images(read_dump(path), labeled_of(1), 2, "cdal", {}).image_ids == (3, 2)


def test_ties_at_infinity_by_row_order(tmp_path):
    """No labeled image: all at +inf; row order decides, then the first pick is a centre."""
    a, b = [0.125, 0.75, 0.125], [0.5, 0.25, 0.25]
    path = dump_of(tmp_path, [[(3, a)], [(7, a)], [(7, b)], [(3, b)]])
    sel = select_images(read_dump(path), labeled_of(), 4, "cdal", {})
    # 1 (dog a) then 2 (cat a) are centres; 3 and 4 then tie exactly: 3 first
    assert sel.image_ids == (1, 2, 3, 4) and sel.keys[:2] == (None, None)
    assert sel.keys[2] == sel.keys[3] == pytest.approx(sym_kl(a, b), rel=1e-12)


def test_cdal_errors(tmp_path):
    path = dump_of(tmp_path, [[(7, [0.2, 0.7, 0.1])], []])
    (path / "probs.npy").unlink()
    with pytest.raises(AcquireError, match=r"probs.npy.*infer.probs: true"):
        select_images(read_dump(path), labeled_of(1), 1, "cdal", {})
    path = dump_of(tmp_path, [[(7, [0.2, 0.7, 0.1])], []], name="d2")
    with pytest.raises(AcquireError, match=r"labeled image 99 \(and 0 more\) not in the dump"):
        select_images(read_dump(path), labeled_of(99), 1, "cdal", {})


# ----------------------------------------------------------------------------- cdal vs reference


def random_case(seed, tmp_path, dtype):
    rng = np.random.default_rng(seed)
    n_img, n_cls = int(rng.integers(15, 60)), int(rng.integers(1, 6))
    cat_ids = rng.choice(np.arange(1, 50), n_cls, replace=False).tolist()  # not sorted
    cats = [{"id": int(c), "name": f"c{c}"} for c in cat_ids]
    counts = rng.integers(0, 6, n_img)
    counts[rng.random(n_img) < 0.15] = 0
    offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
    m = int(offsets[-1])
    labels = np.array(rng.choice(cat_ids, m), np.int64) if m else np.zeros(0, np.int64)
    probs = rng.dirichlet(np.full(n_cls + 1, rng.choice([0.2, 1.0, 5.0])), m)
    probs[rng.random(m) < 0.2] = 0.0  # sparse rows: zero columns, clipping at 1e-12
    one_hot = rng.random(m) < 0.15
    probs[one_hot] = np.eye(n_cls + 1)[rng.integers(0, n_cls + 1, one_hot.sum())]
    probs[~one_hot & (probs.sum(1) == 0), 0] = 1.0
    for k in range(m):  # some rows with zeros but several classes
        if rng.random() < 0.2 and not one_hot[k]:
            probs[k, rng.integers(0, n_cls + 1)] = 0.0
    zero = probs.sum(1) == 0
    probs[zero, 0] = 1.0
    probs /= probs.sum(1, keepdims=True)
    images = [{"id": 9000 - 3 * i, "file_name": f"{i}.jpg", "width": 8, "height": 8}
              for i in range(n_img)]
    # duplicate images: the same detections as an earlier image (distance 0)
    for r in range(1, n_img):
        if rng.random() < 0.1 and counts[r] == counts[r - 1] and counts[r]:
            a, b = offsets[r - 1], offsets[r]
            labels[b:b + counts[r]] = labels[a:a + counts[r]]
            probs[b:b + counts[r]] = probs[a:a + counts[r]]
    path = write_dump(tmp_path / f"d{seed}", images, cats, offsets, np.ones((m, 4)),
                      rng.random(m), labels, rng.random((m, 3)).astype(np.float16),
                      probs=probs.astype(dtype))
    labeled = labeled_of(cats=cats)
    labeled["images"] = [im for im in images if rng.random() < [0.0, 0.3, 0.6][seed % 3]]
    dump = read_dump(path)
    return dump, (images, offsets, labels, np.load(path / "probs.npy"), cats), labeled, rng


@pytest.mark.parametrize("seed", range(18))
def test_cdal_matches_reference(seed, tmp_path, monkeypatch):
    monkeypatch.setattr(cdal_mod, "BLOCK", [3, 1024][seed % 2])
    if seed % 3 == 0:
        monkeypatch.setattr(cdal_mod, "CHUNK_BYTES", 40)  # many probs chunks
    dtype = np.float16 if seed % 2 == 0 else np.float32
    dump, arrays, labeled, rng = random_case(seed, tmp_path, dtype)
    n_cand = dump.num_images - len(labeled["images"])
    for b in sorted({1, int(rng.integers(1, n_cand + 1)), n_cand}):
        sel = select_images(dump, labeled, b, "cdal", {})
        want_ids, want_keys = reference(*arrays, labeled, b)
        assert list(sel.image_ids) == want_ids, (seed, b)
        for got, want in zip(sel.keys, want_keys, strict=True):
            assert (got is None) == (want is None)
            if want is not None:
                assert got == pytest.approx(want, rel=1e-9, abs=1e-12)


def test_cdal_standalone_matches_reference(tmp_path):
    dump, arrays, labeled, _ = random_case(101, tmp_path, np.float16)
    lab = tmp_path / "labeled.json"
    lab.write_text(json.dumps(labeled))
    sel = run_acquire_standalone(dump.path, lab, 5, "cdal", tmp_path / "o.json", {})
    assert list(sel.image_ids) == reference(*arrays, labeled, 5)[0]


# ----------------------------------------------------------------------------- learning_loss


def test_learning_loss_top_b_ties_by_row_order(tmp_path):
    loss = [9.0, 0.5, 2.0, 0.5, 2.0, 1.0]
    path = dump_of(tmp_path, [[]] * 6, loss_pred=loss)
    sel = select_images(read_dump(path), labeled_of(1), 4, "learning_loss", {})
    assert sel.image_ids == (3, 5, 6, 2) and sel.keys == (2.0, 2.0, 1.0, 0.5)


def test_learning_loss_needs_loss_pred(tmp_path):
    path = dump_of(tmp_path, [[]] * 3)
    with pytest.raises(AcquireError, match=r"loss_pred.npy.*model.loss_prediction.enabled: true"):
        select_images(read_dump(path), labeled_of(1), 1, "learning_loss", {})


# ----------------------------------------------------------------------------- external


def scores_file(tmp_path, text, name="s.csv"):
    p = tmp_path / name
    p.write_text(text)
    return str(p)


def test_external_top_b_ties_by_row_order(tmp_path):
    path = dump_of(tmp_path, [[]] * 5)
    s = scores_file(tmp_path, "image_id,score\n5,0.5\n2,0.25\n3,0.5\n\n4,-1e3\n")
    sel = select_images(read_dump(path), labeled_of(1), 3, "external", {"scores": s})
    assert sel.image_ids == (3, 5, 2) and sel.keys == (0.5, 0.5, 0.25)
    assert sel.params == {"scores": s}


@pytest.mark.parametrize("text, match", [
    ("id,score\n2,1\n", r"line 1: the header must be 'image_id,score'"),
    ("", r"line 1: the header must be 'image_id,score'"),
    ("image_id,score\n2,1\n3,1,4\n", r"line 3: expected 2 fields"),
    ("image_id,score\n2,1\n3,high\n4,1\n", r"line 3: score 'high' of image '3' is not a number"),
    ("image_id,score\n2,1\n3,nan\n4,1\n", r"line 3: score of image '3' is nan; scores must be"),
    ("image_id,score\n2,inf\n3,1\n4,1\n", r"line 2: score of image '2' is inf"),
    ("image_id,score\n2,1\n3,1\n2,1\n4,1\n", r"line 4: image id '2' repeated \(first on line 2\)"),
    ("image_id,score\n2,1\n3,1\n4,1\n77,1\n", r"line 5: image id '77' is not an image of"),
    ("image_id,score\n2,1\n1,1\n3,1\n4,1\n", r"line 3: image '1' is in the labeled set"),
    ("image_id,score\n2,1\n4,1\n", r"no score for candidate image 3 \(and 0 more\)"),
    ("image_id,score\n,1\n", r"line 2: empty image id"),
])
def test_external_errors_name_file_and_line(tmp_path, text, match):
    path = dump_of(tmp_path, [[]] * 4)
    s = scores_file(tmp_path, text)
    with pytest.raises(AcquireError, match=match) as err:
        select_images(read_dump(path), labeled_of(1), 1, "external", {"scores": s})
    assert str(err.value).startswith(s)


def test_external_parameter_errors(tmp_path):
    path = dump_of(tmp_path, [[]] * 2)
    with pytest.raises(AcquireError, match="acquire.scores: strategy 'external' needs a CSV"):
        select_images(read_dump(path), labeled_of(1), 1, "external", {})
    with pytest.raises(AcquireError, match="acquire.scores: must be the path of a CSV file"):
        select_images(read_dump(path), labeled_of(1), 1, "external", {"scores": 3})
    with pytest.raises(AcquireError, match="nope.csv: scores file not found"):
        select_images(read_dump(path), labeled_of(1), 1, "external",
                      {"scores": str(tmp_path / "nope.csv")})


# ----------------------------------------------------------------------------- command line


def cli_inputs(tmp_path: Path):
    q = [0.2, 0.7, 0.1]
    dets = dump_of(tmp_path, [[(7, q)], [(7, [0.6, 0.2, 0.2])], [], [(3, q)]],
                   loss_pred=[0.0, 1.0, 3.0, 2.0])
    labeled = tmp_path / "labeled.json"
    labeled.write_text(json.dumps(labeled_of(1)))
    return dets, labeled


@pytest.mark.parametrize("strategy, extra, want", [
    ("cdal", [], [4, 2, 3]),
    ("learning_loss", [], [3, 4, 2]),
    ("external", ["--set", "acquire.scores=SCORES"], [2, 4, 3]),
])
def test_cli_file_mode(tmp_path, strategy, extra, want):
    dets, labeled = cli_inputs(tmp_path)
    s = scores_file(tmp_path, "image_id,score\n2,3\n3,1\n4,2\n")
    out = tmp_path / "next.json"
    args = ["acquire", "--dets", str(dets), "--labeled", str(labeled), "--budget", "3",
            "--strategy", strategy, "--output", str(out)] + [a.replace("SCORES", s) for a in extra]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    assert [im["id"] for im in json.loads(out.read_text())["images"]] == want
    report = json.loads((tmp_path / "next.selection.json").read_text())
    assert report["strategy"] == strategy


def test_cli_errors_exit_2_one_line_nothing_written(tmp_path):
    dets, labeled = cli_inputs(tmp_path)
    bad = scores_file(tmp_path, "image_id,score\n2,3\n3,nan\n4,2\n")
    out = tmp_path / "next.json"
    base = ["acquire", "--dets", str(dets), "--labeled", str(labeled), "--budget", "2",
            "--output", str(out)]
    no_probs = tmp_path / "noprobs"
    no_probs.mkdir()
    for f in dets.iterdir():
        if f.name not in ("probs.npy", "loss_pred.npy"):
            (no_probs / f.name).write_bytes(f.read_bytes())
    cases = [
        (base + ["--strategy", "external", "--set", f"acquire.scores={bad}"], "line 3"),
        (base + ["--strategy", "external"], "acquire.scores"),
        (base + ["--strategy", "external", "--set", "acquire.scores=missing.csv"], "not found"),
        ([a if a != str(dets) else str(no_probs) for a in base] + ["--strategy", "cdal"],
         "infer.probs: true"),
        ([a if a != str(dets) else str(no_probs) for a in base] + ["--strategy", "learning_loss"],
         "model.loss_prediction.enabled: true"),
        (base + ["--strategy", "cdl"], "did you mean 'cdal'"),
    ]
    for args, message in cases:
        result = CliRunner().invoke(main, args)
        assert result.exit_code == 2, (args, result.output)
        assert message in result.output and result.output.count("\n") == 1, result.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dump", "labeled.json", "noprobs",
                                                          "s.csv"]
