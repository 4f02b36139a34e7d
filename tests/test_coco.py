"""Tests of al_det.coco: one test per validation rule, fills, images, category mapping, subsets."""

from __future__ import annotations

import copy
import json
import warnings

import numpy as np
import pytest
from PIL import Image

from al_det.coco import CategoryMap, CocoWarning, load_coco, subset
from al_det.errors import CocoError
from al_det.images import check_images, load_image

# Non-contiguous category ids, on purpose.
CATS = [{"id": 7, "name": "square"}, {"id": 3, "name": "circle"}, {"id": 42, "name": "cross"}]


def make_coco() -> dict:
    images = [{"id": 10 + i, "file_name": f"img_{i}.png", "width": 40, "height": 30}
              for i in range(4)]
    anns = [
        {"id": 1, "image_id": 10, "category_id": 3, "bbox": [0, 0, 10, 10], "area": 100,
         "iscrowd": 0},
        {"id": 2, "image_id": 10, "category_id": 7, "bbox": [5, 5, 35, 25], "area": 875,
         "iscrowd": 0},
        {"id": 5, "image_id": 12, "category_id": 42, "bbox": [1.5, 2, 3, 4], "area": 12,
         "iscrowd": 1},
    ]
    return {"info": {"description": "t"}, "images": images, "annotations": anns,
            "categories": copy.deepcopy(CATS)}


def write(tmp_path, obj, name="pool.json"):
    path = tmp_path / name
    path.write_text(json.dumps(obj) if not isinstance(obj, str) else obj)
    return path


def expect_error(tmp_path, coco, *needles, **kw):
    path = write(tmp_path, coco)
    with pytest.raises(CocoError) as exc:
        load_coco(path, **kw)
    msg = str(exc.value)
    assert str(path) in msg
    for n in needles:
        assert n in msg, msg
    assert "\n" not in msg
    return msg


def test_valid_file_loads_unchanged(tmp_path):
    coco = make_coco()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert load_coco(write(tmp_path, coco)) == coco


def test_not_json(tmp_path):
    expect_error(tmp_path, "{not json", "invalid JSON", "line 1")


def test_missing_file(tmp_path):
    with pytest.raises(CocoError, match="missing.json: file not found"):
        load_coco(tmp_path / "missing.json")


def test_not_an_object(tmp_path):
    expect_error(tmp_path, [1, 2], "not an object")


@pytest.mark.parametrize("key", ["images", "categories", "annotations"])
def test_missing_section(tmp_path, key):
    coco = make_coco()
    del coco[key]
    expect_error(tmp_path, coco, f"'{key}'")


def test_missing_annotations_allowed_for_unlabeled_pool(tmp_path):
    coco = make_coco()
    del coco["annotations"]
    assert load_coco(write(tmp_path, coco), require_annotations=False)["annotations"] == []


def test_section_not_a_list(tmp_path):
    coco = make_coco()
    coco["images"] = {}
    expect_error(tmp_path, coco, "'images' is a dict")


def test_duplicate_image_id(tmp_path):
    coco = make_coco()
    coco["images"][2]["id"] = 11
    expect_error(tmp_path, coco, "duplicate image id 11")


def test_duplicate_file_name(tmp_path):
    coco = make_coco()
    coco["images"][3]["file_name"] = "img_0.png"
    expect_error(tmp_path, coco, "image ids 10 and 13", "img_0.png")


@pytest.mark.parametrize("field", ["id", "file_name", "width", "height"])
def test_image_record_missing_field(tmp_path, field):
    coco = make_coco()
    del coco["images"][1][field]
    expect_error(tmp_path, coco, "images[1]" if field == "id" else "image id 11")


def test_image_id_not_integer(tmp_path):
    coco = make_coco()
    coco["images"][1]["id"] = "11"
    expect_error(tmp_path, coco, "images[1]", "'11'", "integer")


def test_image_nonpositive_size(tmp_path):
    coco = make_coco()
    coco["images"][1]["width"] = 0
    expect_error(tmp_path, coco, "image id 11", "width=0")


def test_duplicate_annotation_id(tmp_path):
    coco = make_coco()
    coco["annotations"][1]["id"] = 1
    expect_error(tmp_path, coco, "duplicate annotation id 1")


def test_duplicate_category_id(tmp_path):
    coco = make_coco()
    coco["categories"][1]["id"] = 7
    expect_error(tmp_path, coco, "duplicate category id 7")


def test_duplicate_category_name(tmp_path):
    coco = make_coco()
    coco["categories"][1]["name"] = "square"
    expect_error(tmp_path, coco, "category id 3", "'square'")


def test_annotation_unknown_image(tmp_path):
    coco = make_coco()
    coco["annotations"][0]["image_id"] = 99
    expect_error(tmp_path, coco, "annotation id 1", "unknown image id 99")


def test_annotation_unknown_category(tmp_path):
    coco = make_coco()
    coco["annotations"][2]["category_id"] = 4
    expect_error(tmp_path, coco, "annotation id 5", "image id 12", "unknown category id 4")


@pytest.mark.parametrize("bbox", [[1, 2, 3], [1, 2, 3, 4, 5], [1, "2", 3, 4], [1, 2, None, 4],
                                  [1, 2, float("nan"), 4], [1, 2, float("inf"), 4],
                                  [1, 2, True, 4], "1 2 3 4", None])
def test_bbox_not_four_finite_numbers(tmp_path, bbox):
    coco = make_coco()
    coco["annotations"][1]["bbox"] = bbox
    # json.dumps writes NaN / Infinity, which json.load reads back: the check must catch them.
    expect_error(tmp_path, coco, "annotation id 2", "image id 10", "4 finite numbers")


@pytest.mark.parametrize("bbox", [[1, 2, 0, 4], [1, 2, 3, -1]])
def test_bbox_degenerate(tmp_path, bbox):
    coco = make_coco()
    coco["annotations"][1]["bbox"] = bbox
    expect_error(tmp_path, coco, "annotation id 2", "width or height <= 0")


@pytest.mark.parametrize("bbox", [[-2, 0, 10, 10], [0, -1.5, 10, 10], [35, 0, 7, 10],
                                  [0, 25, 10, 6.5]])
def test_bbox_outside_image(tmp_path, bbox):
    coco = make_coco()
    coco["annotations"][1]["bbox"] = bbox
    expect_error(tmp_path, coco, "annotation id 2", "outside the 40x30 image")


def test_bbox_within_tolerance_accepted(tmp_path):
    coco = make_coco()
    coco["annotations"][1]["bbox"] = [-0.5, -1.0, 41.0, 30.9]
    assert load_coco(write(tmp_path, coco))["annotations"][1]["bbox"] == [-0.5, -1.0, 41.0, 30.9]


def test_bad_iscrowd_and_area(tmp_path):
    coco = make_coco()
    coco["annotations"][0]["iscrowd"] = 2
    expect_error(tmp_path, coco, "annotation id 1", "iscrowd 2")
    coco = make_coco()
    coco["annotations"][0]["area"] = -1
    expect_error(tmp_path, coco, "annotation id 1", "area -1")


def test_fills_area_and_iscrowd_with_one_warning(tmp_path):
    coco = make_coco()
    for ann in coco["annotations"]:
        del ann["area"]
    del coco["annotations"][0]["iscrowd"]
    path = write(tmp_path, coco)
    with pytest.warns(CocoWarning) as record:
        out = load_coco(path)
    assert len(record) == 1
    msg = str(record[0].message)
    assert str(path) in msg and "'area' (w*h) for 3" in msg and "'iscrowd' (0) for 1" in msg
    assert [a["area"] for a in out["annotations"]] == [100, 875, 12]
    assert [a["iscrowd"] for a in out["annotations"]] == [0, 0, 1]


def test_image_without_annotations_is_valid(tmp_path):
    out = load_coco(write(tmp_path, make_coco()))
    assert {a["image_id"] for a in out["annotations"]} == {10, 12}
    assert len(out["images"]) == 4


# --------------------------------------------------------------------------- image files


def save_images(root, coco):
    root.mkdir(exist_ok=True)
    for im in coco["images"]:
        Image.new("RGB", (im["width"], im["height"]), (10, 20, 30)).save(root / im["file_name"])


def test_check_images_ok(tmp_path):
    coco = make_coco()
    save_images(tmp_path / "img", coco)
    # stored 30x40 but displayed 40x30 by its EXIF orientation: matches the record too
    exif = Image.Exif()
    exif[0x0112] = 6
    coco["images"][3]["file_name"] = "rotated.jpg"
    Image.new("RGB", (30, 40)).save(tmp_path / "img" / "rotated.jpg", exif=exif.tobytes())
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # valid images: no error and no warning either
        assert check_images(coco, tmp_path / "img", "pool.json") is None
    coco["images"][3]["width"] = 41
    with pytest.raises(CocoError, match=r"rotated\.jpg \(image id 13\): file is 30x40"):
        check_images(coco, tmp_path / "img", "pool.json")  # the files really were checked


def test_check_images_reports_all_problems(tmp_path):
    coco = make_coco()
    root = tmp_path / "img"
    save_images(root, coco)
    (root / "img_0.png").unlink()  # missing
    (root / "img_1.png").write_bytes(b"not an image")  # unreadable
    data = (root / "img_2.png").read_bytes()
    Image.new("RGB", (40, 30)).save(root / "img_2.jpg")
    (root / "img_2.png").write_bytes(data[: len(data) // 2])  # truncated
    Image.new("RGB", (50, 50)).save(root / "img_3.png")  # wrong size
    with pytest.raises(CocoError) as exc:
        check_images(coco, root, "pool.json")
    msg = str(exc.value)
    assert msg.startswith("pool.json: 4 of 4 images")
    assert "img_0.png (image id 10): missing" in msg
    assert "img_1.png (image id 11): unreadable" in msg
    assert "img_2.png (image id 12): truncated" in msg
    assert "img_3.png (image id 13): file is 50x50 but the record says 40x30" in msg


def test_check_images_truncated_jpeg(tmp_path):
    coco = make_coco()
    coco["images"] = coco["images"][:1]
    coco["images"][0]["file_name"] = "a.jpg"
    rng = np.random.default_rng(0)
    arr = rng.integers(0, 255, (30, 40, 3), dtype=np.uint8)
    Image.fromarray(arr).save(tmp_path / "a.jpg", quality=95)
    data = (tmp_path / "a.jpg").read_bytes()
    (tmp_path / "a.jpg").write_bytes(data[: len(data) * 2 // 3])
    with pytest.raises(CocoError, match=r"a\.jpg \(image id 10\): truncated"):
        check_images(coco, tmp_path, "pool.json")


def test_check_images_lists_first_few_and_count(tmp_path):
    coco = {"images": [{"id": i, "file_name": f"{i}.png", "width": 4, "height": 4}
                       for i in range(9)], "annotations": [], "categories": CATS}
    with pytest.raises(CocoError, match="9 of 9 images.*and 4 more"):
        check_images(coco, tmp_path, "pool.json")


@pytest.mark.parametrize("mode", ["L", "RGBA", "P", "I;16", "I", "LA", "CMYK", "1"])
def test_load_image_converts_to_rgb(tmp_path, mode):
    path = tmp_path / ("x.tif" if mode in ("CMYK", "I") else "x.png")
    if mode in ("I;16", "I"):
        img = Image.fromarray(np.full((3, 5), 65535, dtype=np.uint16)).convert(mode)
    else:
        img = Image.new(mode, (5, 3))
    img.save(path)
    out = load_image(path, 7)
    assert out.mode == "RGB" and out.size == (5, 3)
    if mode in ("I;16", "I"):
        assert out.getpixel((0, 0)) == (255, 255, 255)  # scaled, not clipped from 65535


def test_load_image_applies_exif_orientation(tmp_path):
    # stored 24x8, red with a blue 8x8 marker at the left end
    img = Image.new("RGB", (24, 8), (255, 0, 0))
    img.paste((0, 0, 255), (0, 0, 8, 8))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    img.save(tmp_path / "r.jpg", exif=exif.tobytes(), quality=100, subsampling=0)
    out = load_image(tmp_path / "r.jpg", 1)
    assert out.size == (8, 24)
    # turned clockwise, the left end is on top: the marker's centre, then the red far end
    r, g, b = out.getpixel((4, 4))
    assert b > 200 and r < 50, (r, g, b)
    r, g, b = out.getpixel((4, 20))
    assert r > 200 and b < 50, (r, g, b)


def test_load_image_errors_name_file_and_id(tmp_path):
    with pytest.raises(CocoError, match=r"nope\.png \(image id 5\): file not found"):
        load_image(tmp_path / "nope.png", 5)
    (tmp_path / "bad.png").write_bytes(b"garbage")
    with pytest.raises(CocoError, match=r"bad\.png \(image id 6\): unreadable"):
        load_image(tmp_path / "bad.png", 6)


# --------------------------------------------------------------------------- categories


def test_category_map_sorted_by_id():
    cmap = CategoryMap(CATS)
    assert cmap.labels == [3, 7, 42]
    assert [cmap.label_of(c) for c in (3, 7, 42)] == [1, 2, 3]
    assert [cmap.cat_id_of(lab) for lab in (1, 2, 3)] == [3, 7, 42]
    assert cmap.num_classes == 4
    assert cmap.name_of(42) == "cross"
    with pytest.raises(CocoError, match="category id 5"):
        cmap.label_of(5)
    with pytest.raises(CocoError, match="label 0"):
        cmap.cat_id_of(0)


def test_category_map_json_roundtrip():
    cmap = CategoryMap(CATS)
    back = CategoryMap.from_json(json.loads(json.dumps(cmap.to_json())))
    assert back == cmap
    bad = cmap.to_json()
    bad["categories"][0]["label"] = 3
    with pytest.raises(CocoError, match="category map: category id 3 has label 3"):
        CategoryMap.from_json(bad)
    with pytest.raises(CocoError, match="not a category map"):
        CategoryMap.from_json([])


def test_category_match_by_name_not_id():
    cmap = CategoryMap(CATS)
    # An export that renumbered categories 1..3 in another order: ids must be ignored.
    theirs = [{"id": 1, "name": "cross"}, {"id": 2, "name": "circle"}, {"id": 3, "name": "square"}]
    assert cmap.match(theirs, "export.json") == {1: 42, 2: 3, 3: 7}


def test_category_match_unknown_name(tmp_path):
    cmap = CategoryMap(CATS)
    theirs = CATS + [{"id": 9, "name": "Squares"}]
    with pytest.raises(CocoError, match=r"export.json: category 'Squares' \(id 9\).*did you mean"):
        cmap.match(theirs, "export.json")


def test_category_match_missing_ours_needs_flag():
    cmap = CategoryMap(CATS)
    theirs = [{"id": 1, "name": "circle"}]
    with pytest.raises(CocoError, match=r"test.json: lacks the pool's categories \['square'"):
        cmap.match(theirs, "test.json")
    assert cmap.match(theirs, "test.json", allow_missing=True) == {1: 3}


# --------------------------------------------------------------------------- subsets


def test_subset_order_annotations_and_carry():
    coco = make_coco()
    coco["licenses"] = [{"id": 1}]
    sub = subset(coco, [12, 10], with_annotations=True)
    assert [im["id"] for im in sub["images"]] == [12, 10]
    assert [a["id"] for a in sub["annotations"]] == [5, 1, 2]
    assert sub["categories"] == coco["categories"]
    assert sub["info"] == coco["info"] and sub["licenses"] == coco["licenses"]
    bare = subset(coco, [10], with_annotations=False)
    assert bare["annotations"] == [] and len(bare["images"]) == 1
    with pytest.raises(CocoError, match=r"\[99\]"):
        subset(coco, [99], with_annotations=False)
