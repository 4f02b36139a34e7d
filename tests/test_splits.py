"""Tests of al_det.splits: counts, initial/next splits, invariants, label import by file name."""

from __future__ import annotations

import copy

import pytest

from al_det.coco import CategoryMap
from al_det.errors import SplitError
from al_det.splits import (
    check_splits,
    import_labels,
    initial_split,
    make_splits,
    next_splits,
    resolve_count,
)

CATS = [{"id": 7, "name": "square"}, {"id": 3, "name": "circle"}, {"id": 42, "name": "cross"}]


def make_pool(n: int = 20) -> dict:
    # Ids deliberately not in file order, so "pool order" and "sorted by id" differ.
    ids = [100 + (i * 7) % n for i in range(n)]
    images = [{"id": i, "file_name": f"sub/img_{i}.jpg", "width": 50, "height": 40} for i in ids]
    anns = []
    for iid in ids:
        for k in range(iid % 3):  # 0, 1 or 2 boxes; some images are negatives
            anns.append({"id": len(anns) + 1, "image_id": iid, "category_id": CATS[k]["id"],
                         "bbox": [k, k, 10, 10], "area": 100, "iscrowd": 0})
    return {"images": images, "annotations": anns, "categories": copy.deepcopy(CATS)}


def ids(coco: dict) -> list[int]:
    return [im["id"] for im in coco["images"]]


# --------------------------------------------------------------------------- resolve_count


@pytest.mark.parametrize(("value", "pool", "expected"), [
    (5, 20, 5), (20, 20, 20), (5.0, 20, 5), (1.0, 20, 1), (0.25, 20, 5), (0.29, 100, 29),
    (0.01, 20, 1), (0.99, 20, 19),
])
def test_resolve_count(value, pool, expected):
    assert resolve_count(value, pool, "budget") == expected


@pytest.mark.parametrize(("value", "needle"), [
    (0, "not a positive"), (-3, "not a positive"), (float("nan"), "not a positive"),
    (True, "not a positive"), ("5", "not a positive"), (2.5, "neither a whole count"),
    (21, "asks for 21 images but the pool has only 20"),
])
def test_resolve_count_errors(value, needle):
    with pytest.raises(SplitError, match="budget") as exc:
        resolve_count(value, 20, "budget")
    assert needle in str(exc.value)


# --------------------------------------------------------------------------- initial split


def test_initial_split_partition_and_pool_order():
    pool = make_pool()
    labeled, unlabeled = initial_split(pool, 6, seed=3)
    assert len(labeled) == 6 and len(unlabeled) == 14
    assert set(labeled).isdisjoint(unlabeled) and set(labeled) | set(unlabeled) == set(ids(pool))
    order = {i: k for k, i in enumerate(ids(pool))}
    assert labeled == sorted(labeled, key=order.get)
    assert unlabeled == sorted(unlabeled, key=order.get)


def test_initial_split_deterministic_and_file_order_independent():
    pool = make_pool()
    a = initial_split(pool, 6, seed=3)
    assert initial_split(pool, 6, seed=3) == a
    assert initial_split(pool, 6, seed=4)[0] != a[0]
    shuffled = dict(pool, images=list(reversed(pool["images"])))
    assert set(initial_split(shuffled, 6, seed=3)[0]) == set(a[0])


@pytest.mark.parametrize("count", [0, 21])
def test_initial_split_bad_count(count):
    with pytest.raises(SplitError, match=f"cannot label {count} of 20"):
        initial_split(make_pool(), count, seed=0)


# --------------------------------------------------------------------------- make / next


def test_make_splits_gt_only_in_labeled():
    pool = make_pool()
    labeled_ids, _ = initial_split(pool, 8, seed=0)
    labeled, unlabeled = make_splits(pool, labeled_ids)
    assert ids(labeled) == labeled_ids
    assert unlabeled["annotations"] == []
    expected = [a for a in pool["annotations"] if a["image_id"] in set(labeled_ids)]
    assert sorted(a["id"] for a in labeled["annotations"]) == sorted(a["id"] for a in expected)
    assert labeled["categories"] == unlabeled["categories"] == pool["categories"]
    bare, _ = make_splits(pool, labeled_ids, with_gt=False)
    assert bare["annotations"] == []


def test_make_splits_rejects_bad_ids():
    pool = make_pool()
    with pytest.raises(SplitError, match=r"image ids \[100\] selected more than once"):
        make_splits(pool, [100, 101, 100])
    with pytest.raises(SplitError, match=r"image ids \[5\] are not in the pool"):
        make_splits(pool, [100, 5])


def test_next_splits_grows_by_exactly_selection():
    pool = make_pool()
    labeled, unlabeled = make_splits(pool, initial_split(pool, 4, seed=1)[0])
    selected = ids(unlabeled)[5:8][::-1]
    nl, nu = next_splits(pool, labeled, unlabeled, selected)
    assert ids(nl) == ids(labeled) + selected
    assert len(nu["images"]) == len(unlabeled["images"]) - 3
    assert nu["annotations"] == []
    gt = [a["id"] for a in pool["annotations"] if a["image_id"] in set(selected)]
    assert sorted(a["id"] for a in nl["annotations"]) == sorted(
        [a["id"] for a in labeled["annotations"]] + gt)
    check_splits(pool, nl, nu)
    # Inputs untouched (files of the previous cycle stay valid).
    assert len(labeled["images"]) == 4 and len(unlabeled["images"]) == 16


@pytest.mark.parametrize(("pick", "needle"), [
    (lambda lab, unl: [unl[0], unl[1], unl[0]], "selected more than once"),
    (lambda lab, unl: [unl[0], lab[0]], "already labeled"),
    (lambda lab, unl: [unl[0], 999], "not in the pool"),
    (lambda lab, unl: [], "no images selected"),
])
def test_next_splits_bad_selection(pick, needle):
    pool = make_pool()
    labeled, unlabeled = make_splits(pool, initial_split(pool, 4, seed=1)[0])
    selection = pick(ids(labeled), ids(unlabeled))
    with pytest.raises(SplitError) as exc:
        next_splits(pool, labeled, unlabeled, selection)
    assert needle in str(exc.value)
    offender = [i for i in selection if selection.count(i) > 1 or i == 999
                or i in ids(labeled)]
    for i in offender:
        assert str(i) in str(exc.value)


def test_selection_not_in_unlabeled_split():
    pool = make_pool()
    labeled, unlabeled = make_splits(pool, initial_split(pool, 4, seed=1)[0])
    # A pool image that is in neither split: check_splits catches the broken pair first.
    gone = ids(unlabeled)[0]
    unl = dict(unlabeled, images=unlabeled["images"][1:])
    with pytest.raises(SplitError, match=rf"\[{gone}\] are in the pool but in neither split"):
        next_splits(pool, labeled, unl, [gone])


def test_full_simulation_invariants():
    pool = make_pool()
    labeled, unlabeled = make_splits(pool, initial_split(pool, 2, seed=9)[0])
    while unlabeled["images"]:
        before = len(labeled["images"])
        labeled, unlabeled = next_splits(pool, labeled, unlabeled, ids(unlabeled)[:3])
        assert len(labeled["images"]) == before + 3  # 18 unlabeled images, 6 cycles of 3
    assert sorted(ids(labeled)) == sorted(ids(pool))
    assert len(labeled["annotations"]) == len(pool["annotations"])


# --------------------------------------------------------------------------- check_splits


def test_check_splits_violations():
    pool = make_pool()
    labeled, unlabeled = make_splits(pool, [100, 101])
    overlap = dict(unlabeled, images=unlabeled["images"] + labeled["images"][:1])
    with pytest.raises(SplitError, match=r"\[100\] are both labeled and unlabeled"):
        check_splits(pool, labeled, overlap)
    extra = dict(labeled, images=labeled["images"] + [{"id": 555, "file_name": "x"}])
    with pytest.raises(SplitError, match=r"\[555\] are in the splits but not in the pool"):
        check_splits(pool, extra, unlabeled)
    leak = dict(unlabeled, annotations=[a for a in pool["annotations"] if a["image_id"] == 104])
    with pytest.raises(SplitError, match=r"\[104\] have annotations in the unlabeled split"):
        check_splits(pool, labeled, leak)
    dup = dict(labeled, images=labeled["images"] * 2)
    with pytest.raises(SplitError, match=r"splits: labeled image ids \[100, 101\] appear more"):
        check_splits(pool, dup, unlabeled)


def test_check_splits_names_at_most_five():
    pool = make_pool()
    labeled, unlabeled = make_splits(pool, [100])
    with pytest.raises(SplitError, match=r"\[101, 102, 103, 104, 105\] and 14 more"):
        check_splits(pool, labeled, dict(unlabeled, images=[]))


# --------------------------------------------------------------------------- import_labels


def make_export(pool: dict, selected: list[int]) -> dict:
    """What CVAT would export: image ids renumbered 1.., category ids renumbered 1.., other
    order, no folder in file names."""
    by_id = {im["id"]: im for im in pool["images"]}
    images = [{"id": k + 1, "file_name": by_id[i]["file_name"].split("/")[-1], "width": 50,
               "height": 40} for k, i in enumerate(reversed(selected))]
    new_img = {i: k + 1 for k, i in enumerate(reversed(selected))}
    cat_ids = {7: 1, 3: 2, 42: 3}
    anns = [{"id": 1000 + k, "image_id": new_img[i], "category_id": cat_ids[c], "bbox": b,
             "area": 1.0, "iscrowd": 0}
            for k, (i, c, b) in enumerate([(selected[0], 3, [1, 1, 5, 5]),
                                           (selected[0], 42, [2, 2, 5, 5]),
                                           (selected[-1], 7, [3, 3, 5, 5])])]
    cats = [{"id": 3, "name": "cross"}, {"id": 1, "name": "square"}, {"id": 2, "name": "circle"}]
    return {"images": images, "annotations": anns, "categories": cats}


def real_splits():
    pool = make_pool()
    pool_unlabeled = dict(pool, annotations=[])  # a real project: no ground truth
    labeled, unlabeled = make_splits(pool, [100, 101, 102])
    return pool_unlabeled, labeled, unlabeled


def test_import_labels_by_file_name_with_renumbered_ids():
    _, labeled, unlabeled = real_splits()
    selected = [110, 105, 117]
    export = make_export({"images": labeled["images"] + unlabeled["images"]}, selected)
    cmatch = CategoryMap(CATS).match(export["categories"], "export.json")
    nl, nu = import_labels(labeled, unlabeled, selected, export, cmatch, "export.json")
    assert ids(nl) == [100, 101, 102] + selected
    assert 110 not in ids(nu) and len(nu["images"]) == 14 and nu["annotations"] == []
    new = nl["annotations"][len(labeled["annotations"]):]
    assert [(a["image_id"], a["category_id"], a["bbox"]) for a in new] == [
        (110, 3, [1, 1, 5, 5]), (110, 42, [2, 2, 5, 5]), (117, 7, [3, 3, 5, 5])]
    all_ids = [a["id"] for a in nl["annotations"]]
    assert len(set(all_ids)) == len(all_ids)
    assert min(a["id"] for a in new) > max(a["id"] for a in labeled["annotations"])
    assert len(labeled["images"]) == 3  # input untouched


def test_import_labels_fewer_images_than_selected():
    _, labeled, unlabeled = real_splits()
    selected = [110, 105, 117]
    export = make_export({"images": unlabeled["images"]}, selected)
    export["images"] = [im for im in export["images"] if im["file_name"] != "img_105.jpg"]
    export["annotations"] = [a for a in export["annotations"]
                             if a["image_id"] in {im["id"] for im in export["images"]}]
    cmatch = CategoryMap(CATS).match(export["categories"], "export.json")
    with pytest.raises(SplitError, match=r"export.json: no annotations for 1 of 3 selected "
                                         r"images: \['sub/img_105.jpg \(image id 105\)'\]"):
        import_labels(labeled, unlabeled, selected, export, cmatch, "export.json")


def test_import_labels_more_images_than_selected():
    _, labeled, unlabeled = real_splits()
    selected = [110, 105]
    export = make_export({"images": unlabeled["images"]}, [110, 105, 117])
    cmatch = CategoryMap(CATS).match(export["categories"], "export.json")
    with pytest.raises(SplitError, match=r"export.json: image 'img_117.jpg' is not one of the 2 "
                                         r"selected images"):
        import_labels(labeled, unlabeled, selected, export, cmatch, "export.json")


def test_import_labels_size_mismatch_and_bad_selection():
    _, labeled, unlabeled = real_splits()
    export = make_export({"images": unlabeled["images"]}, [110])
    cmatch = CategoryMap(CATS).match(export["categories"], "export.json")
    export["images"][0]["width"] = 100
    with pytest.raises(SplitError,
                       match=r"img_110.jpg.*pool image id 110 \(sub/img_110.jpg\) is 50x40"):
        import_labels(labeled, unlabeled, [110], export, cmatch, "export.json")
    with pytest.raises(SplitError, match=r"\[100\] are already labeled"):
        import_labels(labeled, unlabeled, [100], export, cmatch, "export.json")


def test_import_labels_unmapped_category():
    _, labeled, unlabeled = real_splits()
    export = make_export({"images": unlabeled["images"]}, [110])
    with pytest.raises(SplitError, match="annotation id 1000 has category id 2"):
        import_labels(labeled, unlabeled, [110], export, {1: 7}, "export.json")
