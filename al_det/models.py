"""The detector adapter: the only module that reaches into torchvision detector internals.

Reads torchvision pretrained weights only when the config names a weights enum member
(``model.weights`` / ``model.weights_backbone``; torchvision may download them to its cache,
so tests leave both unset). Writes nothing.

Every model takes a list of float ``[3, H, W]`` images in ``[0, 1]`` and predicts labels
``1..K`` (0 is background) for ``K`` foreground classes. :func:`predict_with_features` returns
exactly the detections of plain ``model(images)`` plus, per detection, an instance feature of
``feature_dim(model)`` values, and per image a global feature of ``image_feature_dim(model)``:

=================================  ===========================================  ======  ====
model                              instance feature                             D       D2
=================================  ===========================================  ======  ====
tiny_frcnn                         box head (TwoMLPHead) output of its proposal 1024    32
fasterrcnn_resnet50_fpn            box head (TwoMLPHead) output of its proposal 1024    256
fasterrcnn_mobilenet_v3_large_fpn  box head (TwoMLPHead) output of its proposal 1024    256
retinanet_resnet50_fpn             RoIAlign 7x7 of the final box on FPN, mean   256     256
fcos_resnet50_fpn                  RoIAlign 7x7 of the final box on FPN, mean   256     256
ssd300_vgg16                       RoIAlign 7x7 on conv4_3 and fc7, mean, cat  1536    1536
=================================  ===========================================  ======  ====

The image feature (D2) is the mean over feature levels of each spatially averaged map (for
SSD: the concatenation of conv4_3's and fc7's), taken over the image's own region, not the
padding that batching adds. ``ssd300_vgg16`` always resizes to
300x300 (its architecture); ``model.min_size``/``max_size`` apply to the other models.
"""

from __future__ import annotations

import dataclasses
import math
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
import torchvision
from torch import Tensor, nn
from torchvision.models import detection as tvd
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.faster_rcnn import FasterRCNN, FastRCNNPredictor
from torchvision.models.detection.fcos import FCOS, FCOSClassificationHead
from torchvision.models.detection.retinanet import RetinaNet, RetinaNetClassificationHead
from torchvision.models.detection.ssd import SSD, SSDClassificationHead
from torchvision.ops import FeaturePyramidNetwork, FrozenBatchNorm2d, MultiScaleRoIAlign, roi_align
from torchvision.ops import boxes as box_ops

from al_det.config import ModelConfig
from al_det.errors import AlDetError, ConfigError

SSD_FEATURE_LEVELS = ("0", "1")  # conv4_3 (stride 8) and fc7 (stride 16): the finest maps
ROI_SIZE = 7
TINY_WIDTHS = (16, 32, 64, 128)  # stem, then the stages at strides 4, 8, 16
TINY_FPN_CHANNELS = 32
TINY_ROI_SIZE = 7
TINY_BOX_BATCH = 64


# ----------------------------------------------------------------------------------- weights
def _resolve_weights(enum: Any, name: str | None, key: str) -> Any:
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
    weights = _resolve_weights(weights_enum, cfg.weights, "weights")
    weights_backbone = _resolve_weights(backbone_enum, cfg.weights_backbone, "weights_backbone")
    model = builder(
        weights=weights,
        weights_backbone=weights_backbone,
        num_classes=None if weights is not None else num_classes + 1,
        trainable_backbone_layers=cfg.trainable_backbone_layers,
        **kwargs,
    )
    replace = weights is not None and len(weights.meta["categories"]) != num_classes + 1
    return model, replace


# ---------------------------------------------------------------------------------- builders
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


def build_fasterrcnn_mobilenet_v3_large_fpn(cfg: ModelConfig, num_classes: int,
                                            score_thresh: float,
                                            detections_per_img: int) -> nn.Module:
    return _build_faster_rcnn(
        tvd.fasterrcnn_mobilenet_v3_large_fpn, tvd.FasterRCNN_MobileNet_V3_Large_FPN_Weights,
        torchvision.models.MobileNet_V3_Large_Weights, cfg, num_classes, score_thresh,
        detections_per_img,
    )


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


def _conv_bn(cin: int, cout: int, stride: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
    )


class TinyBackbone(nn.Module):
    """A small conv net for 128 px images: one stride-2 stem conv, then three stride-2 stages
    of two conv-BN-ReLU each (strides 4, 8, 16) under an FPN of ``out_channels``.

    Narrow early layers keep the high-resolution convolutions cheap on a CPU.
    """

    def __init__(self, widths: tuple[int, ...], out_channels: int):
        super().__init__()
        self.stem = _conv_bn(3, widths[0], 2)
        stages, cin = [], widths[0]
        for w in widths[1:]:
            stages.append(nn.Sequential(_conv_bn(cin, w, 2), _conv_bn(w, w, 1)))
            cin = w
        self.stages = nn.ModuleList(stages)
        self.fpn = FeaturePyramidNetwork(list(widths[1:]), out_channels)
        self.out_channels = out_channels

    def forward(self, x: Tensor) -> OrderedDict[str, Tensor]:
        x = self.stem(x)
        maps = OrderedDict()
        for i, stage in enumerate(self.stages):
            x = stage(x)
            maps[str(i)] = x
        return self.fpn(maps)


def build_tiny_frcnn(cfg: ModelConfig, num_classes: int, score_thresh: float,
                     detections_per_img: int) -> nn.Module:
    """A Faster R-CNN small enough to train from scratch on CPU, for 128 px images.

    Anchors cover objects of about 8-90 px; the box head is torchvision's standard 1024-d
    TwoMLPHead (on 32 x 7 x 7 RoIs) so its features are those the paper uses. Proposal and
    sampled-RoI counts are lowered for speed (images hold a handful of objects): the box
    head's matrix products and RoIAlign's single-threaded backward dominate a CPU step.
    """
    if cfg.weights is not None or cfg.weights_backbone is not None:
        raise ConfigError("model.name=tiny_frcnn has no pretrained weights: unset model.weights "
                          "and model.weights_backbone, or pick a torchvision model")
    anchors = AnchorGenerator(((12, 17), (24, 34), (48, 68)), ((0.5, 1.0, 2.0),) * 3)
    roi_pool = MultiScaleRoIAlign(["0", "1", "2"], output_size=TINY_ROI_SIZE, sampling_ratio=2,
                                  canonical_scale=56, canonical_level=3)
    return FasterRCNN(
        TinyBackbone(TINY_WIDTHS, TINY_FPN_CHANNELS),
        num_classes=num_classes + 1,
        min_size=cfg.min_size,
        max_size=cfg.max_size,
        rpn_anchor_generator=anchors,
        box_roi_pool=roi_pool,
        rpn_pre_nms_top_n_train=600,
        rpn_post_nms_top_n_train=300,
        rpn_pre_nms_top_n_test=300,
        rpn_post_nms_top_n_test=150,
        rpn_batch_size_per_image=128,
        box_batch_size_per_image=TINY_BOX_BATCH,
        box_score_thresh=score_thresh,
        box_detections_per_img=detections_per_img,
    )


Builder = Callable[[ModelConfig, int, float, int], nn.Module]
MODELS: dict[str, Builder] = {
    "tiny_frcnn": build_tiny_frcnn,
    "fasterrcnn_resnet50_fpn": build_fasterrcnn_resnet50_fpn,
    "fasterrcnn_mobilenet_v3_large_fpn": build_fasterrcnn_mobilenet_v3_large_fpn,
    "retinanet_resnet50_fpn": build_retinanet_resnet50_fpn,
    "ssd300_vgg16": build_ssd300_vgg16,
    "fcos_resnet50_fpn": build_fcos_resnet50_fpn,
}


def build_model(cfg: ModelConfig, num_classes: int, score_thresh: float = 0.05,
                detections_per_img: int = 100, load_weights: bool = True) -> nn.Module:
    """Build detector ``cfg.name`` for ``num_classes`` foreground classes (labels 1..K).

    ``load_weights=False`` builds the architecture the configured pretrained weights imply
    without fetching them, for loading a model al-det trained (no download at inference).
    """
    if cfg.name not in MODELS:
        raise ConfigError(f"model.name={cfg.name!r} is unknown: use one of {', '.join(MODELS)}")
    if num_classes < 1:
        raise AlDetError(f"a detector needs at least one category, got {num_classes}")
    pretrained = cfg.weights is not None or cfg.weights_backbone is not None
    if load_weights or not pretrained:
        return MODELS[cfg.name](cfg, num_classes, score_thresh, detections_per_img)
    bare = dataclasses.replace(cfg, weights=None, weights_backbone=None)
    model = MODELS[cfg.name](bare, num_classes, score_thresh, detections_per_img)
    _freeze_batchnorm(model.backbone)
    return model


def _freeze_batchnorm(module: nn.Module) -> None:
    """Swap BatchNorm2d for FrozenBatchNorm2d, as torchvision's builders do for pretrained
    backbones, so a trained model's state dict fits (FrozenBN has default eps there too)."""
    for name, child in module.named_children():
        if isinstance(child, nn.BatchNorm2d):
            setattr(module, name, FrozenBatchNorm2d(child.num_features))
        else:
            _freeze_batchnorm(child)


def set_inference_params(model: nn.Module, score_thresh: float, detections_per_img: int) -> None:
    """Set the score threshold and the per-image cap on detections of a built model."""
    model = _unwrap(model)
    target = model.roi_heads if _kind(model) == "rcnn" else model
    target.score_thresh = score_thresh
    target.detections_per_img = detections_per_img


def _unwrap(model: nn.Module) -> nn.Module:
    """The detector inside a DistributedDataParallel wrapper, or the model itself."""
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model


def _kind(model: nn.Module) -> str:
    for cls, name in ((FasterRCNN, "rcnn"), (RetinaNet, "fpn"), (FCOS, "fpn"), (SSD, "ssd")):
        if isinstance(model, cls):
            return name
    raise AlDetError(f"unsupported detector type {type(model).__name__}: build it with "
                     f"al_det.models.build_model")


def feature_dim(model: nn.Module) -> int:
    """D, the length of the instance feature of each detection (see the module docstring)."""
    model = _unwrap(model)
    kind = _kind(model)
    if kind == "rcnn":
        return model.roi_heads.box_predictor.cls_score.in_features
    if kind == "fpn":
        return model.backbone.out_channels
    return sum(c.in_channels for c in _ssd_level_convs(model))


def image_feature_dim(model: nn.Module) -> int:
    """D2, the length of the image-level feature (see the module docstring)."""
    model = _unwrap(model)
    return feature_dim(model) if _kind(model) == "ssd" else model.backbone.out_channels


def _ssd_level_convs(model: nn.Module) -> list[nn.Conv2d]:
    # The classification head's convs are indexed like the backbone's output levels.
    convs = model.head.classification_head.module_list
    return [convs[int(level)] for level in SSD_FEATURE_LEVELS]


# -------------------------------------------------------------------------------- prediction
@torch.no_grad()
def predict_with_features(model: nn.Module, images: list[Tensor]) -> list[dict[str, Tensor]]:
    """Detect on ``images`` ([3, H, W] floats in [0, 1]) and return each detection's feature.

    Per image: ``boxes`` [n, 4] xyxy in original pixels, ``scores`` [n], ``labels`` [n]
    (1..K), ``features`` [n, D] float32 and ``image_feature`` [D2] float32. The detections are
    those of ``model(images)`` in eval mode. The model's train/eval mode is restored after.
    """
    model = _unwrap(model)
    kind = _kind(model)
    was_training = model.training
    model.eval()
    try:
        if kind == "rcnn":
            return _predict_rcnn(model, images)
        return _predict_hooked(model, images, kind)
    finally:
        model.train(was_training)


def _predict_rcnn(model: FasterRCNN, images: list[Tensor]) -> list[dict[str, Tensor]]:
    """GeneralizedRCNN.forward in eval mode, keeping the box-head feature of every proposal."""
    original_sizes = [(int(img.shape[-2]), int(img.shape[-1])) for img in images]
    image_list, _ = model.transform(images)
    maps = model.backbone(image_list.tensors)
    if isinstance(maps, Tensor):
        maps = OrderedDict([("0", maps)])
    proposals, _ = model.rpn(image_list, maps)
    heads = model.roi_heads
    box_features = heads.box_head(heads.box_roi_pool(maps, proposals, image_list.image_sizes))
    class_logits, box_regression = heads.box_predictor(box_features)
    detections = _rcnn_postprocess(heads, class_logits, box_regression, proposals,
                                   image_list.image_sizes)
    offset = 0
    for det, props in zip(detections, proposals, strict=True):
        det["features"] = box_features[offset + det.pop("proposal")].float()
        offset += len(props)
    detections = model.transform.postprocess(detections, image_list.image_sizes, original_sizes)
    image_features = _image_features(maps, image_list.image_sizes, image_list.tensors.shape[-2:])
    for det, feature in zip(detections, image_features, strict=True):
        det["image_feature"] = feature
    return detections


def _rcnn_postprocess(heads: nn.Module, class_logits: Tensor, box_regression: Tensor,
                      proposals: list[Tensor],
                      image_shapes: list[tuple[int, int]]) -> list[dict[str, Tensor]]:
    """RoIHeads.postprocess_detections, also returning each detection's proposal index.

    A copy of torchvision 0.29's code with one extra column: each (proposal, class) candidate
    carries its proposal row, so several class-boxes from one proposal share its feature.
    tests/test_models.py pins the output to the stock model's.
    """
    num_classes = class_logits.shape[-1]
    pred_boxes = heads.box_coder.decode(box_regression, proposals)
    pred_scores = F.softmax(class_logits, -1)
    per_image = [len(p) for p in proposals]
    out = []
    for boxes, scores, shape in zip(pred_boxes.split(per_image), pred_scores.split(per_image),
                                    image_shapes, strict=True):
        boxes = box_ops.clip_boxes_to_image(boxes, shape)
        labels = torch.arange(num_classes, device=boxes.device).view(1, -1).expand_as(scores)
        rows = torch.arange(len(boxes), device=boxes.device).view(-1, 1).expand_as(scores)
        # Drop background, then flatten so each (proposal, class) pair is one candidate.
        boxes = boxes[:, 1:].reshape(-1, 4)
        scores, labels, rows = (t[:, 1:].reshape(-1) for t in (scores, labels, rows))
        keep = torch.where(scores > heads.score_thresh)[0]
        boxes, scores, labels, rows = boxes[keep], scores[keep], labels[keep], rows[keep]
        keep = box_ops.remove_small_boxes(boxes, min_size=1e-2)
        boxes, scores, labels, rows = boxes[keep], scores[keep], labels[keep], rows[keep]
        keep = box_ops.batched_nms(boxes, scores, labels, heads.nms_thresh)
        keep = keep[: heads.detections_per_img]
        out.append({"boxes": boxes[keep], "scores": scores[keep], "labels": labels[keep],
                    "proposal": rows[keep]})
    return out


def _predict_hooked(model: nn.Module, images: list[Tensor], kind: str) -> list[dict[str, Tensor]]:
    """Run the stock forward, catching the backbone maps, then RoI-pool the final boxes."""
    caught: dict[str, Any] = {}
    hooks = [
        model.backbone.register_forward_hook(lambda m, i, o: caught.__setitem__("maps", o)),
        model.transform.register_forward_hook(lambda m, i, o: caught.__setitem__("list", o[0])),
    ]
    try:
        detections = model(images)
    finally:
        for hook in hooks:
            hook.remove()
    maps, image_list = caught["maps"], caught["list"]
    sizes, padded = image_list.image_sizes, image_list.tensors.shape[-2:]
    # Final boxes are in original pixels; the maps are in the transformed (resized) frame.
    boxes = [
        d["boxes"] * _scale_xyxy(img.shape[-2:], size, d["boxes"])
        for d, img, size in zip(detections, images, sizes, strict=True)
    ]
    if kind == "ssd":
        maps = OrderedDict((k, maps[k]) for k in SSD_FEATURE_LEVELS)
        features = _ssd_roi_features(maps, boxes, padded)
        image_features = torch.cat(
            [_image_features(OrderedDict([(k, m)]), sizes, padded) for k, m in maps.items()], 1)
    else:
        features = _fpn_roi_features(maps, boxes, sizes)
        image_features = _image_features(maps, sizes, padded)
    for det, feats, image_feature in zip(detections, features, image_features, strict=True):
        det["features"] = feats.float()
        det["image_feature"] = image_feature
    return detections


def _scale_xyxy(original: torch.Size, resized: tuple[int, int], like: Tensor) -> Tensor:
    """The factors that map xyxy boxes from ``original`` to ``resized`` (h, w) pixels."""
    sy, sx = resized[0] / original[0], resized[1] / original[1]
    return torch.tensor([sx, sy, sx, sy], dtype=like.dtype, device=like.device)


def _fpn_roi_features(maps: OrderedDict[str, Tensor], boxes: list[Tensor],
                      sizes: list[tuple[int, int]]) -> list[Tensor]:
    """Each box pooled 7x7 from its FPN level (torchvision's level mapping), spatial mean."""
    if sum(len(b) for b in boxes) == 0:
        channels = next(iter(maps.values())).shape[1]
        return [b.new_zeros((0, channels)) for b in boxes]
    pooler = MultiScaleRoIAlign(list(maps), output_size=ROI_SIZE, sampling_ratio=2)
    pooled = pooler(maps, boxes, sizes).mean(dim=(2, 3))
    return list(pooled.split([len(b) for b in boxes]))


def _ssd_roi_features(maps: OrderedDict[str, Tensor], boxes: list[Tensor],
                      padded: torch.Size) -> list[Tensor]:
    """Each box pooled 7x7 from every level in ``maps``, spatially averaged, concatenated."""
    columns = []
    for fmap in maps.values():
        scale = fmap.shape[-1] / padded[-1]  # SSD300: e.g. 38 / 300, not a power of two
        pooled = roi_align(fmap, boxes, ROI_SIZE, spatial_scale=scale, sampling_ratio=2)
        columns.append(pooled.mean(dim=(2, 3)))
    return list(torch.cat(columns, dim=1).split([len(b) for b in boxes]))


def _image_features(maps: OrderedDict[str, Tensor], sizes: list[tuple[int, int]],
                    padded: torch.Size) -> Tensor:
    """[N, C]: per image, the mean over levels of each map averaged over the image's region.

    Batched images are zero-padded to a common size; averaging only the part of each map
    that covers the image keeps the padding (set by its batch neighbours) out of the mean.
    """
    out = []
    for i, (h, w) in enumerate(sizes):
        levels = []
        for fmap in maps.values():
            fh = max(1, math.ceil(h * fmap.shape[-2] / padded[-2]))
            fw = max(1, math.ceil(w * fmap.shape[-1] / padded[-1]))
            levels.append(fmap[i, :, :fh, :fw].mean(dim=(1, 2)))
        out.append(torch.stack(levels).mean(dim=0))
    return torch.stack(out).float()
