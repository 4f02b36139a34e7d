"""Learning Loss's loss-prediction module (Yoo and Kweon, CVPR 2019; docs/acquisition.md).

Reads and writes nothing. :func:`attach` adds a :class:`LossPredictionHead` to a built detector
as its submodule ``loss_prediction``, so it is in the detector's state dict (``model.pth``,
``last.pth``) and its parameters in the optimizer. Per feature map it reads (:func:`levels`:
the FPN levels P2-P5 of Faster R-CNN, P3-P5 of RetinaNet and FCOS, whose FPNs start at P3;
SSD300's six source maps; the small demo detector's three FPN levels; FPN extra blocks, the
max-pooled ``pool`` and RetinaNet/FCOS's ``p6``/``p7``, are left out), global average pooling, a
linear layer to 128 units and a ReLU; the per-map vectors are concatenated and a linear layer
gives ``l_hat``, the image's predicted loss.

:class:`LossPredictionTrainer` is the module training runs (and DDP wraps, so the head's
gradients are synced with the detector's): the stock training forward with per-image losses
(:func:`al_det.models.forward_train`), then the head on the same forward's maps, detached when
asked, and the weighted :func:`ranking_loss` as one more loss term, ``loss_ll``.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Mapping

import torch
from torch import Tensor, nn

ATTR = "loss_prediction"  # the detector's submodule
HIDDEN = 128
EXTRA_LEVELS = frozenset({"pool", "p6", "p7"})  # FPN extra blocks: not read
PROBE_SIZE = 320  # side of the blank image that finds the maps' names and widths (SSD: >= 260)
# the target l: each image's classification plus box-regression loss (FCOS's centerness and
# Faster R-CNN's RPN terms are not part of it)
TARGET_TERMS = ("loss_classifier", "loss_box_reg", "classification", "bbox_regression")
LOSS_NAME = "loss_ll"


class LossPredictionHead(nn.Module):
    """GAP -> Linear(C_l, 128) -> ReLU per map, concatenated, Linear(128 L, 1): ``[B]``."""

    def __init__(self, levels: list[str], channels: list[int]):
        super().__init__()
        self.levels = tuple(levels)
        self.fcs = nn.ModuleList(nn.Linear(c, HIDDEN) for c in channels)
        self.out = nn.Linear(HIDDEN * len(channels), 1)

    def forward(self, maps: Mapping[str, Tensor]) -> Tensor:
        pooled = [torch.relu(fc(maps[k].mean(dim=(2, 3)))) for k, fc in zip(self.levels, self.fcs,
                                                                           strict=True)]
        return self.out(torch.cat(pooled, dim=1)).squeeze(1)


def levels(maps: Mapping[str, Tensor]) -> list[str]:
    """The names of the maps the module reads, finest first (see the module docstring)."""
    return [k for k in maps if k not in EXTRA_LEVELS]


def attach(model: nn.Module) -> None:
    """Add the head to ``model`` (a built detector), sized by its backbone's maps of one blank
    image (in eval mode: no batch-norm statistic changes, no random draw)."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            maps = model.backbone(torch.zeros(1, 3, PROBE_SIZE, PROBE_SIZE))
    finally:
        model.train(was_training)
    if isinstance(maps, Tensor):
        maps = OrderedDict([("0", maps)])
    names = levels(maps)
    setattr(model, ATTR, LossPredictionHead(names, [maps[k].shape[1] for k in names]))


def head_of(model: nn.Module) -> LossPredictionHead | None:
    return getattr(model, ATTR, None)


def ranking_loss(l_hat: Tensor, target: Tensor, margin: float) -> Tensor:
    """Learning Loss's pairwise loss on a batch of ``B`` images: image ``i`` is paired with
    ``B-1-i`` (``i < B // 2``: an odd last batch leaves its middle image out), ``sign`` is +1
    where ``l_i > l_j`` else -1, and the loss is the mean over pairs of
    ``max(0, margin - sign * (l_hat_i - l_hat_j))``; ``target`` is detached here. A batch of one
    image has no pair: the loss is 0 (still a function of ``l_hat``, for DDP's gradients)."""
    l_hat = l_hat.float()
    target = target.detach().float()
    half = len(l_hat) // 2
    if half == 0:
        return l_hat.sum() * 0.0
    i = torch.arange(half, device=l_hat.device)
    j = len(l_hat) - 1 - i
    sign = torch.where(target[i] > target[j], 1.0, -1.0)
    return torch.clamp(margin - sign * (l_hat[i] - l_hat[j]), min=0).mean()


def target_losses(per_image: Mapping[str, Tensor]) -> Tensor:
    """``[B]``: each image's own detection loss, the target ``l`` (:data:`TARGET_TERMS`)."""
    return sum(per_image[name] for name in sorted(per_image) if name in TARGET_TERMS)


class LossPredictionTrainer(nn.Module):
    """The training forward with the loss-prediction module: the detector's stock loss terms
    plus ``loss_ll = weight * ranking_loss``; ``detach`` cuts the module's input from the
    backbone (after ``detach_after`` of training)."""

    def __init__(self, detector: nn.Module, weight: float, margin: float):
        super().__init__()
        if head_of(detector) is None:
            raise ValueError("the detector has no loss-prediction module: build it with "
                             "model.loss_prediction.enabled")
        self.detector = detector
        self.weight, self.margin = float(weight), float(margin)

    def forward(self, images: list[Tensor], targets: list[dict[str, Tensor]],
                detach: bool = False) -> dict[str, Tensor]:
        from al_det.models import forward_train

        out = forward_train(self.detector, images, targets)
        head = head_of(self.detector)
        maps = {k: out.maps[k].detach() if detach else out.maps[k] for k in head.levels}
        l_hat = head(maps)
        loss = ranking_loss(l_hat, target_losses(out.per_image), self.margin)
        return {**out.losses, LOSS_NAME: self.weight * loss}


def predict(model: nn.Module, maps: Mapping[str, Tensor]) -> Tensor | None:
    """``[B]`` float32: the head's ``l_hat`` of a batch's maps, or None without a head."""
    head = head_of(model)
    return None if head is None else head(maps).float()
