"""One adapter per detector family, and ``ADAPTERS``: model name -> adapter, the one list.

Reads and writes nothing. An adapter is a frozen dataclass holding its model's builder; its
methods say, for a model that builder made, where the inference parameters live, how long
its features are, which feature maps it has, how to predict with features and how to run a
training forward with per-image losses. ``al_det.model_names.MODEL_NAMES`` repeats the keys
for torch-free code (a test keeps the two equal).
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

from torch import Tensor, nn

from al_det.models import builders, features, losses
from al_det.models.builders import Builder
from al_det.models.losses import Targets, TrainOutputs
from al_det.models.tiny import build_tiny_frcnn


@dataclass(frozen=True)
class Adapter:
    """The seam between al-det and one detector family (see the package docstring)."""

    build: Builder

    def inference_module(self, model: nn.Module) -> nn.Module:
        """The module holding ``score_thresh`` and ``detections_per_img``."""
        return model

    def feature_dim(self, model: nn.Module) -> int:
        """D, the length of each detection's instance feature."""
        raise NotImplementedError

    def image_feature_dim(self, model: nn.Module) -> int:
        """D2, the length of the image-level feature."""
        return model.backbone.out_channels

    def feature_maps(self, model: nn.Module, images: list[Tensor]) -> OrderedDict[str, Tensor]:
        """The backbone's maps of ``images`` in the model's resized frame, finest first (FPN
        levels for FPN models, SSD's six source maps): what a training-time module reads."""
        image_list, _ = model.transform(images)
        maps = model.backbone(image_list.tensors)
        return OrderedDict([("0", maps)]) if isinstance(maps, Tensor) else maps

    def predict_with_features(self, model: nn.Module, images: list[Tensor],
                              probs: bool = False) -> list[dict[str, Tensor]]:
        """The stock detections of ``images`` with ``features`` and ``image_feature`` (eval),
        ``probs`` when asked and ``loss_pred`` with a loss-prediction module."""
        raise NotImplementedError

    def forward_train(self, model: nn.Module, images: list[Tensor],
                      targets: Targets) -> TrainOutputs:
        """The stock training forward's losses, plus per-image terms and the feature maps."""
        raise NotImplementedError


@dataclass(frozen=True)
class FasterRCNNAdapter(Adapter):
    """Faster R-CNN (tiny, R50-FPN, R101-FPN, MobileNetV3-FPN): box-head features."""

    def inference_module(self, model: nn.Module) -> nn.Module:
        return model.roi_heads

    def feature_dim(self, model: nn.Module) -> int:
        return model.roi_heads.box_predictor.cls_score.in_features

    def predict_with_features(self, model: nn.Module, images: list[Tensor],
                              probs: bool = False) -> list[dict[str, Tensor]]:
        return features.predict_rcnn(model, images, probs)

    def forward_train(self, model: nn.Module, images: list[Tensor],
                      targets: Targets) -> TrainOutputs:
        return losses.rcnn_forward_train(model, images, targets)


@dataclass(frozen=True)
class RetinaNetAdapter(Adapter):
    """RetinaNet: final boxes RoI-pooled from the FPN."""

    # what FCOS, whose features are RetinaNet's, changes (staticmethod: plain functions)
    class_probs = staticmethod(features.retinanet_probs)
    loss = staticmethod(losses.retinanet_loss)

    def feature_dim(self, model: nn.Module) -> int:
        return model.backbone.out_channels

    def predict_with_features(self, model: nn.Module, images: list[Tensor],
                              probs: bool = False) -> list[dict[str, Tensor]]:
        return features.predict_hooked(model, images, features.fpn_pool,
                                       self.class_probs if probs else None)

    def forward_train(self, model: nn.Module, images: list[Tensor],
                      targets: Targets) -> TrainOutputs:
        return losses.dense_forward_train(model, images, targets, self.loss)


@dataclass(frozen=True)
class FCOSAdapter(RetinaNetAdapter):
    """FCOS: features as RetinaNet's; its probs and loss (a centerness term) its own."""

    class_probs = staticmethod(features.fcos_probs)
    loss = staticmethod(losses.fcos_loss)


@dataclass(frozen=True)
class SSDAdapter(Adapter):
    """SSD: final boxes RoI-pooled from conv4_3 and fc7, concatenated."""

    def feature_dim(self, model: nn.Module) -> int:
        # The classification head's convs are indexed like the backbone's output levels.
        convs = model.head.classification_head.module_list
        return sum(convs[int(level)].in_channels for level in features.SSD_FEATURE_LEVELS)

    def image_feature_dim(self, model: nn.Module) -> int:
        return self.feature_dim(model)

    def predict_with_features(self, model: nn.Module, images: list[Tensor],
                              probs: bool = False) -> list[dict[str, Tensor]]:
        return features.predict_hooked(model, images, features.ssd_pool,
                                       features.ssd_probs if probs else None)

    def forward_train(self, model: nn.Module, images: list[Tensor],
                      targets: Targets) -> TrainOutputs:
        return losses.dense_forward_train(model, images, targets, losses.ssd_loss)


ADAPTERS: dict[str, Adapter] = {
    "tiny_frcnn": FasterRCNNAdapter(build_tiny_frcnn),
    "fasterrcnn_resnet50_fpn": FasterRCNNAdapter(builders.build_fasterrcnn_resnet50_fpn),
    "fasterrcnn_resnet101_fpn": FasterRCNNAdapter(builders.build_fasterrcnn_resnet101_fpn),
    "fasterrcnn_mobilenet_v3_large_fpn": FasterRCNNAdapter(
        builders.build_fasterrcnn_mobilenet_v3_large_fpn),
    "retinanet_resnet50_fpn": RetinaNetAdapter(builders.build_retinanet_resnet50_fpn),
    "ssd300_vgg16": SSDAdapter(builders.build_ssd300_vgg16),
    "fcos_resnet50_fpn": FCOSAdapter(builders.build_fcos_resnet50_fpn),
}
