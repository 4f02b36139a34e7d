"""Convert Pascal VOC (VOC2007 + VOC2012) to the COCO JSON files of the paper's VOC protocol.

    python scripts/voc_to_coco.py --devkit data/voc/VOCdevkit --out data/voc

reads ``VOCdevkit/VOC{2007,2012}/{Annotations/*.xml, ImageSets/Main/*.txt, JPEGImages}`` and
writes two files into ``--out``:

* ``trainval0712.json``: VOC2007 trainval + VOC2012 trainval (16,551 images), the pool;
* ``test2007.json``: VOC2007 test (4,952 images), the test set.

Conventions (all deterministic, so a rerun writes the same bytes):

* ``file_name`` is relative to the devkit, e.g. ``VOC2007/JPEGImages/000005.jpg``; use the
  devkit as ``data.pool_images`` / ``data.test_images``.
* Image ids are ``year * 10**10 + int(stem without "_")``: ``VOC2007/000005`` -> 20070000000005,
  ``VOC2012/2008_000002`` -> 20122008000002. VOC2012 file names carry their own year
  (2007_ ... 2012_), and VOC2012 also holds ``2007_xxxxxx`` images, so a short
  ``year * 10**6 + n`` id would collide; these ids are unique and stay below 2**53.
* Categories are the 20 VOC classes in the standard (alphabetical) order with ids 1..20.
* Boxes: VOC gives 1-based, inclusive pixel indices (``xmin = 1`` is the first pixel column,
  ``xmax = width`` the last). Pixel ``i`` covers ``[i - 1, i)`` in COCO's continuous,
  0-based coordinates, so the box is ``x = xmin - 1``, ``y = ymin - 1``,
  ``w = xmax - xmin + 1``, ``h = ymax - ymin + 1`` (a full-image box is ``[0, 0, W, H]``) and
  ``area = w * h``. Coordinates are clipped to the image.
* ``difficult`` objects are kept with ``iscrowd: 1``: COCO evaluation then never counts them
  as misses and ignores detections matched to them, as VOC's evaluation does for difficult
  objects, and al-det never trains on crowd annotations (VOC practice, also in the SSD code of
  Learning Loss). One difference remains: pycocotools matches a detection to a crowd box by
  intersection over the detection's area, VOC by IoU; ``evaluate.metric: voc07`` (al-det's
  VOC 2007 mAP) matches by IoU, as VOC does.

Any missing split file, annotation, image or malformed XML stops the conversion with one line
naming the file. Standard library and al_det only; the JSON is written atomically.
"""

from __future__ import annotations

import argparse
import sys
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

from al_det.atomic import write_json
from al_det.errors import AlDetError

VOC_CLASSES = (
    "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa",
    "train", "tvmonitor",
)
CATEGORY_IDS = {name: i for i, name in enumerate(VOC_CLASSES, start=1)}
# Output file -> the (year, ImageSets/Main split) pairs it is made of, in this order.
OUTPUTS: dict[str, tuple[tuple[int, str], ...]] = {
    "trainval0712.json": ((2007, "trainval"), (2012, "trainval")),
    "test2007.json": ((2007, "test"),),
}
ID_STRIDE = 10**10


class VocError(AlDetError):
    """The VOC devkit is incomplete or an annotation file is malformed."""


def image_id(year: int, stem: str) -> int:
    """The COCO image id of ``VOC<year>/JPEGImages/<stem>.jpg`` (see the module docstring)."""
    digits = stem.replace("_", "")
    if not digits.isdigit() or len(digits) > 10:
        raise VocError(f"VOC{year}: image name {stem!r} is not a VOC name like 000005 or "
                       "2008_000002; cannot derive an image id")
    return year * ID_STRIDE + int(digits)


def read_split(devkit: Path, year: int, split: str) -> list[str]:
    """The image stems listed in ``VOC<year>/ImageSets/Main/<split>.txt``."""
    year_dir = devkit / f"VOC{year}"
    if not year_dir.is_dir():
        raise VocError(f"{year_dir}: no such folder; extract VOC{year} into {devkit}")
    path = year_dir / "ImageSets" / "Main" / f"{split}.txt"
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as e:
        raise VocError(f"{path}: cannot read the split file ({e.strerror or e}); "
                       f"extract the full VOC{year} devkit") from None
    return [line.split()[0] for line in text.splitlines() if line.strip()]


def _text(node: ET.Element, tag: str, path: Path) -> str:
    child = node.find(tag)
    if child is None or child.text is None or not child.text.strip():
        raise VocError(f"{path}: missing <{tag}>; re-extract the annotation file")
    return child.text.strip()


def _number(node: ET.Element, tag: str, path: Path) -> float:
    raw = _text(node, tag, path)
    try:
        return float(raw)
    except ValueError:
        raise VocError(f"{path}: <{tag}> is {raw!r}, not a number") from None


def _int_if_whole(v: float) -> int | float:
    return int(v) if v.is_integer() else v


def voc_box_to_coco(box: tuple[float, float, float, float], width: float,
                    height: float) -> list[int | float]:
    """VOC ``(xmin, ymin, xmax, ymax)`` (1-based, inclusive) -> COCO ``[x, y, w, h]``, clipped."""
    xmin, ymin, xmax, ymax = box
    x0, y0 = max(xmin - 1, 0.0), max(ymin - 1, 0.0)
    x1, y1 = min(xmax, width), min(ymax, height)
    return [_int_if_whole(v) for v in (x0, y0, x1 - x0, y1 - y0)]


def parse_annotation(path: Path) -> tuple[float, float, list[dict[str, Any]]]:
    """Read one VOC XML file: (width, height, [{"name", "difficult", "bbox"}]).

    Only the ``<object>`` children of the root are read (``<part>`` boxes are not objects).
    """
    try:
        root = ET.parse(path).getroot()
    except FileNotFoundError:
        raise VocError(f"{path}: annotation file not found; extract the full devkit") from None
    except ET.ParseError as e:
        raise VocError(f"{path}: malformed XML ({e}); re-extract the annotation file") from None
    size = root.find("size")
    if size is None:
        raise VocError(f"{path}: missing <size>; re-extract the annotation file")
    width, height = _number(size, "width", path), _number(size, "height", path)
    if width <= 0 or height <= 0:
        raise VocError(f"{path}: image size {width}x{height} is not positive")
    return width, height, [_parse_object(obj, width, height, path)
                           for obj in root.findall("object")]


def _parse_object(obj: ET.Element, width: float, height: float, path: Path) -> dict[str, Any]:
    name = _text(obj, "name", path)
    if name not in CATEGORY_IDS:
        raise VocError(f"{path}: unknown class {name!r}; VOC has {', '.join(VOC_CLASSES)}")
    bnd = obj.find("bndbox")
    if bnd is None:
        raise VocError(f"{path}: a {name} object has no <bndbox>")
    box = tuple(_number(bnd, tag, path) for tag in ("xmin", "ymin", "xmax", "ymax"))
    bbox = voc_box_to_coco(box, width, height)  # type: ignore[arg-type]
    if bbox[2] <= 0 or bbox[3] <= 0:
        raise VocError(f"{path}: {name} box {box} is empty inside the {width}x{height} image")
    difficult = obj.find("difficult")
    is_difficult = difficult is not None and (difficult.text or "0").strip() == "1"
    return {"name": name, "difficult": is_difficult, "bbox": bbox}


def convert(devkit: Path, parts: tuple[tuple[int, str], ...]) -> dict[str, Any]:
    """Build one COCO dict from the ``(year, split)`` parts of a VOC devkit."""
    images: list[dict[str, Any]] = []
    annotations: list[dict[str, Any]] = []
    seen: set[int] = set()
    for year, split in parts:
        for stem in read_split(devkit, year, split):
            iid = image_id(year, stem)
            if iid in seen:
                raise VocError(f"{devkit / f'VOC{year}'}: image {stem} listed twice in "
                               f"the {split} split")
            seen.add(iid)
            image, anns = _convert_image(devkit, year, stem, iid, len(annotations) + 1)
            images.append(image)
            annotations.extend(anns)
    categories = [{"id": cid, "name": name, "supercategory": "voc"}
                  for name, cid in CATEGORY_IDS.items()]
    info = {"description": "Pascal VOC " + " + ".join(f"{y} {s}" for y, s in parts)
            + " (scripts/voc_to_coco.py; difficult objects as iscrowd=1)"}
    return {"info": info, "images": images, "annotations": annotations,
            "categories": categories}


def _convert_image(devkit: Path, year: int, stem: str, iid: int,
                   next_ann_id: int) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    file_name = f"VOC{year}/JPEGImages/{stem}.jpg"
    if not (devkit / file_name).is_file():
        raise VocError(f"{devkit / file_name}: image not found; extract the full devkit")
    xml = devkit / f"VOC{year}" / "Annotations" / f"{stem}.xml"
    width, height, objects = parse_annotation(xml)
    image = {"id": iid, "file_name": file_name, "width": _int_if_whole(width),
             "height": _int_if_whole(height)}
    anns = []
    for k, obj in enumerate(objects):
        w, h = obj["bbox"][2:]
        anns.append({"id": next_ann_id + k, "image_id": iid,
                     "category_id": CATEGORY_IDS[obj["name"]], "bbox": obj["bbox"],
                     "area": _int_if_whole(float(w * h)), "iscrowd": int(obj["difficult"])})
    return image, anns


def convert_devkit(devkit: Path, out: Path) -> dict[str, dict[str, int]]:
    """Write every file of :data:`OUTPUTS` into ``out``; return counts per file."""
    # Build everything before writing anything: a missing year leaves no half-done output.
    results = {name: convert(Path(devkit), parts) for name, parts in OUTPUTS.items()}
    counts = {}
    for name, coco in results.items():
        write_json(Path(out) / name, coco)
        anns = coco["annotations"]
        counts[name] = {"images": len(coco["images"]), "annotations": len(anns),
                        "difficult": sum(a["iscrowd"] for a in anns)}
    return counts


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--devkit", type=Path, required=True,
                        help="the VOCdevkit folder holding VOC2007 and VOC2012")
    parser.add_argument("--out", type=Path, required=True,
                        help="folder for trainval0712.json and test2007.json")
    args = parser.parse_args(argv)
    try:
        counts = convert_devkit(args.devkit, args.out)
    except AlDetError as exc:
        print(f"voc_to_coco: error: {exc}", file=sys.stderr)
        return 2
    for name, c in counts.items():
        print(f"{args.out / name}: {c['images']} images, {c['annotations']} objects "
              f"({c['difficult']} difficult, iscrowd=1)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
