"""Tests for al_det.synthetic: determinism, COCO validity and the dataset's intended structure."""

from __future__ import annotations

import contextlib
import io
import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from pycocotools.coco import COCO

from al_det.synthetic import PROFILES, generate

N_POOL, N_TEST = 120, 40


@pytest.fixture(scope="module", params=sorted(PROFILES))
def dataset(request: pytest.FixtureRequest,
            tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    paths = generate(tmp_path_factory.mktemp("synth"), n_pool=N_POOL, n_test=N_TEST, seed=3,
                     profile=request.param)
    return {**paths, "profile": request.param}


def _load(path: Path) -> COCO:
    with contextlib.redirect_stdout(io.StringIO()):
        return COCO(str(path))


def _tree_bytes(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file()}


def test_returns_paths(dataset: dict[str, Path]) -> None:
    assert set(dataset) == {"pool", "test", "images", "profile"}
    assert dataset["pool"].is_file() and dataset["test"].is_file() and dataset["images"].is_dir()
    assert not list(dataset["images"].parent.rglob(".tmp-*"))


def test_deterministic(tmp_path: Path) -> None:
    a = generate(tmp_path / "a", n_pool=30, n_test=10, seed=5)
    b = generate(tmp_path / "b", n_pool=30, n_test=10, seed=5)
    c = generate(tmp_path / "c", n_pool=30, n_test=10, seed=6)
    assert _tree_bytes(a["pool"].parent) == _tree_bytes(b["pool"].parent)
    assert a["pool"].read_bytes() != c["pool"].read_bytes()


def test_not_regenerated_when_complete(tmp_path: Path) -> None:
    paths = generate(tmp_path, n_pool=10, n_test=5)
    mtime = paths["pool"].stat().st_mtime_ns
    generate(tmp_path, n_pool=10, n_test=5)
    assert paths["pool"].stat().st_mtime_ns == mtime
    generate(tmp_path, n_pool=12, n_test=5)  # other parameters: regenerated
    assert len(json.loads(paths["pool"].read_text())["images"]) == 12


def test_valid_coco(dataset: dict[str, Path]) -> None:
    pool, test = _load(dataset["pool"]), _load(dataset["test"])
    assert len(pool.getImgIds()) == N_POOL and len(test.getImgIds()) == N_TEST
    assert not set(pool.getImgIds()) & set(test.getImgIds())
    assert not set(pool.getAnnIds()) & set(test.getAnnIds())
    for coco in (pool, test):
        data = coco.dataset
        assert len({a["id"] for a in data["annotations"]}) == len(data["annotations"])
        cat_ids = {c["id"] for c in data["categories"]}
        for img in data["images"]:
            with Image.open(dataset["images"] / img["file_name"]) as im:
                assert im.size == (img["width"], img["height"]) and im.mode == "RGB"
        for ann in data["annotations"]:
            assert ann["category_id"] in cat_ids and ann["iscrowd"] == 0
            assert 0 < ann["area"] <= ann["bbox"][2] * ann["bbox"][3]


def test_category_ids_non_contiguous(dataset: dict[str, Path]) -> None:
    cats = json.loads(dataset["pool"].read_text())["categories"]
    ids = sorted(c["id"] for c in cats)
    assert len(ids) == PROFILES[dataset["profile"]].classes
    assert ids != list(range(ids[0], ids[0] + len(ids)))
    assert len({c["name"] for c in cats}) == len(cats) and all(c["supercategory"] for c in cats)
    assert cats == json.loads(dataset["test"].read_text())["categories"]


def test_boxes_inside_and_sized(dataset: dict[str, Path]) -> None:
    for split in ("pool", "test"):
        data = json.loads(dataset[split].read_text())
        sizes = {i["id"]: (i["width"], i["height"]) for i in data["images"]}
        for ann in data["annotations"]:
            x, y, w, h = ann["bbox"]
            width, height = sizes[ann["image_id"]]
            assert x >= 0 and y >= 0 and x + w <= width and y + h <= height
            assert 5 <= max(w, h) <= 55


def _isolated(ann: dict, anns: list[dict], margin: int = 3) -> bool:
    x, y, w, h = ann["bbox"]
    return all(b["bbox"][0] > x + w + margin or b["bbox"][0] + b["bbox"][2] < x - margin
               or b["bbox"][1] > y + h + margin or b["bbox"][1] + b["bbox"][3] < y - margin
               for b in anns if b is not ann)


def test_boxes_tight(dataset: dict[str, Path]) -> None:
    """Around isolated objects, saturated (object) pixels span the annotated box within 1 px."""
    data = json.loads(dataset["test"].read_text())
    by_image: dict[int, list[dict]] = {}
    for ann in data["annotations"]:
        by_image.setdefault(ann["image_id"], []).append(ann)
    results = []
    for img in data["images"]:
        pix = np.asarray(Image.open(dataset["images"] / img["file_name"])).astype(int)
        saturated = pix.max(axis=-1) - pix.min(axis=-1) > 100
        for ann in by_image.get(img["id"], []):
            if not _isolated(ann, by_image[img["id"]]):
                continue
            x, y, w, h = (int(v) for v in ann["bbox"])
            x0, y0 = max(x - 3, 0), max(y - 3, 0)
            ys, xs = np.nonzero(saturated[y0:y + h + 3, x0:x + w + 3])
            if xs.size == 0:
                results.append(False)
                continue
            found = (x0 + xs.min(), y0 + ys.min(), x0 + xs.max() + 1, y0 + ys.max() + 1)
            results.append(np.abs(np.subtract(found, (x, y, x + w, y + h))).max() <= 1)
    assert len(results) > 20 and np.mean(results) > 0.9, np.mean(results)


def test_long_tailed_pool_balanced_test(dataset: dict[str, Path]) -> None:
    pool = Counter(a["category_id"] for a in json.loads(dataset["pool"].read_text())
                   ["annotations"])
    test = Counter(a["category_id"] for a in json.loads(dataset["test"].read_text())
                   ["annotations"])
    classes = PROFILES[dataset["profile"]].classes
    assert len(pool) == classes and len(test) == classes
    assert max(pool.values()) >= 4 * min(pool.values())
    assert max(test.values()) <= 2.5 * min(test.values())
    # the most common pool class is the first listed, as the profile's weights say
    assert max(pool, key=pool.__getitem__) == json.loads(dataset["pool"].read_text())[
        "categories"][0]["id"]


def test_counts_and_empty_images(dataset: dict[str, Path]) -> None:
    data = json.loads(dataset["pool"].read_text())
    per_image = Counter(a["image_id"] for a in data["annotations"])
    empty = [i for i in data["images"] if i["id"] not in per_image]
    assert 0 < len(empty) < 0.3 * N_POOL
    profile = PROFILES[dataset["profile"]]
    most = max(len(profile.count_probs) - 1, profile.crowd_size[1] + 2)  # a crowd and 0-2 more
    assert len(profile.count_probs) - 1 <= max(per_image.values()) <= most


def test_near_duplicates(dataset: dict[str, Path]) -> None:
    data = json.loads(dataset["pool"].read_text())
    images = {i["id"]: i for i in data["images"]}
    by_image: dict[int, list[dict]] = {}
    for ann in data["annotations"]:
        by_image.setdefault(ann["image_id"], []).append(ann)
    dups = [i for i in data["images"] if "near_duplicate_of" in i]
    assert len(dups) == round(PROFILES[dataset["profile"]].dup_fraction * N_POOL)
    for dup in dups:
        base = images[dup["near_duplicate_of"]]
        assert "near_duplicate_of" not in base
        a, b = by_image.get(dup["id"], []), by_image.get(base["id"], [])
        assert [x["category_id"] for x in a] == [x["category_id"] for x in b]
        shifts = {(x["bbox"][0] - y["bbox"][0], x["bbox"][1] - y["bbox"][1])
                  for x, y in zip(a, b, strict=True)}
        assert len(shifts) <= 1 and all(abs(dx) <= 3 and abs(dy) <= 3 for dx, dy in shifts)
        pa = np.asarray(Image.open(dataset["images"] / dup["file_name"]), dtype=float)
        pb = np.asarray(Image.open(dataset["images"] / base["file_name"]), dtype=float)
        assert 0 < np.abs(pa - pb).mean() < 40


def test_coco_like_duplicates_cluster_on_busy_scenes(tmp_path: Path) -> None:
    """coco_like copies busy scenes, several times each; shapes copies scenes uniformly."""
    def stats(profile: str) -> tuple[float, float, int]:
        data = json.loads(generate(tmp_path / profile, n_pool=300, n_test=10, seed=1,
                                   profile=profile)["pool"].read_text())
        per_image = Counter(a["image_id"] for a in data["annotations"])
        bases = [i["near_duplicate_of"] for i in data["images"] if "near_duplicate_of" in i]
        originals = [i["id"] for i in data["images"] if "near_duplicate_of" not in i]
        copied = np.mean([per_image[b] for b in bases])
        return copied, np.mean([per_image[i] for i in originals]), max(Counter(bases).values())

    busy_copied, busy_all, busy_copies = stats("coco_like")
    assert busy_copied > busy_all + 1.0 and busy_copies >= 3
    flat_copied, flat_all, _ = stats("shapes")
    assert abs(flat_copied - flat_all) < 0.6


def test_object_sizes_follow_profile(dataset: dict[str, Path]) -> None:
    sides = [max(a["bbox"][2:]) for a in json.loads(dataset["pool"].read_text())["annotations"]]
    profile = PROFILES[dataset["profile"]]
    assert min(sides) <= profile.min_size + 1 and max(sides) <= profile.max_size


def test_profiles_listed_for_the_config() -> None:
    from al_det.config import CHOICES

    assert set(CHOICES["data.synthetic.profile"]) == set(PROFILES)


def test_crowds_are_one_class_of_one_size(tmp_path: Path) -> None:
    """coco_like: about crowd_fraction of the original scenes hold 6-10 look-alike objects."""
    profile = PROFILES["coco_like"]
    data = json.loads(generate(tmp_path, n_pool=200, n_test=10, seed=2,
                               profile="coco_like")["pool"].read_text())
    by_image: dict[int, list[dict]] = {}
    for ann in data["annotations"]:
        by_image.setdefault(ann["image_id"], []).append(ann)
    originals = [i["id"] for i in data["images"] if "near_duplicate_of" not in i]
    crowds = 0
    for image_id in originals:
        anns = by_image.get(image_id, [])
        top, n = Counter(a["category_id"] for a in anns).most_common(1)[0] if anns else (0, 0)
        if n >= profile.crowd_size[0]:
            sides = [max(a["bbox"][2:]) for a in anns if a["category_id"] == top]
            crowds += max(sides) <= 1.5 * min(sides) + 2  # one size, within the 15% jitter
    assert 0.12 * len(originals) <= crowds <= 0.4 * len(originals)
