"""Benchmark: train a detector from scratch on the synthetic demo data, report COCO AP.

Reads (and, if missing, writes) the synthetic dataset of ``al_det.synthetic.generate`` under
``--data``; writes nothing else. A minimal training loop (SGD, linear warmup, step decay,
horizontal flips) checks that ``tiny_frcnn`` learns the demo data on a CPU in minutes; the
real training loop is ``al_det.train``. Prints iterations/s and the test set's COCO AP.

    python scripts/train_tiny_check.py --data /tmp/syn --epochs 12 --batch 8 --lr 0.02
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from al_det import models, synthetic
from al_det.config import ModelConfig


def load_split(coco_path: Path, images_dir: Path) -> tuple[list, list, list[int], list[int]]:
    """Images as [3, H, W] float tensors, targets with labels 1..K (categories by sorted id)."""
    data = json.loads(coco_path.read_text())
    cat_ids = sorted(c["id"] for c in data["categories"])
    label_of = {cid: i + 1 for i, cid in enumerate(cat_ids)}
    anns: dict[int, list] = {img["id"]: [] for img in data["images"]}
    for ann in data["annotations"]:
        anns[ann["image_id"]].append(ann)
    images, targets, ids = [], [], []
    for img in data["images"]:
        pixels = np.asarray(Image.open(images_dir / img["file_name"]).convert("RGB"))
        images.append(torch.from_numpy(pixels.copy()).permute(2, 0, 1).float() / 255)
        boxes = [[a["bbox"][0], a["bbox"][1], a["bbox"][0] + a["bbox"][2],
                  a["bbox"][1] + a["bbox"][3]] for a in anns[img["id"]]]
        targets.append({
            "boxes": torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4),
            "labels": torch.tensor([label_of[a["category_id"]] for a in anns[img["id"]]],
                                   dtype=torch.int64),
        })
        ids.append(img["id"])
    return images, targets, ids, cat_ids


def hflip(image: torch.Tensor, target: dict) -> tuple[torch.Tensor, dict]:
    width = image.shape[-1]
    boxes = target["boxes"].clone()
    boxes[:, [0, 2]] = width - target["boxes"][:, [2, 0]]
    return image.flip(-1), {**target, "boxes": boxes}


def lr_factor(it: int, total: int, warmup: int, warmup_factor: float = 0.001) -> float:
    """Linear warmup from ``warmup_factor``, then x0.1 at 2/3 and 8/9 of training."""
    if it < warmup:
        alpha = it / warmup
        return warmup_factor * (1 - alpha) + alpha
    return 0.1 ** sum(it >= f * total for f in (2 / 3, 8 / 9))


def train(model: torch.nn.Module, images: list, targets: list, args: argparse.Namespace) -> int:
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.SGD(params, lr=args.lr, momentum=0.9, weight_decay=1e-4)
    per_epoch = len(images) // args.batch
    total = per_epoch * args.epochs
    rng = np.random.default_rng(0)
    model.train()
    start, it = time.time(), 0
    for epoch in range(args.epochs):
        order = rng.permutation(len(images))
        for b in range(per_epoch):
            batch = [(images[i], targets[i]) for i in order[b * args.batch:(b + 1) * args.batch]]
            batch = [hflip(*x) if rng.random() < 0.5 else x for x in batch]
            for group in opt.param_groups:
                group["lr"] = args.lr * lr_factor(it, total, args.warmup)
            losses = model([x for x, _ in batch], [t for _, t in batch])
            loss = sum(losses.values())
            opt.zero_grad()
            loss.backward()
            opt.step()
            it += 1
        print(f"epoch {epoch + 1}/{args.epochs} it {it} loss {loss.item():.3f} "
              f"{it / (time.time() - start):.2f} it/s {time.time() - start:.0f}s wall "
              f"{time.process_time():.0f} CPU-s", flush=True)
    return it


def coco_ap(model: torch.nn.Module, coco_path: Path, images: list, ids: list[int],
            cat_ids: list[int]) -> tuple[float, float]:
    """COCO AP and AP50 of ``model`` on the split, through pycocotools."""
    results = []
    model.eval()
    with torch.no_grad():
        for start in range(0, len(images), 16):
            outs = model(images[start:start + 16])
            for image_id, out in zip(ids[start:start + 16], outs, strict=True):
                for box, score, label in zip(out["boxes"].tolist(), out["scores"].tolist(),
                                             out["labels"].tolist(), strict=True):
                    results.append({"image_id": image_id, "category_id": cat_ids[label - 1],
                                    "bbox": [box[0], box[1], box[2] - box[0], box[3] - box[1]],
                                    "score": score})
    if not results:
        return 0.0, 0.0
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO(str(coco_path))
        ev = COCOeval(gt, gt.loadRes(results), "bbox")
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return float(ev.stats[0]), float(ev.stats[1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, default=Path("/tmp/al_det_synthetic"))
    parser.add_argument("--model", default="tiny_frcnn")
    parser.add_argument("--size", type=int, default=128, help="min_size = max_size")
    parser.add_argument("--epochs", type=int, default=12)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--lr", type=float, default=0.02)
    parser.add_argument("--warmup", type=int, default=100)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    paths = synthetic.generate(args.data)
    pool = load_split(paths["pool"], paths["images"])
    test = load_split(paths["test"], paths["images"])
    cfg = ModelConfig(name=args.model, min_size=args.size, max_size=args.size)
    model = models.build_model(cfg, num_classes=len(pool[3]))
    start, cpu_start = time.time(), time.process_time()
    iters = train(model, pool[0], pool[1], args)
    # CPU seconds, unlike wall time, hold up on a machine shared with other jobs.
    seconds, cpu = time.time() - start, time.process_time() - cpu_start
    ap, ap50 = coco_ap(model, paths["test"], test[0], test[2], test[3])
    print(f"model {args.model}: {iters} iterations (batch {args.batch}, {args.epochs} epochs) in "
          f"{seconds:.0f}s wall, {cpu:.0f} CPU-s on {args.threads} threads "
          f"({cpu / iters:.2f} CPU-s/it): test AP {ap:.3f} AP50 {ap50:.3f}")


if __name__ == "__main__":
    main()
