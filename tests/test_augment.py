"""train.augment: ssd: draws a pure function of (seed, epoch, index), valid boxes, exact resume."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import pytest
import torch
from workdirs import make_workdir

from al_det import checkpoint, train
from al_det.augment import augment, ssd_transform
from al_det.coco import CategoryMap
from al_det.config import DataConfig, ExperimentConfig, ModelConfig, TrainConfig
from al_det.data import DetectionDataset


@pytest.fixture(autouse=True)
def one_thread() -> None:
    """One intra-op thread: deterministic sums, and no oversubscription of a shared CPU."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def dataset(demo: dict[str, Path], augment: str = "ssd", n: int | None = None) -> DetectionDataset:
    pool = json.loads(Path(demo["pool"]).read_text())
    if n is not None:
        keep = {im["id"] for im in pool["images"][:n]}
        pool = dict(pool, images=pool["images"][:n],
                    annotations=[a for a in pool["annotations"] if a["image_id"] in keep])
    return DetectionDataset(pool, demo["images"], CategoryMap(pool["categories"]), hflip=0.5,
                            seed=11, augment=augment)


def same(a: tuple[torch.Tensor, dict], b: tuple[torch.Tensor, dict]) -> bool:
    return (a[0].shape == b[0].shape and torch.equal(a[0], b[0])
            and torch.equal(a[1]["boxes"], b[1]["boxes"])
            and torch.equal(a[1]["labels"], b[1]["labels"]))


def test_same_seed_epoch_index_same_sample_and_rng_untouched(demo_data: dict) -> None:
    ds = dataset(demo_data, n=4)
    torch.manual_seed(0)
    before = torch.get_rng_state()
    first = ds[(2, 5)]
    assert torch.equal(torch.get_rng_state(), before)  # training's RNG stream is not consumed
    torch.rand(1000)  # whatever state the global RNG is in, the draws are the same
    again = dataset(demo_data, n=4)[(2, 5)]  # a fresh dataset, as in a resumed run or a worker
    assert same(first, again)
    assert not same(first, ds[(2, 6)])  # another epoch, other draws
    assert not same(first, ds[(3, 5)]) and not same(ds[(3, 5)], ds[(3, 6)])
    plain = ds[2]  # an index without an epoch (inference): no augmentation
    assert plain[0].shape == (3, 128, 128) and plain[0].dtype == torch.float32


def test_boxes_stay_inside_and_non_degenerate_and_the_recipe_acts(demo_data: dict) -> None:
    ds = dataset(demo_data, n=20)
    sizes, kept, total = set(), 0, 0
    for epoch in range(3):
        for index in range(len(ds)):
            image, target = ds[(index, epoch)]
            h, w = image.shape[-2:]
            sizes.add((h, w))
            boxes = target["boxes"]
            assert image.dtype == torch.float32 and 0 <= image.min() and image.max() <= 1
            assert boxes.dtype == torch.float32 and boxes.shape[1] == 4
            assert len(boxes) == len(target["labels"]) and target["labels"].dtype == torch.int64
            assert (boxes[:, 0] >= 0).all() and (boxes[:, 1] >= 0).all()
            assert (boxes[:, 2] <= w).all() and (boxes[:, 3] <= h).all()
            assert ((boxes[:, 2:] - boxes[:, :2]) >= 1).all()  # SanitizeBoundingBoxes
            labels = set(target["labels"].tolist())
            assert labels <= set(range(1, 7))
            kept += len(boxes)
            total += len(ds._boxes_labels(ds.images[index])["boxes"])
    assert any(h > 128 for h, _ in sizes) and any(h < 128 for h, _ in sizes)  # zoom-out, crop
    assert 0 < kept < total  # crops drop boxes, but not all of them


def test_zoom_out_fills_with_the_mean_colour_and_keeps_boxes_on_their_pixels() -> None:
    """A grey image with one white box: wherever the recipe puts the box, its pixels are the
    brightest ones, and zoom-out's canvas has the mean colour (before photometric distortion,
    which is checked by switching it off)."""
    from torchvision.transforms import v2

    image = torch.full((3, 60, 80), 60, dtype=torch.uint8)
    image[:, 10:30, 20:50] = 255
    target = {"boxes": torch.tensor([[20.0, 10.0, 50.0, 30.0]]), "labels": torch.tensor([1])}
    geometric = v2.Compose(ssd_transform(0.5).transforms[1:])  # without photometric distortion
    zoomed = 0
    for epoch in range(12):
        out, t = augment(image, target, geometric, 0, epoch, 0)
        if len(t["boxes"]) == 0:
            continue
        x0, y0, x1, y1 = t["boxes"][0].round().int().tolist()
        assert torch.all(out[:, y0:y1, x0:x1] == 1.0), epoch  # the white patch moved with it
        if out.shape[-1] > 80:
            zoomed += 1
            corner = (out[:, 0, 0] * 255).round().tolist()
            assert corner == [123, 117, 104] or corner == [60, 60, 60], corner
    assert zoomed > 0


def test_negative_images_and_the_default_hash_are_unchanged(demo_data: dict) -> None:
    image = torch.zeros((3, 32, 32), dtype=torch.uint8)
    empty = {"boxes": torch.zeros((0, 4)), "labels": torch.zeros(0, dtype=torch.int64)}
    out, t = augment(image, empty, ssd_transform(0.5), 1, 2, 3)
    assert t["boxes"].shape == (0, 4) and t["labels"].shape == (0,)
    # the default (hflip) hashes as before train.augment existed: old checkpoints still resume
    cfg = ExperimentConfig(data=DataConfig(pool="p.json"))
    assert checkpoint.config_hash(cfg, 2, [5, 9]) == "6ed5e35a061c7ad5"
    ssd = ExperimentConfig(data=DataConfig(pool="p.json"), train=TrainConfig(augment="ssd"))
    assert checkpoint.config_hash(ssd, 2, [5, 9]) != "6ed5e35a061c7ad5"
    longer = ExperimentConfig(data=DataConfig(pool="p.json"), train=TrainConfig(min_iters=9))
    assert checkpoint.config_hash(longer, 2, [5, 9]) != "6ed5e35a061c7ad5"


# ------------------------------------------------------------------ kill mid-training, resume


def make_cfg(demo: dict[str, Path], workers: int = 0,
             model: str = "tiny_frcnn") -> ExperimentConfig:
    return ExperimentConfig(
        seed=3, device="cpu",
        data=DataConfig(pool=str(demo["pool"]), pool_images=str(demo["images"])),
        model=ModelConfig(name=model, min_size=64, max_size=64),
        # SSD300 from scratch diverges at the small detector's lr
        train=TrainConfig(epochs=2, batch_size=2, lr=0.01 if model == "tiny_frcnn" else 1e-4,
                          warmup_iters=2, workers=workers,
                          checkpoint_every=100, hflip=0.5, augment="ssd"),
    )


@pytest.mark.parametrize("model", ["tiny_frcnn",
                                   pytest.param("ssd300_vgg16", marks=pytest.mark.slow)])
def test_ssd_recipe_killed_and_resumed_equals_uninterrupted(tmp_path: Path, demo_data: dict,
                                                            model: str) -> None:
    """The recipe's draws resume exactly, on the small detector and on a real SSD300 (from
    scratch, 300 px)."""
    torch.use_deterministic_algorithms(True)
    try:
        full = make_workdir(tmp_path / "full", demo_data)
        train.run_train(full, 0, make_cfg(demo_data, model=model))

        cut = make_workdir(tmp_path / "cut", demo_data)

        def preempt(i: int) -> None:
            if i == 1:  # mid-epoch: the rerun restarts inside epoch 0
                os.kill(os.getpid(), signal.SIGTERM)

        with pytest.raises(train.TrainingInterrupted):
            train.run_train(cut, 0, make_cfg(demo_data, model=model), on_iteration=preempt)
        assert torch.load(cut.cycle(0).last_ckpt, weights_only=True)["iteration"] == 1
        seen = []
        # resumed with a loader worker process: its draws are the main process's
        train.run_train(cut, 0, make_cfg(demo_data, workers=1, model=model),
                        on_iteration=seen.append)
        assert seen == [2, 3, 4]
    finally:
        torch.use_deterministic_algorithms(False)
    a = torch.load(full.cycle(0).model, weights_only=True)["model"]
    b = torch.load(cut.cycle(0).model, weights_only=True)["model"]
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a), "resumed weights differ"
