"""Builders of the torchvision detectors: weights by name, class heads sized for K + 1.

Reads torchvision pretrained weights only when the config names a weights enum member
(``model.weights`` / ``model.weights_backbone``; torchvision may download them to its cache,
so tests leave both unset). Writes nothing.

Each builder has the signature ``(cfg, num_classes, score_thresh, detections_per_img) ->
nn.Module`` and builds its modules in torchvision's order, so a fixed seed gives fixed initial
weights.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
import torchvision
from torch import nn
from torchvision.models import detection as tvd
from torchvision.models.detection.backbone_utils import (
    _resnet_fpn_extractor,
    _validate_trainable_layers,
)
from torchvision.models.detection.faster_rcnn import FasterRCNN, FastRCNNPredictor
from torchvision.models.detection.fcos import FCOSClassificationHead
from torchvision.models.detection.retinanet import RetinaNetClassificationHead
from torchvision.models.detection.ssd import SSDClassificationHead
from torchvision.ops import FrozenBatchNorm2d

from al_det.config import ModelConfig
from al_det.errors import ConfigError

Builder = Callable[[ModelConfig, int, float, int], nn.Module]


# ----------------------------------------------------------------------------------- weights
def resolve_weights(enum: Any, name: str | None, key: str) -> Any:
    """The member ``name`` of torchvision weights ``enum`` ("DEFAULT", "COCO_V1", ...) or None.

    A fully qualified name ("ResNet50_Weights.IMAGENET1K_V2") is accepted as well.
    """
    if name is None:
        return None
    member = name.split(".", 1)[1] if name.startswith(enum.__name__ + ".") else name
    if member in enum.__members__:
        return enum[member]
    raise ConfigError(
        f"model.{key}={name!r} is not one of {enum.__name__}: "
        f"use one of {', '.join(enum.__members__)} (or leave it unset for random init)"
    )


def _build_torchvision(
    builder: Callable[..., nn.Module],
    weights_enum: Any,
    backbone_enum: Any,
    cfg: ModelConfig,
    num_classes: int,
    **kwargs: Any,
) -> tuple[nn.Module, bool]:
    """Build a torchvision detector; returns it and whether its class head must be replaced.

    With detector weights the COCO model (91 classes) is built as trained; the caller swaps
    its class-specific head when K + 1 differs. ``weights_backbone`` is always passed
    explicitly because torchvision's default would download ImageNet weights.
    """
    weights = resolve_weights(weights_enum, cfg.weights, "weights")
    weights_backbone = resolve_weights(backbone_enum, cfg.weights_backbone, "weights_backbone")
    model = builder(
        weights=weights,
        weights_backbone=weights_backbone,
        num_classes=None if weights is not None else num_classes + 1,
        trainable_backbone_layers=cfg.trainable_backbone_layers,
        **kwargs,
    )
    replace = weights is not None and len(weights.meta["categories"]) != num_classes + 1
    return model, replace


def freeze_batchnorm(module: nn.Module) -> None:
    """Swap BatchNorm2d for FrozenBatchNorm2d, as torchvision's builders do for pretrained
    backbones, so a trained model's state dict fits (FrozenBN has default eps there too)."""
    for name, child in module.named_children():
        if isinstance(child, nn.BatchNorm2d):
            setattr(module, name, FrozenBatchNorm2d(child.num_features))
        else:
            freeze_batchnorm(child)


# ------------------------------------------------------------------------------ Faster R-CNN
def _build_faster_rcnn(builder: Callable[..., nn.Module], weights_enum: Any, backbone_enum: Any,
                       cfg: ModelConfig, num_classes: int, score_thresh: float,
                       detections_per_img: int) -> nn.Module:
    model, replace = _build_torchvision(
        builder, weights_enum, backbone_enum, cfg, num_classes,
        min_size=cfg.min_size, max_size=cfg.max_size,
        box_score_thresh=score_thresh, box_detections_per_img=detections_per_img,
    )
    if replace:
        in_features = model.roi_heads.box_predictor.cls_score.in_features
        model.roi_heads.box_predictor = FastRCNNPredictor(in_features, num_classes + 1)
    return model


def build_fasterrcnn_resnet50_fpn(cfg: ModelConfig, num_classes: int, score_thresh: float,
                                  detections_per_img: int) -> nn.Module:
    return _build_faster_rcnn(
        tvd.fasterrcnn_resnet50_fpn, tvd.FasterRCNN_ResNet50_FPN_Weights,
        torchvision.models.ResNet50_Weights, cfg, num_classes, score_thresh, detections_per_img,
    )


def _tv_fasterrcnn_resnet101_fpn(*, weights: None, weights_backbone: Any, num_classes: int,
                                 trainable_backbone_layers: int | None,
                                 **kwargs: Any) -> FasterRCNN:
    """torchvision's ``fasterrcnn_resnet50_fpn`` with ResNet-101 (no detector weights exist)."""
    is_trained = weights_backbone is not None
    layers = _validate_trainable_layers(is_trained, trainable_backbone_layers, 5, 3)
    norm_layer = FrozenBatchNorm2d if is_trained else nn.BatchNorm2d
    body = torchvision.models.resnet101(weights=weights_backbone, norm_layer=norm_layer)
    return FasterRCNN(_resnet_fpn_extractor(body, layers), num_classes=num_classes, **kwargs)


def build_fasterrcnn_resnet101_fpn(cfg: ModelConfig, num_classes: int, score_thresh: float,
                                   detections_per_img: int) -> nn.Module:
    """Faster R-CNN R101-FPN, the paper's Table 3 detector: ImageNet backbone weights only."""
    if cfg.weights is not None:
        raise ConfigError(
            f"model.weights={cfg.weights!r}: torchvision has no detector weights for "
            "fasterrcnn_resnet101_fpn; unset model.weights and name the backbone's in "
            "model.weights_backbone (e.g. IMAGENET1K_V1)")
    return _build_faster_rcnn(
        _tv_fasterrcnn_resnet101_fpn, None, torchvision.models.ResNet101_Weights, cfg,
        num_classes, score_thresh, detections_per_img,
    )


def build_fasterrcnn_mobilenet_v3_large_fpn(cfg: ModelConfig, num_classes: int,
                                            score_thresh: float,
                                            detections_per_img: int) -> nn.Module:
    return _build_faster_rcnn(
        tvd.fasterrcnn_mobilenet_v3_large_fpn, tvd.FasterRCNN_MobileNet_V3_Large_FPN_Weights,
        torchvision.models.MobileNet_V3_Large_Weights, cfg, num_classes, score_thresh,
        detections_per_img,
    )


# ----------------------------------------------------------------------- RetinaNet and FCOS
@torch.no_grad()
def _mute_background_column(head: nn.Module) -> None:
    """Keep label 0 out of a sigmoid classifier's detections (RetinaNet, FCOS).

    These heads score every column, background included; no target ever has label 0, so the
    focal loss leaves a column that starts at probability 1e-6 there (its gradient vanishes),
    instead of the 0.01 prior that an untrained model would emit as label-0 detections.
    """
    conv = head.cls_logits
    weight = conv.weight.view(head.num_anchors, head.num_classes, *conv.weight.shape[1:])
    weight[:, 0] = 0.0
    conv.bias.view(head.num_anchors, head.num_classes)[:, 0] = -math.log((1 - 1e-6) / 1e-6)


def _build_dense_resnet50(builder: Callable[..., nn.Module], weights_enum: Any,
                          head_cls: type[nn.Module], cfg: ModelConfig, num_classes: int,
                          score_thresh: float, detections_per_img: int) -> nn.Module:
    """RetinaNet or FCOS on ResNet50-FPN: sigmoid class heads, so the background column is
    muted (a new head would otherwise predict label 0)."""
    model, replace = _build_torchvision(
        builder, weights_enum, torchvision.models.ResNet50_Weights, cfg, num_classes,
        min_size=cfg.min_size, max_size=cfg.max_size,
        score_thresh=score_thresh, detections_per_img=detections_per_img,
    )
    if replace:
        old = model.head.classification_head
        model.head.classification_head = head_cls(
            old.cls_logits.in_channels, old.num_anchors, num_classes + 1
        )
    if replace or cfg.weights is None:
        _mute_background_column(model.head.classification_head)
    return model


def build_retinanet_resnet50_fpn(cfg: ModelConfig, num_classes: int, score_thresh: float,
                                 detections_per_img: int) -> nn.Module:
    return _build_dense_resnet50(tvd.retinanet_resnet50_fpn, tvd.RetinaNet_ResNet50_FPN_Weights,
                                 RetinaNetClassificationHead, cfg, num_classes, score_thresh,
                                 detections_per_img)


def build_fcos_resnet50_fpn(cfg: ModelConfig, num_classes: int, score_thresh: float,
                            detections_per_img: int) -> nn.Module:
    return _build_dense_resnet50(tvd.fcos_resnet50_fpn, tvd.FCOS_ResNet50_FPN_Weights,
                                 FCOSClassificationHead, cfg, num_classes, score_thresh,
                                 detections_per_img)


# ----------------------------------------------------------------------------------------- SSD
def build_ssd300_vgg16(cfg: ModelConfig, num_classes: int, score_thresh: float,
                       detections_per_img: int) -> nn.Module:
    # SSD300's input size is part of the architecture (its last layers need >= ~260 px).
    model, replace = _build_torchvision(
        tvd.ssd300_vgg16, tvd.SSD300_VGG16_Weights, torchvision.models.VGG16_Weights,
        cfg, num_classes, score_thresh=score_thresh, detections_per_img=detections_per_img,
    )
    if replace:
        convs = model.head.classification_head.module_list
        old_columns = model.head.classification_head.num_columns
        model.head.classification_head = SSDClassificationHead(
            [c.in_channels for c in convs], [c.out_channels // old_columns for c in convs],
            num_classes + 1,
        )
    return model
