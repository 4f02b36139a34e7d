"""Datasets and samplers: targets, deterministic flips, world-size-independent batches, shards."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from al_det import data
from al_det.coco import CategoryMap
from al_det.dist import shard_indices


@pytest.fixture()
def pool(demo_data: dict) -> dict:
    return json.loads(Path(demo_data["pool"]).read_text())


def test_targets_are_xyxy_model_labels_without_crowd(pool: dict, demo_data: dict) -> None:
    cmap = CategoryMap(pool["categories"])
    im = next(i for i in pool["images"]
              if sum(a["image_id"] == i["id"] for a in pool["annotations"]) >= 2)
    anns = [a for a in pool["annotations"] if a["image_id"] == im["id"]]
    crowd = dict(anns[0], id=10**9, iscrowd=1)
    coco = {"images": [im], "annotations": anns + [crowd], "categories": pool["categories"]}
    ds = data.DetectionDataset(coco, demo_data["images"], cmap)
    image, target = ds[0]
    assert image.dtype == torch.float32 and image.shape == (3, im["height"], im["width"])
    assert 0.0 <= image.min() and image.max() <= 1.0
    x, y, w, h = anns[0]["bbox"]
    assert target["boxes"].dtype == torch.float32 and len(target["boxes"]) == len(anns)
    assert target["boxes"][0].tolist() == pytest.approx([x, y, x + w, y + h])
    assert target["labels"].dtype == torch.int64
    assert target["labels"].tolist() == [cmap.label_of(a["category_id"]) for a in anns]
    assert target["image_id"] == im["id"]


def test_negative_image_has_empty_boxes(pool: dict, demo_data: dict) -> None:
    im = pool["images"][0]
    ds = data.DetectionDataset({"images": [im], "annotations": []}, demo_data["images"],
                               CategoryMap(pool["categories"]))
    _, target = ds[0]
    assert target["boxes"].shape == (0, 4) and target["labels"].shape == (0,)


def test_flip_is_deterministic_and_mirrors_boxes(pool: dict, demo_data: dict) -> None:
    cmap = CategoryMap(pool["categories"])
    plain = data.DetectionDataset(pool, demo_data["images"], cmap)
    always = data.DetectionDataset(pool, demo_data["images"], cmap, hflip=1.0, seed=5)
    image, target = plain[3]
    flipped, ftarget = always[(3, 0)]
    assert torch.equal(flipped, image.flip(-1))
    w = image.shape[-1]
    assert torch.equal(ftarget["boxes"][:, 0], w - target["boxes"][:, 2])
    assert torch.equal(ftarget["boxes"][:, 2], w - target["boxes"][:, 0])
    decisions = [data.flip_decision(7, e, i, 0.5) for e in range(3) for i in range(40)]
    assert 30 < sum(decisions) < 90  # about half
    assert decisions != [data.flip_decision(8, e, i, 0.5) for e in range(3) for i in range(40)]
    assert decisions[:40] != decisions[40:80]  # each epoch flips other images
    assert not any(data.flip_decision(7, 0, i, 0.0) for i in range(40))
    # the dataset flips an item exactly when flip_decision says so (the resume relies on it)
    half = data.DetectionDataset(pool, demo_data["images"], cmap, hflip=0.5, seed=7)
    epoch1 = decisions[40:80]
    chosen = [i for i in range(40) if epoch1[i]][:3] + [i for i in range(40) if not epoch1[i]][:3]
    assert len(chosen) == 6  # flipped and unflipped items both checked
    for i in chosen:
        got, _ = half[(i, 1)]
        want = plain[i][0]
        assert torch.equal(got, want.flip(-1) if epoch1[i] else want), i


@pytest.mark.parametrize("n,batch", [(11, 4), (12, 4), (5, 8), (9, 4)])
def test_global_batches_do_not_depend_on_world_size(n: int, batch: int) -> None:
    reference = data.global_batches(n, batch, seed=1, epoch=2)
    assert sorted(i for b in reference for i in b) == list(range(n))  # nothing dropped
    for world in (1, 2, 4):
        parts = [list(data.TrainBatchSampler(n, batch, 1, 2, rank, world)) for rank in range(world)]
        assert len({len(p) for p in parts}) == 1  # every rank runs the same number of steps
        for step, global_batch in enumerate(reference):
            got = [i for p in parts for i, _epoch in p[step]]
            if len(global_batch) >= world:
                assert got == global_batch  # the rank slices, in rank order, are the batch
            else:  # topped up so that no rank is empty, with the epoch's first images
                assert got[:len(global_batch)] == global_batch and len(got) == world
            assert all(len(p[step]) >= 1 for p in parts)


def test_epochs_differ_and_resume_starts_mid_epoch() -> None:
    first = data.global_batches(20, 4, 1, 0)
    assert first != data.global_batches(20, 4, 1, 1) and first != data.global_batches(20, 4, 2, 0)
    torch.manual_seed(99)
    np.random.seed(99)  # the order is a function of (seed, epoch), not of the global RNGs
    assert data.global_batches(20, 4, 1, 0) == first
    full = list(data.TrainBatchSampler(10, 3, seed=0, epoch=1, rank=1, world=3))
    tail = list(data.TrainBatchSampler(10, 3, seed=0, epoch=1, rank=1, world=3, start=2))
    assert tail == full[2:] and len(full) == 4
    assert all(epoch == 1 for b in full for _, epoch in b)


def test_inference_shards_are_exact(pool: dict, demo_data: dict) -> None:
    ids = []
    for rank in range(3):
        loader = data.inference_loader(pool, demo_data["images"],
                                       shard_indices(len(pool["images"]), rank, 3), batch_size=4)
        for images, image_ids in loader:
            assert len(images) == len(image_ids) <= 4
            ids.extend(image_ids)
    assert ids == [im["id"] for im in pool["images"]]


def test_flip_decision_matches_hash_not_global_rng() -> None:
    torch.manual_seed(0)
    np.random.seed(0)
    a = [data.flip_decision(1, 0, i, 0.5) for i in range(10)]
    torch.manual_seed(1)
    np.random.seed(1)
    assert a == [data.flip_decision(1, 0, i, 0.5) for i in range(10)]
