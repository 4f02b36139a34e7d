"""Training forward passes that also return per-image loss terms and the feature maps.

Reads and writes nothing. Each function replays the stock torchvision training forward
(``model(images, targets)`` in train mode) module by module, in the same order and with the
same random draws (the transform's size choice, the RPN and RoI samplers), so its batch loss
terms equal the stock ones exactly under the same seed; it then computes each image's terms
alone, reusing torchvision's own loss code on one-image slices:

* Faster R-CNN: the box head's ``loss_classifier`` (cross-entropy over the image's sampled
  RoIs) and ``loss_box_reg`` (smooth L1 over its positives, divided by its sampled RoIs).
  The RPN terms stay batch-only.
* RetinaNet: ``classification`` and ``bbox_regression``, each already normalised per image by
  torchvision (the batch term is their mean).
* FCOS, SSD: every term, normalised by the image's own foreground count (torchvision
  normalises the batch sum by the batch's count): the mean of the per-image terms is the
  batch term when the images have equal foreground counts.

Faster R-CNN's per-image terms average back to the batch terms when every image has the same
number of sampled RoIs (``box_batch_size_per_image``, which holds unless an image has fewer
proposals).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torchvision.models.detection.faster_rcnn import FasterRCNN
from torchvision.models.detection.roi_heads import fastrcnn_loss
from torchvision.ops import boxes as box_ops

Targets = list[dict[str, Tensor]]
# (model, targets, head outputs, anchors, feature list) -> torchvision's loss dict
DenseLoss = Callable[[nn.Module, Targets, dict[str, Tensor], list[Tensor], list[Tensor]],
                     dict[str, Tensor]]


@dataclass
class TrainOutputs:
    """What one training forward gives a training-time module (e.g. loss prediction)."""

    losses: dict[str, Tensor]  # the batch terms, as the stock ``model(images, targets)``
    per_image: dict[str, Tensor]  # term -> [B], each image's term computed alone
    maps: OrderedDict[str, Tensor]  # the backbone's feature maps this forward computed


def _backbone_maps(model: nn.Module, tensors: Tensor) -> OrderedDict[str, Tensor]:
    maps = model.backbone(tensors)
    return OrderedDict([("0", maps)]) if isinstance(maps, Tensor) else maps


def rcnn_forward_train(model: FasterRCNN, images: list[Tensor],
                       targets: Targets) -> TrainOutputs:
    """GeneralizedRCNN.forward in train mode, plus the box head's per-image terms."""
    image_list, targets = model.transform(images, targets)
    maps = _backbone_maps(model, image_list.tensors)
    proposals, rpn_losses = model.rpn(image_list, maps, targets)
    heads = model.roi_heads
    proposals, _, labels, regression_targets = heads.select_training_samples(proposals, targets)
    box_features = heads.box_head(heads.box_roi_pool(maps, proposals, image_list.image_sizes))
    class_logits, box_regression = heads.box_predictor(box_features)
    loss_classifier, loss_box_reg = fastrcnn_loss(class_logits, box_regression, labels,
                                                  regression_targets)
    counts = [len(lab) for lab in labels]
    alone = [
        fastrcnn_loss(logits, reg, [lab], [reg_target])
        for logits, reg, lab, reg_target in zip(class_logits.split(counts),
                                                box_regression.split(counts), labels,
                                                regression_targets, strict=True)
    ]
    per_image = {"loss_classifier": torch.stack([a[0] for a in alone]),
                 "loss_box_reg": torch.stack([a[1] for a in alone])}
    losses = {"loss_classifier": loss_classifier, "loss_box_reg": loss_box_reg, **rpn_losses}
    return TrainOutputs(losses, per_image, maps)


def dense_forward_train(model: nn.Module, images: list[Tensor], targets: Targets,
                        loss: DenseLoss) -> TrainOutputs:
    """RetinaNet / FCOS / SSD forward in train mode; ``loss`` is the family's loss call."""
    image_list, targets = model.transform(images, targets)
    maps = _backbone_maps(model, image_list.tensors)
    features = list(maps.values())
    head_outputs = model.head(features)
    anchors = model.anchor_generator(image_list, features)
    losses = loss(model, targets, head_outputs, anchors, features)
    alone = [
        loss(model, [target], {k: v[i:i + 1] for k, v in head_outputs.items()}, [anchors[i]],
             features)
        for i, target in enumerate(targets)
    ]
    per_image = {name: torch.stack([a[name] for a in alone]) for name in losses}
    return TrainOutputs(losses, per_image, maps)


def retinanet_loss(model: nn.Module, targets: Targets, head_outputs: dict[str, Tensor],
                   anchors: list[Tensor], features: list[Tensor]) -> dict[str, Tensor]:
    return model.compute_loss(targets, head_outputs, anchors)


def fcos_loss(model: nn.Module, targets: Targets, head_outputs: dict[str, Tensor],
              anchors: list[Tensor], features: list[Tensor]) -> dict[str, Tensor]:
    num_anchors_per_level = [x.size(2) * x.size(3) for x in features]
    return model.compute_loss(targets, head_outputs, anchors, num_anchors_per_level)


def ssd_loss(model: nn.Module, targets: Targets, head_outputs: dict[str, Tensor],
             anchors: list[Tensor], features: list[Tensor]) -> dict[str, Tensor]:
    """SSD.forward's anchor matching (it lives in forward, not compute_loss), then the loss."""
    matched_idxs = []
    for anchors_per_image, target in zip(anchors, targets, strict=True):
        if target["boxes"].numel() == 0:
            matched_idxs.append(torch.full((anchors_per_image.size(0),), -1, dtype=torch.int64,
                                           device=anchors_per_image.device))
            continue
        quality = box_ops.box_iou(target["boxes"], anchors_per_image)
        matched_idxs.append(model.proposal_matcher(quality))
    return model.compute_loss(targets, head_outputs, anchors, matched_idxs)
