"""Contact sheets of a report: a cycle's selected images with their predicted boxes, class
names and why each was taken (DivProto's main pass or the fill-up, and the ranking key).

Reads the cycle's ``selection.json``, ``dump/`` (boxes, scores, labels: category ids) and the
pool images (``data.pool_images``); writes one PNG per group atomically.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from al_det.report.collect import Group
from al_det.report.plots import pyplot, save

MAX_IMAGES = 12
BOXES_PER_IMAGE = 6  # the highest-scoring detections drawn per image
MIN_SCORE = 0.3  # drawn solid from this score; an image with none shows its top 3 dashed


def contact_sheet(group: Group, k: int, out: Path) -> Path | None:
    """The sheet of the group's first run that has cycle ``k``'s selection and dump."""
    from al_det.dump import read_dump

    run = next((r for r in group.runs if r.wd.cycle(k).selection.exists()
                and (r.wd.cycle(k).dump / "meta.json").exists()), None)
    if run is None:
        return None
    sel = json.loads(run.wd.cycle(k).selection.read_text())["images"][:MAX_IMAGES]
    dump = read_dump(run.wd.cycle(k).dump, check_features=False, pruned_ok=True)
    row_of = {i: r for r, i in enumerate(dump.image_ids)}
    names = {c["id"]: c["name"] for c in dump.categories}  # labels.npy holds category ids
    plt = pyplot()
    cols = min(4, len(sel))
    rows = (len(sel) + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(3.3 * cols, 3.6 * rows), squeeze=False)
    for ax, item in zip(axes.flat, sel, strict=False):
        r = row_of[item["id"]]
        _draw_image(ax, run.cfg.data.pool_images, dump, r, names)
        key = "" if item.get("key") is None else f" key {item['key']:.3g}"
        ax.set_title(f"#{item['id']} · {item['reason']}{key}", fontsize=9)
    for ax in list(axes.flat)[len(sel):]:
        ax.axis("off")
    fig.suptitle(f"{group.label} (seed {run.cfg.seed}): the first {len(sel)} images "
                 f"selected at cycle {k}, in selection order, with the cycle's predictions "
                 f"(score >= {MIN_SCORE}; dashed: the top 3 of an image with none)",
                 fontsize=10)
    fig.tight_layout()
    return save(fig, out, dpi=80)


def _draw_image(ax, folder: str, dump, r: int, names: dict) -> None:  # noqa: ANN001
    from PIL import Image

    info = dump.images[r]
    try:
        with Image.open(Path(folder) / info["file_name"]) as im:
            ax.imshow(np.asarray(im.convert("RGB")))
    except OSError:
        ax.text(0.5, 0.5, f"{info['file_name']}\nnot readable", ha="center", va="center",
                transform=ax.transAxes, fontsize=8)
    a, b = int(dump.offsets[r]), int(dump.offsets[r + 1])
    scores = np.asarray(dump.scores[a:b], dtype=float)
    order = np.argsort(-scores, kind="stable")
    confident = [j for j in order if scores[j] >= MIN_SCORE][:BOXES_PER_IMAGE]
    shown = confident or list(order[:3])  # none confident: the top 3, dashed
    for j in shown:
        x1, y1, w, h = (float(v) for v in dump.boxes[a + j])  # the dump's boxes are COCO xywh
        ax.add_patch(_rect(x1, y1, w, h, "-" if confident else "--"))
        name = names.get(int(dump.labels[a + j]), str(int(dump.labels[a + j])))
        ax.text(x1, y1, f"{name} {scores[j]:.2f}", fontsize=6, color="yellow",
                va="bottom", bbox={"facecolor": "black", "alpha": 0.5, "pad": 0.5, "lw": 0})
    ax.set_xticks([]), ax.set_yticks([])


def _rect(x: float, y: float, w: float, h: float, ls: str):  # noqa: ANN202 - a Rectangle
    from matplotlib.patches import Rectangle

    return Rectangle((x, y), w, h, fill=False, edgecolor="yellow", lw=1, ls=ls)
