"""Synthetic demo detection dataset for al-det: coloured shapes on cluttered backgrounds.

Reads nothing. :func:`generate` writes, under ``out_dir``:

* ``images/pool_NNNNNN.png`` and ``images/test_NNNNNN.png``: RGB PNG images;
* ``pool.json`` and ``test.json``: COCO detection JSON (``images``, ``annotations``,
  ``categories``; ``file_name`` is relative to ``images/``);
* ``.complete``: a marker JSON with the generation parameters, written last.

The data is built so that choosing images well matters, as on COCO: six shape classes with
non-contiguous category ids and a long-tailed frequency in the pool (the test split is
balanced, so rare classes weigh fully in COCO AP), textured backgrounds with distractor lines
and blobs, objects from about 10 px to 50 px, 0-6 objects per image, and a share of pool images
that are near-duplicates (small shift, fresh noise) of other pool images. Pool near-duplicates
carry an extra image field ``near_duplicate_of`` (the id of the image they copy).

Output is byte-identical for a given set of parameters. All files are written atomically; a
complete dataset with the same parameters is not regenerated. Uses numpy and Pillow only.
"""

from __future__ import annotations

import io
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from al_det.atomic import TMP_PREFIX, write_json

MARKER = ".complete"
FORMAT_VERSION = 1

# id, name, base RGB colour. Ids deliberately non-contiguous; colours well separated in hue.
CATEGORIES: list[tuple[int, str, tuple[int, int, int]]] = [
    (3, "circle", (230, 40, 40)),
    (7, "square", (40, 90, 240)),
    (11, "triangle", (40, 210, 60)),
    (20, "ring", (250, 200, 20)),
    (42, "cross", (220, 40, 220)),
    (57, "diamond", (30, 220, 230)),
]
# Pool class weights: Zipf-like, most common / rarest ~ 10x. Test split: uniform.
POOL_WEIGHTS = np.array([1.0, 0.55, 0.33, 0.2, 0.14, 0.1])
TEST_WEIGHTS = np.ones(len(CATEGORIES))
# Probability of 0..6 objects in an image.
COUNT_PROBS = np.array([0.08, 0.17, 0.2, 0.2, 0.15, 0.12, 0.08])
MIN_SIZE, MAX_SIZE = 10, 50
DUP_FRACTION = 0.25
MAX_OVERLAP = 0.1  # intersection / smaller-box area allowed between two objects
TEST_ID_OFFSET = 100_000


@dataclass
class Scene:
    """One rendered image: uint8 HxWx3 pixels and its objects as (category_id, bbox, area)."""

    pixels: np.ndarray
    objects: list[tuple[int, list[float], float]]
    duplicate_of: int | None = None  # index in the split of the image this one copies


def _background(rng: np.random.Generator, size: int) -> np.ndarray:
    """Return a float HxWx3 low-saturation textured background in roughly [40, 200]."""
    base = rng.uniform(80, 160)
    tint = rng.normal(0, 8, size=3)
    coarse = rng.normal(0, 25, size=(6, 6, 3)).astype(np.float32)
    smooth = np.stack(
        [
            np.asarray(Image.fromarray(coarse[..., c], mode="F").resize((size, size),
                                                                         Image.BICUBIC))
            for c in range(3)
        ],
        axis=-1,
    )
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    angle = rng.uniform(0, 2 * np.pi)
    gradient = rng.uniform(-30, 30) * (np.cos(angle) * xx + np.sin(angle) * yy - 0.5)
    grain = 6 * rng.standard_normal((size, size, 1), dtype=np.float32)
    bg = base + tint + 0.3 * smooth + smooth.mean(axis=-1, keepdims=True) + gradient[..., None]
    return np.clip(bg + grain, 30, 210)


def _muted_colour(rng: np.random.Generator) -> tuple[int, int, int]:
    """A low-saturation colour for distractors, so they differ from the saturated objects."""
    grey = rng.uniform(30, 220)
    return tuple(int(np.clip(grey + rng.normal(0, 18), 0, 255)) for _ in range(3))


def _draw_distractors(draw: ImageDraw.ImageDraw, rng: np.random.Generator, size: int) -> None:
    """Draw thin lines, small blobs and hollow arcs that are not objects."""
    for _ in range(rng.integers(1, 5)):
        pts = [tuple(float(v) for v in rng.uniform(0, size, 2)) for _ in range(2)]
        draw.line(pts, fill=_muted_colour(rng), width=int(rng.integers(1, 3)))
    for _ in range(rng.integers(0, 5)):
        cx, cy = rng.uniform(0, size, 2)
        rx, ry = rng.uniform(2, 7, 2)
        draw.ellipse([cx - rx, cy - ry, cx + rx, cy + ry], fill=_muted_colour(rng))
    for _ in range(rng.integers(0, 2)):
        cx, cy = rng.uniform(0, size, 2)
        r = rng.uniform(8, 20)
        start = rng.uniform(0, 360)
        draw.arc([cx - r, cy - r, cx + r, cy + r], start, start + rng.uniform(60, 200),
                 fill=_muted_colour(rng), width=2)


def _shape_mask(name: str, s: int) -> Image.Image:
    """Return an ``L`` mask of side ``s`` with the class shape drawn in 255."""
    mask = Image.new("L", (s, s), 0)
    d = ImageDraw.Draw(mask)
    e = s - 1
    if name == "circle":
        d.ellipse([0, 0, e, e], fill=255)
    elif name == "square":
        d.rectangle([0, 0, e, e], fill=255)
    elif name == "triangle":
        d.polygon([(e / 2, 0), (e, e), (0, e)], fill=255)
    elif name == "ring":
        d.ellipse([0, 0, e, e], fill=255)
        t = max(2.0, 0.25 * s)
        d.ellipse([t, t, e - t, e - t], fill=0)
    elif name == "cross":
        t = max(1.5, 0.17 * s)
        d.rectangle([e / 2 - t, 0, e / 2 + t, e], fill=255)
        d.rectangle([0, e / 2 - t, e, e / 2 + t], fill=255)
    elif name == "diamond":
        d.polygon([(e / 2, 0), (e, e / 2), (e / 2, e), (0, e / 2)], fill=255)
    else:
        raise ValueError(f"unknown shape {name!r}")
    return mask


def _overlaps(box: tuple[int, int, int], placed: list[tuple[int, int, int]]) -> bool:
    """True if square ``box`` (x, y, side) overlaps any placed box beyond ``MAX_OVERLAP``."""
    x, y, s = box
    for px, py, ps in placed:
        iw = min(x + s, px + ps) - max(x, px)
        ih = min(y + s, py + ps) - max(y, py)
        if iw > 0 and ih > 0 and iw * ih > MAX_OVERLAP * min(s, ps) ** 2:
            return True
    return False


def _place(rng: np.random.Generator, n: int, size: int) -> list[tuple[int, int, int]]:
    """Sample up to ``n`` square footprints (x, y, side) with at most mild overlap."""
    placed: list[tuple[int, int, int]] = []
    for _ in range(n):
        for _attempt in range(30):
            s = round(np.exp(rng.uniform(np.log(MIN_SIZE), np.log(MAX_SIZE))))
            x, y = (int(v) for v in rng.integers(0, size - s + 1, 2))
            if not _overlaps((x, y, s), placed):
                placed.append((x, y, s))
                break
    return placed


def _object_colour(rng: np.random.Generator, base: tuple[int, int, int]) -> tuple[int, ...]:
    return tuple(int(np.clip(c + rng.normal(0, 15), 0, 255)) for c in base)


def _render(rng: np.random.Generator, weights: np.ndarray, size: int) -> Scene:
    """Render one cluttered image with 0-6 objects drawn from class ``weights``."""
    img = Image.fromarray(_background(rng, size).astype(np.uint8), mode="RGB")
    _draw_distractors(ImageDraw.Draw(img), rng, size)
    n = int(rng.choice(len(COUNT_PROBS), p=COUNT_PROBS))
    objects = []
    for x, y, s in _place(rng, n, size):
        cid, name, colour = CATEGORIES[rng.choice(len(CATEGORIES), p=weights / weights.sum())]
        mask = _shape_mask(name, s)
        img.paste(_object_colour(rng, colour), (x, y), mask)
        m = np.asarray(mask) > 0
        ys, xs = np.nonzero(m)
        bbox = [float(x + xs.min()), float(y + ys.min()),
                float(xs.max() - xs.min() + 1), float(ys.max() - ys.min() + 1)]
        objects.append((cid, bbox, float(m.sum())))
    img = img.filter(ImageFilter.GaussianBlur(0.5))
    noise = rng.standard_normal((size, size, 3), dtype=np.float32)
    pixels = np.asarray(img, dtype=np.float32) + 4 * noise
    return Scene(np.clip(pixels, 0, 255).astype(np.uint8), objects)


def _near_duplicate(rng: np.random.Generator, base: Scene, index: int) -> Scene:
    """A copy of ``base`` shifted by a few pixels, with a brightness change and fresh noise."""
    h, w = base.pixels.shape[:2]
    boxes = [b for _, b, _ in base.objects]
    lo_x = -min([int(b[0]) for b in boxes] + [3])
    hi_x = min([w - int(b[0] + b[2]) for b in boxes] + [3])
    lo_y = -min([int(b[1]) for b in boxes] + [3])
    hi_y = min([h - int(b[1] + b[3]) for b in boxes] + [3])
    dx, dy = int(rng.integers(lo_x, hi_x + 1)), int(rng.integers(lo_y, hi_y + 1))
    padded = np.pad(base.pixels, ((3, 3), (3, 3), (0, 0)), mode="edge")
    shifted = padded[3 - dy:3 - dy + h, 3 - dx:3 - dx + w].astype(np.float32)
    noise = rng.standard_normal(shifted.shape, dtype=np.float32)
    shifted = shifted * rng.uniform(0.92, 1.08) + 5 * noise
    objects = [(c, [b[0] + dx, b[1] + dy, b[2], b[3]], a) for c, b, a in base.objects]
    return Scene(np.clip(shifted, 0, 255).astype(np.uint8), objects, duplicate_of=index)


def _scenes(rng: np.random.Generator, n: int, weights: np.ndarray, size: int,
            dup_fraction: float) -> list[Scene]:
    """Render ``n`` scenes, a ``dup_fraction`` share near-duplicates, in a shuffled order."""
    n_dup = round(n * dup_fraction)
    scenes = [_render(rng, weights, size) for _ in range(n - n_dup)]
    for _ in range(n_dup):
        i = int(rng.integers(0, n - n_dup))
        scenes.append(_near_duplicate(rng, scenes[i], i))
    order = rng.permutation(n)
    new_pos = {int(old): pos for pos, old in enumerate(order)}
    out = [scenes[int(old)] for old in order]
    for s in out:
        if s.duplicate_of is not None:
            s.duplicate_of = new_pos[s.duplicate_of]
    return out


def _write_png(path: Path, pixels: np.ndarray) -> None:
    """Write a PNG via a temporary name and ``os.replace``."""
    buf = io.BytesIO()
    Image.fromarray(pixels, mode="RGB").save(buf, format="PNG", compress_level=1)
    tmp = path.with_name(TMP_PREFIX + path.name)
    tmp.write_bytes(buf.getvalue())
    os.replace(tmp, path)


def _coco(split: str, scenes: list[Scene], images_dir: Path, id_offset: int) -> dict[str, Any]:
    """Write the split's PNGs and return its COCO dict (image ids start at ``id_offset + 1``)."""
    images, annotations = [], []
    for i, scene in enumerate(scenes):
        image_id = id_offset + i + 1
        name = f"{split}_{image_id:06d}.png"
        _write_png(images_dir / name, scene.pixels)
        h, w = scene.pixels.shape[:2]
        record: dict[str, Any] = {"id": image_id, "file_name": name, "width": w, "height": h}
        if scene.duplicate_of is not None:
            record["near_duplicate_of"] = id_offset + scene.duplicate_of + 1
        images.append(record)
        for cid, bbox, area in scene.objects:
            annotations.append({"id": id_offset * 10 + len(annotations) + 1,
                                "image_id": image_id, "category_id": cid, "bbox": bbox,
                                "area": area, "iscrowd": 0})
    categories = [{"id": cid, "name": name, "supercategory": "shape"}
                  for cid, name, _ in CATEGORIES]
    info = {"description": f"al-det synthetic shapes, {split} split", "version": FORMAT_VERSION}
    return {"info": info, "images": images, "annotations": annotations,
            "categories": categories}


def _is_complete(out_dir: Path, params: dict[str, Any]) -> bool:
    marker = out_dir / MARKER
    if not (marker.is_file() and (out_dir / "pool.json").is_file()
            and (out_dir / "test.json").is_file()):
        return False
    try:
        return json.loads(marker.read_text()) == params
    except (OSError, ValueError):
        return False


def generate(out_dir: Path, n_pool: int = 300, n_test: int = 100, image_size: int = 128,
             seed: int = 0) -> dict[str, Path]:
    """Write the synthetic dataset under ``out_dir`` unless already complete; return its paths.

    Returns ``{"pool": out_dir/pool.json, "test": out_dir/test.json, "images": out_dir/images}``.
    """
    out_dir = Path(out_dir)
    paths = {"pool": out_dir / "pool.json", "test": out_dir / "test.json",
             "images": out_dir / "images"}
    params = {"version": FORMAT_VERSION, "n_pool": n_pool, "n_test": n_test,
              "image_size": image_size, "seed": seed}
    if _is_complete(out_dir, params):
        return paths
    if image_size < 2 * MAX_SIZE:
        raise ValueError(f"image_size must be at least {2 * MAX_SIZE}, got {image_size}")
    (out_dir / MARKER).unlink(missing_ok=True)
    paths["images"].mkdir(parents=True, exist_ok=True)
    pool_rng, test_rng = (np.random.default_rng(s) for s in np.random.SeedSequence(seed).spawn(2))
    pool = _scenes(pool_rng, n_pool, POOL_WEIGHTS, image_size, DUP_FRACTION)
    test = _scenes(test_rng, n_test, TEST_WEIGHTS, image_size, 0.0)
    write_json(paths["pool"], _coco("pool", pool, paths["images"], 0))
    write_json(paths["test"], _coco("test", test, paths["images"], TEST_ID_OFFSET))
    write_json(out_dir / MARKER, params)
    return paths
