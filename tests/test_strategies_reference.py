"""The optimised strategies against a plain transcription of docs/acquisition.md.

The reference below is written from the spec alone: pure Python loops and floats, one image
and one detection at a time, no shared code with al_det.strategies. Randomised dumps (seeded)
cover every strategy, both DivProto switches, both ``intra_missing`` modes, float16 and float32
features, images with no detection, duplicate and zero features, and small chunk/block sizes
so that the streaming and blocked code paths are crossed many times.
"""

from __future__ import annotations

import itertools
import json
import math

import numpy as np
import pytest

from al_det.acquire import run_acquire_standalone, select_images
from al_det.dump import read_dump, write_dump
from al_det.strategies import divproto as divproto_mod
from al_det.strategies import summary as summary_mod

# ----------------------------------------------------------------------------- reference


def ref_h(p):
    p = min(max(float(p), 1e-6), 1 - 1e-6)
    return -p * math.log(p) - (1 - p) * math.log(1 - p)


def ref_sim(a, b):
    dot = sum(x * y for x, y in zip(a, b, strict=True))
    na = math.sqrt(sum(x * x for x in a))
    nb = math.sqrt(sum(x * x for x in b))
    return dot / (max(na, 1e-12) * max(nb, 1e-12))


def ref_basic(dets):
    return sum(ref_h(p) for _, p, _ in dets)


def ref_enms(dets, t):
    remaining = list(range(len(dets)))
    e = 0.0
    while remaining:
        pick = max(remaining, key=lambda k: (ref_h(dets[k][1]), -k))
        remaining.remove(pick)
        e += ref_h(dets[pick][1])
        remaining = [j for j in remaining
                     if not (dets[j][0] == dets[pick][0]
                             and ref_sim(dets[j][2], dets[pick][2]) > t)]
    return e


def ref_protos(dets):
    out = {}
    for c in sorted({d[0] for d in dets}):
        mine = [d for d in dets if d[0] == c]
        hs = [ref_h(p) for _, p, _ in mine]
        dim = len(mine[0][2])
        pairs = list(zip(hs, [f for _, _, f in mine], strict=True))
        out[c] = [sum(h * f[k] for h, f in pairs) / sum(hs) for k in range(dim)]
    return out


def ref_presence(dets, c):
    return max([float(p) for cc, p, _ in dets if cc == c], default=0.0)


def ref_minority(labeled, alpha, beta, b):
    counts = {c["id"]: 0 for c in labeled["categories"]}
    for a in labeled["annotations"]:
        if a.get("iscrowd", 0) != 1:
            counts[a["category_id"]] += 1
    ranked = sorted(counts, key=lambda c: (counts[c], c))
    n = max(1, math.floor(round(alpha * len(ranked), 9)))
    q = max(1, math.floor(round(beta * b / n, 9)))
    return {c: q for c in ranked[:n]}


def ref_divproto(cands, keys, labeled, b, p):
    order = sorted(range(len(cands)), key=lambda i: (-keys[i], i))
    protos = [ref_protos(dets) for _, dets in cands]
    minority = ref_minority(labeled, p["alpha"], p["beta"], b) if p["inter"] else {}
    selected = []
    for i in order:
        if len(selected) >= b or (p["inter"] and not minority):
            break
        dets = cands[i][1]
        if p["intra"]:
            per_class = []
            for c, pr in protos[i].items():
                sims = [ref_sim(protos[j][c], pr) for j in selected if c in protos[j]]
                if sims or p["intra_missing"] == "novel":
                    per_class.append(max(sims) if sims else -math.inf)
            mg = min(per_class) if per_class else -math.inf
            if not mg < p["t_intra"]:
                continue
        if p["inter"]:
            mp = max([ref_presence(dets, c) for c in minority], default=0.0)
            if not mp > p["t_inter"]:
                continue
        selected.append(i)
        if p["inter"]:
            for c in list(minority):
                if ref_presence(dets, c) > p["t_inter"]:
                    minority[c] -= 1
                    if minority[c] == 0:
                        del minority[c]
    fill = [i for i in order if i not in selected][: b - len(selected)]
    return selected + fill, ["main"] * len(selected) + ["fill"] * len(fill)


def ref_coreset(cand_feats, lab_feats, b):
    def d2(x, y):
        return sum((u - v) ** 2 for u, v in zip(x, y, strict=True))

    near = [min([d2(x, c) for c in lab_feats], default=math.inf) for x in cand_feats]
    taken = []
    for _ in range(b):
        left = [i for i in range(len(cand_feats)) if i not in taken]
        best = max(left, key=lambda i: (near[i], -i))
        taken.append(best)
        near = [min(near[i], d2(cand_feats[i], cand_feats[best])) for i in range(len(near))]
    return taken


def reference(dump_arrays, labeled, b, strategy, p):
    """Selected image ids and reasons according to the spec."""
    images, offsets, scores, labels, feats, img_feats = dump_arrays
    lab_ids = {im["id"] for im in labeled["images"]}
    cands = []
    for r, im in enumerate(images):
        if im["id"] in lab_ids:
            continue
        dets = [(int(labels[k]), float(scores[k]), [float(v) for v in feats[k]])
                for k in range(offsets[r], offsets[r + 1])]
        cands.append((r, dets))
    ids = [images[r]["id"] for r, _ in cands]
    if strategy == "random":
        pick = np.random.default_rng(p["seed"]).choice(len(cands), size=b, replace=False)
        return [ids[i] for i in pick], ["main"] * b
    if strategy == "coreset":
        row_of = {im["id"]: r for r, im in enumerate(images)}
        labf = [[float(v) for v in img_feats[row_of[i]]] for i in sorted(lab_ids, key=row_of.get)]
        pick = ref_coreset([[float(v) for v in img_feats[r]] for r, _ in cands], labf, b)
        return [ids[i] for i in pick], ["main"] * b
    if strategy in ("entropy", "divproto"):
        keys = [ref_basic(d) for _, d in cands]
    else:
        keys = [ref_enms(d, p["t_enms"]) for _, d in cands]
    if strategy in ("entropy", "enms"):
        order = sorted(range(len(cands)), key=lambda i: (-keys[i], i))[:b]
        return [ids[i] for i in order], ["main"] * b
    pick, reasons = ref_divproto(cands, keys, labeled, b, p)
    return [ids[i] for i in pick], reasons


# ----------------------------------------------------------------------------- data


def random_case(seed, tmp_path, dtype):
    """A small random dump + labeled set with clustered features, so that similarities
    spread over [-1, 1] and thresholds both accept and reject."""
    rng = np.random.default_rng(seed)
    n_img, n_cls, dim = int(rng.integers(20, 70)), int(rng.integers(2, 7)), int(rng.integers(4, 12))
    cat_ids = sorted(rng.choice(np.arange(1, 100), n_cls, replace=False).tolist())
    cats = [{"id": c, "name": f"c{c}"} for c in cat_ids]
    centres = {c: rng.standard_normal(dim) for c in cat_ids}
    counts = rng.integers(0, 9, n_img)
    counts[rng.random(n_img) < 0.15] = 0
    offsets = np.concatenate([[0], np.cumsum(counts)])
    m = int(offsets[-1])
    labels = rng.choice(cat_ids, m)
    spread = rng.uniform(0.2, 2.0, m)[:, None]
    feats = np.stack([centres[c] for c in labels]) if m else np.zeros((0, dim))
    feats = feats + spread * rng.standard_normal((m, dim))
    scores = rng.random(m).astype(np.float32)
    scores[rng.random(m) < 0.05] = rng.choice([0.0, 1.0, 0.5, 0.3])  # exact ties / clip edges
    if m > 3:  # duplicated detections and a zero feature
        feats[1] = feats[0]
        labels[1] = labels[0]
        feats[2] = 0.0
    images = [{"id": 5000 - 7 * i, "file_name": f"{i}.jpg", "width": 64, "height": 48}
              for i in range(n_img)]
    img_feats = rng.standard_normal((n_img, 3))
    write_dump(tmp_path / f"d{seed}", images, cats, offsets, rng.random((m, 4)) * 10, scores,
               labels, feats.astype(dtype), image_features=img_feats)
    lab_imgs = [im for im in images if rng.random() < 0.3]
    anns = []
    for im in lab_imgs:
        for _ in range(int(rng.integers(0, 4))):
            c = int(rng.choice(cat_ids[: max(1, n_cls - 1)]))  # the last class: count 0
            anns.append({"id": len(anns) + 1, "image_id": im["id"], "category_id": c,
                         "iscrowd": int(rng.random() < 0.2)})
    labeled = {"images": lab_imgs, "categories": cats, "annotations": anns}
    dump = read_dump(tmp_path / f"d{seed}")
    arrays = (images, offsets, np.load(dump.path / "scores.npy"), labels,
              np.load(dump.path / "features.npy"), np.load(dump.path / "image_features.npy"))
    n_cand = n_img - len(lab_imgs)
    return dump, arrays, labeled, n_cand, rng


def random_params(rng):
    return {
        "t_enms": float(rng.choice([0.3, 0.5, 0.8])),
        "t_intra": float(rng.choice([0.4, 0.7, 0.9])),
        "t_inter": float(rng.choice([0.2, 0.3, 0.6])),
        "alpha": float(rng.choice([0.2, 0.5, 1.0])),
        "beta": float(rng.choice([0.3, 0.75, 1.0])),
        "seed": int(rng.integers(0, 1000)),
    }


# ----------------------------------------------------------------------------- tests

SWITCHES = list(itertools.product([True, False], [True, False], ["novel", "skip"]))


@pytest.mark.parametrize("seed", range(24))
def test_matches_reference(seed, tmp_path, monkeypatch):
    monkeypatch.setattr(summary_mod, "CHUNK_DETS", [7, 40, 16384][seed % 3])
    monkeypatch.setattr(divproto_mod, "BLOCK", [3, 512][seed % 2])
    dtype = np.float16 if seed % 2 == 0 else np.float32
    dump, arrays, labeled, n_cand, rng = random_case(seed, tmp_path, dtype)
    if n_cand == 0:
        pytest.skip("no candidate")
    for strategy in ["random", "entropy", "enms", "coreset"]:
        p = random_params(rng)
        b = int(rng.integers(1, n_cand + 1))
        sel = select_images(dump, labeled, b, strategy, p)
        want_ids, want_reasons = reference(arrays, labeled, b, strategy, p)
        assert list(sel.image_ids) == want_ids, strategy
        assert list(sel.reasons) == want_reasons
    for strategy in ["divproto", "enms_divproto"]:
        for intra, inter, missing in SWITCHES:
            p = dict(random_params(rng), intra=intra, inter=inter, intra_missing=missing)
            b = int(rng.integers(1, n_cand + 1))
            sel = select_images(dump, labeled, b, strategy, p)
            want_ids, want_reasons = reference(arrays, labeled, b, strategy, p)
            assert list(sel.image_ids) == want_ids, (strategy, p, b)
            assert list(sel.reasons) == want_reasons, (strategy, p, b)


@pytest.mark.parametrize("seed", range(4))
def test_keys_match_reference(seed, tmp_path):
    dump, arrays, labeled, n_cand, rng = random_case(100 + seed, tmp_path, np.float16)
    images, offsets, scores, labels, feats, _ = arrays
    sel = select_images(dump, labeled, n_cand, "enms", {"t_enms": 0.5})
    row_of = {im["id"]: r for r, im in enumerate(images)}
    for iid, key in zip(sel.image_ids, sel.keys, strict=True):
        r = row_of[iid]
        dets = [(int(labels[k]), float(scores[k]), [float(v) for v in feats[k]])
                for k in range(offsets[r], offsets[r + 1])]
        assert key == pytest.approx(ref_enms(dets, 0.5), rel=1e-12, abs=1e-15)


@pytest.mark.parametrize("seed", range(6))
def test_standalone_pass_ahead_matches_reference(seed, tmp_path, monkeypatch):
    """`al-det acquire` starts the streaming pass before reading the JSON files and restricts
    it to the candidates afterwards: the same selections as the reference."""
    monkeypatch.setattr(summary_mod, "CHUNK_DETS", [7, 16384][seed % 2])
    dump, arrays, labeled, n_cand, rng = random_case(200 + seed, tmp_path, np.float16)
    if n_cand == 0:
        pytest.skip("no candidate")
    lab_path = tmp_path / "labeled.json"
    lab_path.write_text(json.dumps(labeled))
    for strategy in ["enms", "divproto", "enms_divproto"]:
        intra, inter, missing = SWITCHES[int(rng.integers(len(SWITCHES)))]
        p = dict(random_params(rng), intra=intra, inter=inter, intra_missing=missing)
        b = int(rng.integers(1, n_cand + 1))
        sel = run_acquire_standalone(dump.path, lab_path, b, strategy, tmp_path / "o.json", p)
        want_ids, want_reasons = reference(arrays, labeled, b, strategy, p)
        assert (list(sel.image_ids), list(sel.reasons)) == (want_ids, want_reasons), strategy
