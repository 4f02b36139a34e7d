"""SSD's training augmentation (``train.augment: ssd``), deterministic per sample.

Reads and writes nothing: maps one training sample (a uint8 ``[3, H, W]`` image and its
target with xyxy ``boxes`` and ``labels``) to an augmented one (a float image in ``[0, 1]``).

The recipe is torchvision's detection reference for SSD (``references/detection/presets.py``,
``data_augmentation="ssd"``, after the SSD paper, Liu et al. 2016, Sec. 2.2), built from
``torchvision.transforms.v2``: ``RandomPhotometricDistort`` (brightness, contrast,
saturation, hue, channel order, each with probability 1/2), ``RandomZoomOut`` (with
probability 1/2, the image is placed on a canvas 1x to 4x its size filled with the ImageNet
mean colour (123, 117, 104)), ``RandomIoUCrop`` (SSD's crop: a random patch of 0.3 to 1 of
each side, aspect 1/2 to 2, whose IoU with some box reaches a random choice of 0, 0.1, 0.3,
0.5, 0.7, 0.9, or no crop; boxes whose centre falls outside are dropped),
``RandomHorizontalFlip(train.hflip)``, and ``SanitizeBoundingBoxes`` (boxes under 1 px wide or
high are dropped with their labels).

The draws are a pure function of ``(seed, epoch, index)``: each sample seeds torch's CPU
generator from them inside ``torch.random.fork_rng``, so the global RNG stream of training
(and of any DataLoader worker) is left untouched and a resumed run, with any number of
workers, repeats the uninterrupted run's samples exactly.
"""

from __future__ import annotations

import numpy as np
import torch
from torchvision import tv_tensors
from torchvision.transforms import v2

MEAN_FILL = (123, 117, 104)  # the ImageNet mean in uint8 RGB, as torchvision's presets
_STREAM = 0x55D  # keeps these draws apart from the flips' and the epoch order's streams


def ssd_transform(hflip: float) -> v2.Compose:
    """The SSD recipe of torchvision's detection references on uint8 images."""
    return v2.Compose([
        v2.RandomPhotometricDistort(),
        v2.RandomZoomOut(fill={tv_tensors.Image: MEAN_FILL, "others": 0}),
        v2.RandomIoUCrop(),
        v2.RandomHorizontalFlip(p=hflip),
        v2.SanitizeBoundingBoxes(),
    ])


def sample_seed(seed: int, epoch: int, index: int) -> int:
    """The torch seed of dataset item ``index`` in ``epoch`` (a 63-bit integer)."""
    state = np.random.SeedSequence([seed % 2**32, epoch, index, _STREAM]).generate_state(2)
    return (int(state[0]) << 31 | int(state[1]) >> 1) & (2**63 - 1)


def augment(image: torch.Tensor, target: dict, transform: v2.Compose, seed: int, epoch: int,
            index: int) -> tuple[torch.Tensor, dict]:
    """Apply ``transform`` to a uint8 image and its target with the draws of (seed, epoch, index).

    Returns a float image in ``[0, 1]`` and the target with float32 xyxy ``boxes`` inside the
    image and their int64 ``labels`` (both possibly empty); other target keys are unchanged.
    """
    h, w = image.shape[-2:]
    boxes = tv_tensors.BoundingBoxes(target["boxes"], format="XYXY", canvas_size=(h, w))
    sample = (tv_tensors.Image(image), {**target, "boxes": boxes})
    with torch.random.fork_rng(devices=[]):
        torch.default_generator.manual_seed(sample_seed(seed, epoch, index))
        out_image, out_target = transform(sample)
    out_target = {**out_target,
                  "boxes": out_target["boxes"].as_subclass(torch.Tensor).float().reshape(-1, 4),
                  "labels": out_target["labels"].as_subclass(torch.Tensor)}
    return out_image.as_subclass(torch.Tensor).float().div_(255.0), out_target
