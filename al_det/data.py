"""Datasets and loaders over COCO split dicts: training batches and exact inference shards.

Reads the image files a COCO dict names (through :func:`al_det.images.load_image`, whose errors
name the file and image id); writes nothing. Images come out as float ``[3, H, W]`` tensors in
``[0, 1]``, targets as ``{"boxes": float32 [N, 4] xyxy, "labels": int64 [N] (model labels
1..K), "image_id": int}``; ``iscrowd`` annotations are kept for evaluation but never trained on.

Training randomness is a pure function of ``(seed, epoch, position)``, not of any RNG state:
the epoch's order is a permutation seeded by ``(seed, epoch)`` and each image's horizontal flip
is decided by a hash of ``(seed, epoch, index)`` (with ``augment="ssd"``, SSD's whole recipe,
:mod:`al_det.augment`, draws from a torch generator seeded by the same triple). So a run
resumed at any iteration repeats exactly what the uninterrupted run would have done, and the
data order does not depend on the number of processes (every rank takes its slice of the same
global batch).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from al_det.coco import CategoryMap
from al_det.dist import shard_indices
from al_det.errors import AlDetError
from al_det.images import load_image


def flip_decision(seed: int, epoch: int, index: int, prob: float) -> bool:
    """Whether dataset item ``index`` is flipped in ``epoch``: deterministic, no RNG state."""
    if prob <= 0.0:
        return False
    u = np.random.default_rng([seed, epoch, index]).random()
    return bool(u < prob)


def epoch_order(n: int, seed: int, epoch: int) -> np.ndarray:
    """The permutation of ``range(n)`` used in ``epoch``."""
    return np.random.default_rng([seed, epoch, 0x5EED]).permutation(n)


class DetectionDataset(Dataset):
    """Images of a COCO split dict with their training targets.

    Items are looked up by ``index`` (no augmentation) or by ``(index, epoch)`` as the
    training batch sampler yields them, so the flip (``augment="hflip"``) or SSD's recipe
    (``augment="ssd"``, with flips of probability ``hflip``) depends only on
    ``(seed, epoch, index)``. Without a ``categories`` map the target holds only ``image_id``
    (inference on an unlabeled pool).
    """

    def __init__(self, coco: dict, images_root: str | Path, categories: CategoryMap | None = None,
                 hflip: float = 0.0, seed: int = 0, augment: str = "hflip"):
        self.images = coco["images"]
        self.root = Path(images_root)
        self.categories = categories
        self.hflip = hflip
        self.seed = seed
        self.augment = augment
        self._ssd = None
        if augment == "ssd" and categories is not None:
            from al_det import augment as ssd

            self._ssd = ssd.ssd_transform(hflip)
        self.anns: dict[Any, list[dict]] = {im["id"]: [] for im in self.images}
        for ann in coco.get("annotations", []):
            if not ann.get("iscrowd", 0):  # crowd regions are for evaluation only
                self.anns[ann["image_id"]].append(ann)

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, key: int | tuple[int, int]) -> tuple[torch.Tensor, dict]:
        index, epoch = key if isinstance(key, tuple) else (key, None)
        record = self.images[index]
        pil = load_image(self.root / record["file_name"], record["id"])
        image = torch.from_numpy(np.asarray(pil, dtype=np.uint8).copy()).permute(2, 0, 1)
        target: dict[str, Any] = {"image_id": record["id"]}
        if self.categories is not None:
            target.update(self._boxes_labels(record))
        if epoch is not None and self._ssd is not None:
            from al_det.augment import augment

            return augment(image, target, self._ssd, self.seed, epoch, index)
        image = image.float().div_(255.0)
        if epoch is not None and flip_decision(self.seed, epoch, index, self.hflip):
            image, target = hflip(image, target)
        return image, target

    def _boxes_labels(self, record: dict) -> dict[str, torch.Tensor]:
        anns = self.anns[record["id"]]
        boxes = torch.tensor([a["bbox"] for a in anns], dtype=torch.float32).reshape(-1, 4)
        boxes[:, 2:] += boxes[:, :2]  # COCO xywh -> xyxy
        # load_coco lets boxes stick out by a pixel of rounding; the detector wants them inside
        boxes[:, 0::2] = boxes[:, 0::2].clamp(0, float(record["width"]))
        boxes[:, 1::2] = boxes[:, 1::2].clamp(0, float(record["height"]))
        labels = [self.categories.label_of(a["category_id"]) for a in anns]
        return {"boxes": boxes, "labels": torch.tensor(labels, dtype=torch.int64)}


def hflip(image: torch.Tensor, target: dict) -> tuple[torch.Tensor, dict]:
    """Mirror an image and its boxes left-right."""
    image = image.flip(-1)
    if "boxes" in target:
        width = image.shape[-1]
        boxes = target["boxes"].clone()
        boxes[:, [0, 2]] = width - target["boxes"][:, [2, 0]]
        target = {**target, "boxes": boxes}
    return image, target


def collate(batch: list[tuple[torch.Tensor, dict]]) -> tuple[list[torch.Tensor], list[dict]]:
    """Images and targets as two lists (detectors take images of different sizes)."""
    return [b[0] for b in batch], [b[1] for b in batch]


def global_batches(n: int, batch_size: int, seed: int, epoch: int) -> list[list[int]]:
    """The epoch's global batches: its permutation cut into ``batch_size`` pieces, last partial."""
    order = epoch_order(n, seed, epoch).tolist()
    return [order[i:i + batch_size] for i in range(0, n, batch_size)]


def rank_slice(batch: list[int], rank: int, world: int, order: list[int]) -> list[int]:
    """This rank's part of a global batch: contiguous, sizes differing by at most one.

    A last partial batch smaller than ``world`` would leave a rank without images, which DDP
    cannot handle; it is topped up with the first images of the epoch's order (at most
    ``world - 1`` repeats per epoch, only then).
    """
    if len(batch) < world:
        batch = batch + [order[i % len(order)] for i in range(world - len(batch))]
    return [batch[i] for i in shard_indices(len(batch), rank, world)]


class TrainBatchSampler(Sampler):
    """One epoch's batches of ``(index, epoch)`` for one rank, from iteration ``start`` on.

    Iteration ``i`` of the epoch uses global batch ``i`` (``batch_size`` images, the last one
    possibly fewer); the rank yields its slice. Nothing is dropped and the global batches are
    the same for every world size.
    """

    def __init__(self, n: int, batch_size: int, seed: int, epoch: int, rank: int = 0,
                 world: int = 1, start: int = 0):
        if n <= 0:
            raise ValueError("TrainBatchSampler needs at least one image")
        self.n, self.batch_size, self.seed, self.epoch = n, batch_size, seed, epoch
        self.rank, self.world, self.start = rank, world, start

    def __len__(self) -> int:
        return max(0, -(-self.n // self.batch_size) - self.start)

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        batches = global_batches(self.n, self.batch_size, self.seed, self.epoch)
        order = [i for b in batches for i in b]
        for batch in batches[self.start:]:
            yield [(i, self.epoch) for i in rank_slice(batch, self.rank, self.world, order)]


def train_loader(dataset: DetectionDataset, batch_size: int, epoch: int, *, rank: int = 0,
                 world: int = 1, start: int = 0, workers: int = 0,
                 pin_memory: bool = False) -> DataLoader:
    """A fresh (non-persistent) loader over one epoch of ``dataset`` from iteration ``start``."""
    sampler = TrainBatchSampler(len(dataset), batch_size, dataset.seed, epoch, rank, world, start)
    # A loader draws its workers' base seed from this generator, not the global torch RNG,
    # so creating one mid-epoch on resume leaves the training RNG stream untouched.
    generator = torch.Generator().manual_seed(dataset.seed * 1_000_003 + epoch)
    return DataLoader(dataset, batch_sampler=sampler, collate_fn=collate, num_workers=workers,
                      pin_memory=pin_memory, generator=generator)


def _ids_collate(batch: list[tuple[torch.Tensor, dict]]) -> tuple[list[torch.Tensor], list]:
    return [b[0] for b in batch], [b[1]["image_id"] for b in batch]


def inference_loader(coco: dict, images_root: str | Path, indices: Sequence[int],
                     batch_size: int, workers: int = 0) -> DataLoader:
    """Batches ``(images, image_ids)`` of the images at ``indices`` of ``coco``, in that order.

    Pass ``dist.shard_indices(len(coco["images"]), rank, world)`` for an exact shard. No
    annotations are read, so it serves an unlabeled pool as well as a test set.
    """
    dataset = DetectionDataset(coco, images_root)
    subset = torch.utils.data.Subset(dataset, list(indices))
    return DataLoader(subset, batch_size=batch_size, shuffle=False, collate_fn=_ids_collate,
                      num_workers=workers)


def batches(loader: Iterable) -> Iterator:
    """The loader's batches; a data error raised in a worker comes back as its own one line."""
    it = iter(loader)
    while True:
        try:
            batch = next(it)
        except StopIteration:
            return
        except AlDetError as exc:
            raise type(exc)(_worker_message(exc)) from None
        yield batch


def _worker_message(exc: Exception) -> str:
    """The original message of an error re-raised by a DataLoader worker (minus its traceback)."""
    text = str(exc)
    if "Original Traceback" not in text:
        return text
    last = [line for line in text.splitlines() if line.strip()][-1]
    name = f"{type(exc).__module__}.{type(exc).__qualname__}: "
    return last[len(name):] if last.startswith(name) else last
