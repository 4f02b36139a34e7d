"""Synthetic demo detection dataset for al-det: coloured shapes on cluttered backgrounds.

Reads nothing. :func:`generate` writes, under ``out_dir``:

* ``images/pool_NNNNNN.png`` and ``images/test_NNNNNN.png``: RGB PNG images;
* ``pool.json`` and ``test.json``: COCO detection JSON (``images``, ``annotations``,
  ``categories``; ``file_name`` is relative to ``images/``);
* ``.complete``: a marker JSON with the generation parameters, written last.

The data is built so that choosing images well matters, as on COCO: shape classes with
non-contiguous category ids and a long-tailed frequency in the pool (the test split is
balanced, so rare classes weigh fully in COCO AP), textured backgrounds with distractor lines
and blobs, and a share of pool images that are near-duplicates (small shift, fresh noise) of
other pool images. A :class:`Profile` says how many classes, how steep the tail, how busy the
scenes, how small the objects and how the duplicates fall: ``shapes`` (six classes, the
default) or ``coco_like`` (ten classes, crowds of look-alike objects, duplicates clustered on
busy scenes; the demo's). Pool near-duplicates carry an extra image field
``near_duplicate_of`` (the id of the image they copy).

Output is byte-identical for a given set of parameters. All files are written atomically; a
complete dataset with the same parameters is not regenerated. Uses numpy and Pillow only.
"""

from __future__ import annotations

import io
import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from al_det.atomic import TMP_PREFIX, write_json

MARKER = ".complete"
FORMAT_VERSION = 1

Category = tuple[int, str, tuple[int, int, int]]  # id, name, base RGB colour
Footprint = tuple[int, int, int]  # x, y, side of the square an object is drawn in

# Ids deliberately non-contiguous; a profile picks its classes by id. The first six are well
# separated in hue, the last four sit between two of them (orange between red and yellow, ...),
# so telling those apart takes shape as well as colour.
CATEGORIES: list[Category] = [
    (3, "circle", (230, 40, 40)),
    (7, "square", (40, 90, 240)),
    (11, "triangle", (40, 210, 60)),
    (20, "ring", (250, 200, 20)),
    (42, "cross", (220, 40, 220)),
    (57, "diamond", (30, 220, 230)),
    (61, "star", (250, 120, 20)),
    (64, "hexagon", (140, 60, 230)),
    (72, "half_disc", (150, 240, 40)),
    (88, "frame", (240, 90, 150)),
]
MAX_OVERLAP = 0.1  # intersection / smaller-box area allowed between two objects
TEST_ID_OFFSET = 100_000


@dataclass(frozen=True)
class Profile:
    """How a synthetic dataset is drawn. Classes are listed most common first in the pool."""

    order: tuple[int, ...]  # category ids of CATEGORIES, most common in the pool first
    pool_weights: tuple[float, ...]  # relative class frequency in the pool (the test is uniform)
    count_probs: tuple[float, ...]  # probability of 0, 1, 2, ... objects in an image
    min_size: int  # object side in px, drawn log-uniformly between these
    max_size: int
    dup_fraction: float  # share of pool images that are near-duplicates of another
    # Near-duplicate bases are drawn with probability ~ (objects in the base)^busy_power; 0
    # draws them uniformly. Above 0 the busy scenes (the ones uncertainty sampling likes)
    # come in clusters of copies, as the many near-identical street scenes of COCO do.
    busy_power: float
    crowd_fraction: float = 0.0  # share of images that hold a crowd (see _crowd)
    crowd_size: tuple[int, int] = (0, 0)  # objects in a crowd, inclusive range

    @property
    def classes(self) -> int:
        return len(self.order)

    @property
    def categories(self) -> list[Category]:
        by_id = {c[0]: c for c in CATEGORIES}
        return [by_id[i] for i in self.order]


# coco_like's classes by pool frequency: the look-alike colours (orange star among red circles,
# ...) come early, so its rarest classes are told apart by colour too
COCO_LIKE_ORDER = (3, 61, 7, 64, 11, 72, 88, 20, 42, 57)


def _zipf(n: int, exponent: float) -> tuple[float, ...]:
    return tuple(float(k) ** -exponent for k in range(1, n + 1))


PROFILES: dict[str, Profile] = {
    # Six classes, most common / rarest 10x, 0-6 objects of 10-50 px, a quarter near-duplicates.
    "shapes": Profile((3, 7, 11, 20, 42, 57), (1.0, 0.55, 0.33, 0.2, 0.14, 0.1),
                      (0.08, 0.17, 0.2, 0.2, 0.15, 0.12, 0.08), 10, 50, 0.25, 0.0),
    # Closer to COCO, where picking images well matters: ten classes with a Zipf tail (most
    # common / rarest ~32x), busier scenes (0-8 objects, 4.3 on average) of smaller objects
    # (7-44 px), a quarter of the scenes crowds of one class (6-10 look-alike objects), and
    # 40% near-duplicates clustered on the busy scenes.
    "coco_like": Profile(COCO_LIKE_ORDER, _zipf(10, 1.5),
                         (0.04, 0.08, 0.12, 0.15, 0.16, 0.15, 0.12, 0.10, 0.08), 7, 44, 0.4, 2.0,
                         crowd_fraction=0.25, crowd_size=(6, 10)),
}
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
    elif name == "star":
        d.polygon(_star_points(e), fill=255)
    elif name == "hexagon":
        d.regular_polygon((e / 2, e / 2, e / 2), 6, fill=255)
    elif name == "half_disc":
        d.pieslice([0, 0, e, 2 * e], 180, 360, fill=255)
    elif name == "frame":
        t = max(2.0, 0.22 * s)
        d.rectangle([0, 0, e, e], fill=255)
        d.rectangle([t, t, e - t, e - t], fill=0)
    else:
        raise ValueError(f"unknown shape {name!r}")
    return mask


def _star_points(e: float) -> list[tuple[float, float]]:
    """A five-pointed star inscribed in the square [0, e]^2, its inner radius 0.45."""
    angles = -np.pi / 2 + np.arange(10) * np.pi / 5
    radii = np.where(np.arange(10) % 2 == 0, 1.0, 0.45) * e / 2
    return [(float(e / 2 + r * np.cos(a)), float(e / 2 + r * np.sin(a)))
            for r, a in zip(radii, angles, strict=True)]


def _overlaps(box: Footprint, placed: list[Footprint]) -> bool:
    """True if square ``box`` (x, y, side) overlaps any placed box beyond ``MAX_OVERLAP``."""
    x, y, s = box
    for px, py, ps in placed:
        iw = min(x + s, px + ps) - max(x, px)
        ih = min(y + s, py + ps) - max(y, py)
        if iw > 0 and ih > 0 and iw * ih > MAX_OVERLAP * min(s, ps) ** 2:
            return True
    return False


def _place(rng: np.random.Generator, n: int, size: int, side: Callable[[], int],
           placed: list[Footprint]) -> list[Footprint]:
    """Sample up to ``n`` footprints of ``side()`` px, each overlapping ``placed`` and the
    others at most mildly; return the new ones (``placed`` grows by them)."""
    new: list[Footprint] = []
    for _ in range(n):
        for _attempt in range(30):
            s = side()
            x, y = (int(v) for v in rng.integers(0, size - s + 1, 2))
            if not _overlaps((x, y, s), placed):
                placed.append((x, y, s))
                new.append((x, y, s))
                break
    return new


def _scatter(rng: np.random.Generator, n: int, size: int, p: np.ndarray, profile: Profile,
             placed: list[Footprint]) -> list[tuple[Category, Footprint, tuple[int, ...]]]:
    """``n`` objects of classes drawn from ``p``, each its own size and colour."""
    lo, hi = np.log(profile.min_size), np.log(profile.max_size)
    footprints = _place(rng, n, size, lambda: round(np.exp(rng.uniform(lo, hi))), placed)
    categories, items = profile.categories, []
    for fp in footprints:
        cat = categories[rng.choice(len(p), p=p)]
        items.append((cat, fp, _object_colour(rng, cat[2])))
    return items


def _crowd(rng: np.random.Generator, size: int, p: np.ndarray, profile: Profile,
           placed: list[Footprint]) -> list[tuple[Category, Footprint, tuple[int, ...]]]:
    """A crowd: several objects of one class, one colour and about one size (a flock, a
    queue of cars): many instances, little to learn from each after the first."""
    cat = profile.categories[rng.choice(len(p), p=p)]
    n = int(rng.integers(profile.crowd_size[0], profile.crowd_size[1] + 1))
    side = np.exp(rng.uniform(np.log(profile.min_size), np.log(profile.max_size / 2)))
    colour = _object_colour(rng, cat[2])
    footprints = _place(rng, n, size, lambda: round(side * rng.uniform(0.85, 1.15)), placed)
    return [(cat, fp, colour) for fp in footprints]


def _object_colour(rng: np.random.Generator, base: tuple[int, int, int]) -> tuple[int, ...]:
    return tuple(int(np.clip(c + rng.normal(0, 15), 0, 255)) for c in base)


def _render(rng: np.random.Generator, weights: np.ndarray, size: int,
            profile: Profile) -> Scene:
    """Render one cluttered image with objects drawn from class ``weights``."""
    img = Image.fromarray(_background(rng, size).astype(np.uint8), mode="RGB")
    _draw_distractors(ImageDraw.Draw(img), rng, size)
    p = weights / weights.sum()
    placed: list[Footprint] = []
    if profile.crowd_fraction and rng.random() < profile.crowd_fraction:
        items = _crowd(rng, size, p, profile, placed)
        items += _scatter(rng, int(rng.integers(0, 3)), size, p, profile, placed)
    else:
        counts = np.asarray(profile.count_probs)
        items = _scatter(rng, int(rng.choice(len(counts), p=counts)), size, p, profile, placed)
    objects = []
    for (cid, name, _), (x, y, s), colour in items:
        mask = _shape_mask(name, s)
        img.paste(colour, (x, y), mask)
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
            dup_fraction: float, profile: Profile) -> list[Scene]:
    """Render ``n`` scenes, a ``dup_fraction`` share near-duplicates, in a shuffled order."""
    n_dup = round(n * dup_fraction)
    scenes = [_render(rng, weights, size, profile) for _ in range(n - n_dup)]
    busy = np.array([len(s.objects) for s in scenes], dtype=float) ** profile.busy_power
    for _ in range(n_dup):
        if profile.busy_power:
            i = int(rng.choice(n - n_dup, p=busy / busy.sum()))
        else:  # the original draw, kept so the "shapes" profile stays byte-identical
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


def _coco(split: str, scenes: list[Scene], images_dir: Path, id_offset: int,
          profile: Profile) -> dict[str, Any]:
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
                  for cid, name, _ in sorted(profile.categories)]
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
             seed: int = 0, profile: str = "shapes") -> dict[str, Path]:
    """Write the synthetic dataset under ``out_dir`` unless already complete; return its paths.

    ``profile`` names an entry of :data:`PROFILES`.

    Returns ``{"pool": out_dir/pool.json, "test": out_dir/test.json, "images": out_dir/images}``.
    """
    out_dir = Path(out_dir)
    paths = {"pool": out_dir / "pool.json", "test": out_dir / "test.json",
             "images": out_dir / "images"}
    params = {"version": FORMAT_VERSION, "n_pool": n_pool, "n_test": n_test,
              "image_size": image_size, "seed": seed, "profile": profile}
    if _is_complete(out_dir, params):
        return paths
    prof = PROFILES[profile]
    if image_size < 2 * prof.max_size:
        raise ValueError(f"image_size must be at least {2 * prof.max_size}, got {image_size}")
    (out_dir / MARKER).unlink(missing_ok=True)
    paths["images"].mkdir(parents=True, exist_ok=True)
    pool_rng, test_rng = (np.random.default_rng(s) for s in np.random.SeedSequence(seed).spawn(2))
    pool = _scenes(pool_rng, n_pool, np.asarray(prof.pool_weights), image_size,
                   prof.dup_fraction, prof)
    test = _scenes(test_rng, n_test, np.ones(prof.classes), image_size, 0.0, prof)
    write_json(paths["pool"], _coco("pool", pool, paths["images"], 0, prof))
    write_json(paths["test"], _coco("test", test, paths["images"], TEST_ID_OFFSET,
                                    prof))
    write_json(out_dir / MARKER, params)
    return paths
