"""Image files named by COCO files: check them all up front, read one for a model.

Reads image files (any format Pillow opens; EXIF orientation applied; palette, 16-bit, float
and alpha images converted to RGB); writes nothing. Problems raise
:class:`~al_det.errors.CocoError` naming the file and image id.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from PIL import Image, ImageOps

from al_det.coco import MAX_LISTED
from al_det.errors import CocoError


def check_images(coco: dict, images_root: Path, source: str, workers: int | None = None) -> None:
    """Open every image of ``coco`` under ``images_root`` (verify, then full decode).

    Reports all missing, unreadable, truncated or wrongly sized images in one CocoError (the
    first few named, plus the count). The declared width/height must match the file, either
    as stored or with width and height swapped by EXIF orientation. Decoding runs in threads
    (Pillow releases the GIL while decoding).
    """
    root = Path(images_root)
    images = coco["images"]
    workers = workers or min(16, os.cpu_count() or 1)
    with ThreadPoolExecutor(max_workers=workers) as pool:
        problems = pool.map(lambda im: _probe(root / im["file_name"], im), images)
        bad = [(im, p) for im, p in zip(images, problems, strict=True) if p]
    if not bad:
        return
    listed = "; ".join(f"{im['file_name']} (image id {im['id']}): {p}"
                       for im, p in bad[:MAX_LISTED])
    more = f"; and {len(bad) - MAX_LISTED} more" if len(bad) > MAX_LISTED else ""
    raise CocoError(f"{source}: {len(bad)} of {len(images)} images under {root} are missing or "
                    f"unreadable: {listed}{more}; restore the files or remove these images "
                    f"from {source}")


def _probe(path: Path, im: dict) -> str | None:
    """Return why the image file at ``path`` is unusable for record ``im``, or None."""
    try:
        with Image.open(path) as img:
            img.verify()  # checks structure/CRC cheaply; the image must be reopened after
        with Image.open(path) as img:
            img.load()  # a full decode: finds truncated files that verify() lets through
            size = img.size
    except FileNotFoundError:
        return "missing"
    except Exception as e:  # noqa: BLE001 - PIL raises many types (OSError, SyntaxError, ...)
        return _describe(e)
    declared = (im["width"], im["height"])
    if declared != size and declared != size[::-1]:
        return f"file is {size[0]}x{size[1]} but the record says {declared[0]}x{declared[1]}"
    return None


def _describe(e: Exception) -> str:
    msg = str(e) or type(e).__name__
    if "truncated" in msg.lower():  # PIL says "image file is truncated" or "Truncated File Read"
        return "truncated"
    return f"unreadable ({msg})"


def load_image(path: Path, image_id: Any) -> Image.Image:
    """Read one image as 8-bit RGB with its EXIF orientation applied.

    Grayscale, palette, RGBA (alpha dropped), CMYK and 16-bit images all become RGB; 16-bit
    values are scaled to 8 bits by the full 16-bit range (the same for every image, so
    images stay comparable; 32-bit integer images are read as 16-bit); float images are
    taken as 0..1. Errors name the file and the image id.
    """
    try:
        with Image.open(path) as img:
            img.load()
            img = ImageOps.exif_transpose(img)
            return _to_rgb(img)
    except FileNotFoundError:
        raise CocoError(f"{path} (image id {image_id}): file not found; restore it or remove "
                        "the image from the COCO file") from None
    except Exception as e:  # noqa: BLE001 - PIL raises many types
        raise CocoError(f"{path} (image id {image_id}): {_describe(e)}; replace the file or "
                        "remove the image from the COCO file") from None


def _to_rgb(img: Image.Image) -> Image.Image:
    if img.mode == "RGB":
        return img
    if img.mode.startswith("I") or img.mode == "F":
        # 16/32-bit grayscale: PIL's convert() would clip at 255, not scale.
        import numpy as np

        arr = np.asarray(img, dtype=np.float64)
        scale = 255.0 / 65535.0 if img.mode != "F" else 255.0
        arr = np.clip(arr * scale, 0, 255).round().astype(np.uint8)
        return Image.fromarray(arr, mode="L").convert("RGB")
    if img.mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")  # avoids PIL's warning on palette transparency
    return img.convert("RGB")
