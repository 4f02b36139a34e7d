"""Instance and image features that ride on a detector's stock detections.

Reads nothing from disk and writes nothing: these functions run a built model in eval mode
(the caller, :mod:`al_det.models.adapters`, sets the mode) and return plain tensors.

* Faster R-CNN: the forward pass is replayed stage by stage and RoIHeads' post-processing is
  copied with one extra column (the proposal row), so each detection carries the box-head
  feature its proposal already computed.
* Dense detectors (RetinaNet, FCOS, SSD): the stock forward runs with hooks that catch the
  backbone maps, then each final box is RoI-pooled from them.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.models.detection.faster_rcnn import FasterRCNN
from torchvision.ops import MultiScaleRoIAlign, roi_align
from torchvision.ops import boxes as box_ops

SSD_FEATURE_LEVELS = ("0", "1")  # conv4_3 (stride 8) and fc7 (stride 16): the finest maps
ROI_SIZE = 7

# (maps, final boxes in the resized frame, image sizes, padded size) -> (features, image feats)
Pooler = Callable[[OrderedDict[str, Tensor], list[Tensor], list[tuple[int, int]], torch.Size],
                  tuple[list[Tensor], Tensor]]


# ------------------------------------------------------------------------------ Faster R-CNN
def predict_rcnn(model: FasterRCNN, images: list[Tensor]) -> list[dict[str, Tensor]]:
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
    detections = rcnn_postprocess(heads, class_logits, box_regression, proposals,
                                  image_list.image_sizes)
    offset = 0
    for det, props in zip(detections, proposals, strict=True):
        det["features"] = box_features[offset + det.pop("proposal")].float()
        offset += len(props)
    detections = model.transform.postprocess(detections, image_list.image_sizes, original_sizes)
    image_features = image_level(maps, image_list.image_sizes, image_list.tensors.shape[-2:])
    for det, feature in zip(detections, image_features, strict=True):
        det["image_feature"] = feature
    return detections


def rcnn_postprocess(heads: nn.Module, class_logits: Tensor, box_regression: Tensor,
                     proposals: list[Tensor],
                     image_shapes: list[tuple[int, int]]) -> list[dict[str, Tensor]]:
    """RoIHeads.postprocess_detections, also returning each detection's proposal index.

    A copy of torchvision 0.29's code with one extra column: each (proposal, class) candidate
    carries its proposal row, so several class-boxes from one proposal share its feature (and,
    as an extension, its softmax row: see the package docstring). tests/test_models.py pins
    the output to the stock model's.
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


# --------------------------------------------------------------------------- dense detectors
def predict_hooked(model: nn.Module, images: list[Tensor],
                   pool: Pooler) -> list[dict[str, Tensor]]:
    """Run the stock forward, catching the backbone maps, then ``pool`` the final boxes."""
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
    features, image_features = pool(maps, boxes, sizes, padded)
    for det, feats, image_feature in zip(detections, features, image_features, strict=True):
        det["features"] = feats.float()
        det["image_feature"] = image_feature
    return detections


def fpn_pool(maps: OrderedDict[str, Tensor], boxes: list[Tensor], sizes: list[tuple[int, int]],
             padded: torch.Size) -> tuple[list[Tensor], Tensor]:
    """RetinaNet, FCOS: each box 7x7 from its FPN level, spatial mean; image: all levels."""
    return _fpn_roi_features(maps, boxes, sizes), image_level(maps, sizes, padded)


def ssd_pool(maps: OrderedDict[str, Tensor], boxes: list[Tensor], sizes: list[tuple[int, int]],
             padded: torch.Size) -> tuple[list[Tensor], Tensor]:
    """SSD: conv4_3's and fc7's pooled features concatenated, for boxes and for the image."""
    maps = OrderedDict((k, maps[k]) for k in SSD_FEATURE_LEVELS)
    features = _ssd_roi_features(maps, boxes, padded)
    image_features = torch.cat(
        [image_level(OrderedDict([(k, m)]), sizes, padded) for k, m in maps.items()], 1)
    return features, image_features


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


def image_level(maps: OrderedDict[str, Tensor], sizes: list[tuple[int, int]],
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
