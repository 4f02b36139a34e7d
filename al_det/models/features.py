"""Instance and image features that ride on a detector's stock detections.

Reads nothing from disk and writes nothing: these functions run a built model in eval mode
(the caller, :mod:`al_det.models.adapters`, sets the mode) and return plain tensors.

* Faster R-CNN: the forward pass is replayed stage by stage and RoIHeads' post-processing is
  copied with one extra column (the proposal row), so each detection carries the box-head
  feature its proposal already computed.
* Dense detectors (RetinaNet, FCOS, SSD): the stock forward runs with hooks that catch the
  backbone maps, then each final box is RoI-pooled from them.

Optional outputs: ``probs`` (each detection's class-probability vector: Faster R-CNN's softmax
row of its proposal; for the dense families, a copy of their ``postprocess_detections`` that
carries each candidate's anchor row runs beside the stock one, which it must match exactly,
and gives the anchor's softmax (SSD) or ``[1 - max_c s_c, s_1..s_K]`` normalised from its
per-class sigmoid scores (RetinaNet, FCOS: the classifier's ``sigmoid(cls_logits)``, column 0,
the muted label-0 column, left out)); ``loss_pred`` (the loss-prediction module's ``l_hat`` on
the forward's maps, when the model has one: :mod:`al_det.models.lossnet`).
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.models.detection import _utils as det_utils
from torchvision.models.detection.faster_rcnn import FasterRCNN
from torchvision.ops import MultiScaleRoIAlign, roi_align
from torchvision.ops import boxes as box_ops

from al_det.errors import AlDetError
from al_det.models import lossnet

SSD_FEATURE_LEVELS = ("0", "1")  # conv4_3 (stride 8) and fc7 (stride 16): the finest maps
ROI_SIZE = 7

# (maps, final boxes in the resized frame, image sizes, padded size) -> (features, image feats)
Pooler = Callable[[OrderedDict[str, Tensor], list[Tensor], list[tuple[int, int]], torch.Size],
                  tuple[list[Tensor], Tensor]]
# (model, head outputs, anchors, image sizes) -> postprocess_detections' output plus "probs"
ProbsPost = Callable[[nn.Module, Any, Any, list[tuple[int, int]]], list[dict[str, Tensor]]]


# ------------------------------------------------------------------------------ Faster R-CNN
def predict_rcnn(model: FasterRCNN, images: list[Tensor],
                 probs: bool = False) -> list[dict[str, Tensor]]:
    """GeneralizedRCNN.forward in eval mode, keeping the box-head feature of every proposal
    (and, with ``probs``, its softmax row)."""
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
    softmax = F.softmax(class_logits, -1) if probs else None  # as rcnn_postprocess's scores
    offset = 0
    for det, props in zip(detections, proposals, strict=True):
        rows = offset + det.pop("proposal")
        det["features"] = box_features[rows].float()
        if softmax is not None:
            det["probs"] = softmax[rows].float()
        offset += len(props)
    detections = model.transform.postprocess(detections, image_list.image_sizes, original_sizes)
    image_features = image_level(maps, image_list.image_sizes, image_list.tensors.shape[-2:])
    for det, feature in zip(detections, image_features, strict=True):
        det["image_feature"] = feature
    _add_loss_pred(model, maps, detections)
    return detections


def _add_loss_pred(model: nn.Module, maps: OrderedDict[str, Tensor],
                   detections: list[dict[str, Tensor]]) -> None:
    """Each image's ``loss_pred`` (0-d), when the model has a loss-prediction module."""
    l_hat = lossnet.predict(model, maps)
    if l_hat is not None:
        for det, value in zip(detections, l_hat, strict=True):
            det["loss_pred"] = value


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
def predict_hooked(model: nn.Module, images: list[Tensor], pool: Pooler,
                   probs_post: ProbsPost | None = None) -> list[dict[str, Tensor]]:
    """Run the stock forward, catching the backbone maps, then ``pool`` the final boxes; with
    ``probs_post`` (the family's postprocess copy), each detection's ``probs`` too."""
    caught: dict[str, Any] = {}
    hooks = [
        model.backbone.register_forward_hook(lambda m, i, o: caught.__setitem__("maps", o)),
        model.transform.register_forward_hook(lambda m, i, o: caught.__setitem__("list", o[0])),
    ]
    if probs_post is not None:
        stock = model.postprocess_detections

        def post(head_outputs: Any, anchors: Any, image_sizes: list[tuple[int, int]]) -> list:
            detections = stock(head_outputs, anchors, image_sizes)
            copies = probs_post(model, head_outputs, anchors, image_sizes)
            for det, copy in zip(detections, copies, strict=True):
                if not all(torch.equal(det[k], copy[k]) for k in ("boxes", "scores", "labels")):
                    raise AlDetError(f"{type(model).__name__}: the post-processing copy that "
                                     "keeps each detection's anchor differs from torchvision's "
                                     "(another torchvision version?); set infer.probs: false "
                                     "and use a strategy that does not read probs.npy")
                det["probs"] = copy["probs"]
            return detections

        model.postprocess_detections = post  # this instance, for this forward only
    try:
        detections = model(images)
    finally:
        for hook in hooks:
            hook.remove()
        if probs_post is not None:
            del model.postprocess_detections
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
    if lossnet.head_of(model) is not None:
        _add_loss_pred(model, maps if not isinstance(maps, Tensor)
                       else OrderedDict([("0", maps)]), detections)
    return detections


def _sigmoid_probs(scores: Tensor) -> Tensor:
    """``[n, K+1]`` sigmoid rows (label-0 column first) -> ``[1 - max_c s_c, s_1..s_K] / sum``."""
    fg = scores[:, 1:].float()
    bg = 1.0 - (fg.max(dim=1).values if fg.shape[1] else fg.new_zeros(len(fg)))
    row = torch.cat([bg[:, None], fg], dim=1)
    return row / row.sum(dim=1, keepdim=True)


def _dense_probs(model: nn.Module, head_outputs: dict[str, list[Tensor]],
                 anchors: list[list[Tensor]], image_shapes: list[tuple[int, int]],
                 fcos: bool) -> list[dict[str, Tensor]]:
    """RetinaNet.postprocess_detections (``fcos``: FCOS's) of torchvision 0.29, carrying each
    candidate's anchor scores to the kept detections as ``probs``."""
    class_logits = head_outputs["cls_logits"]
    box_regression = head_outputs["bbox_regression"]
    ctrness = head_outputs["bbox_ctrness"] if fcos else None
    detections = []
    for index, image_shape in enumerate(image_shapes):
        image_boxes, image_scores, image_labels, image_rows = [], [], [], []
        for level, anchors_per_level in enumerate(anchors[index]):
            logits = class_logits[level][index]
            regression = box_regression[level][index]
            num_classes = logits.shape[-1]
            if fcos:
                scores = torch.sqrt(torch.sigmoid(logits)
                                    * torch.sigmoid(ctrness[level][index])).flatten()
            else:
                scores = torch.sigmoid(logits).flatten()
            keep_idxs = scores > model.score_thresh
            scores = scores[keep_idxs]
            topk_idxs = torch.where(keep_idxs)[0]
            num_topk = det_utils._topk_min(topk_idxs, model.topk_candidates, 0)
            scores, idxs = scores.topk(num_topk)
            topk_idxs = topk_idxs[idxs]
            anchor_idxs = torch.div(topk_idxs, num_classes, rounding_mode="floor")
            labels = topk_idxs % num_classes
            if fcos:
                boxes = model.box_coder.decode(regression[anchor_idxs],
                                               anchors_per_level[anchor_idxs])
            else:
                boxes = model.box_coder.decode_single(regression[anchor_idxs],
                                                      anchors_per_level[anchor_idxs])
            boxes = box_ops.clip_boxes_to_image(boxes, image_shape)
            image_boxes.append(boxes)
            image_scores.append(scores)
            image_labels.append(labels)
            image_rows.append(torch.sigmoid(logits[anchor_idxs]))
        boxes, scores = torch.cat(image_boxes, dim=0), torch.cat(image_scores, dim=0)
        labels, rows = torch.cat(image_labels, dim=0), torch.cat(image_rows, dim=0)
        keep = box_ops.batched_nms(boxes, scores, labels, model.nms_thresh)
        keep = keep[: model.detections_per_img]
        detections.append({"boxes": boxes[keep], "scores": scores[keep], "labels": labels[keep],
                           "probs": _sigmoid_probs(rows[keep])})
    return detections


def retinanet_probs(model: nn.Module, head_outputs: dict[str, list[Tensor]],
                    anchors: list[list[Tensor]],
                    image_shapes: list[tuple[int, int]]) -> list[dict[str, Tensor]]:
    return _dense_probs(model, head_outputs, anchors, image_shapes, fcos=False)


def fcos_probs(model: nn.Module, head_outputs: dict[str, list[Tensor]],
               anchors: list[list[Tensor]],
               image_shapes: list[tuple[int, int]]) -> list[dict[str, Tensor]]:
    return _dense_probs(model, head_outputs, anchors, image_shapes, fcos=True)


def ssd_probs(model: nn.Module, head_outputs: dict[str, Tensor], image_anchors: list[Tensor],
              image_shapes: list[tuple[int, int]]) -> list[dict[str, Tensor]]:
    """SSD.postprocess_detections of torchvision 0.29, carrying each candidate's anchor
    softmax row to the kept detections as ``probs``."""
    bbox_regression = head_outputs["bbox_regression"]
    pred_scores = F.softmax(head_outputs["cls_logits"], dim=-1)
    num_classes = pred_scores.size(-1)
    detections = []
    for boxes, softmax, anchors, image_shape in zip(bbox_regression, pred_scores, image_anchors,
                                                    image_shapes, strict=True):
        boxes = model.box_coder.decode_single(boxes, anchors)
        boxes = box_ops.clip_boxes_to_image(boxes, image_shape)
        image_boxes, image_scores, image_labels, image_rows = [], [], [], []
        for label in range(1, num_classes):
            score = softmax[:, label]
            keep_idxs = score > model.score_thresh
            rows = torch.where(keep_idxs)[0]
            score, box = score[keep_idxs], boxes[keep_idxs]
            num_topk = det_utils._topk_min(score, model.topk_candidates, 0)
            score, idxs = score.topk(num_topk)
            image_boxes.append(box[idxs])
            image_scores.append(score)
            image_labels.append(torch.full_like(score, fill_value=label, dtype=torch.int64))
            image_rows.append(rows[idxs])
        kept_boxes, scores = torch.cat(image_boxes, dim=0), torch.cat(image_scores, dim=0)
        labels, rows = torch.cat(image_labels, dim=0), torch.cat(image_rows, dim=0)
        keep = box_ops.batched_nms(kept_boxes, scores, labels, model.nms_thresh)
        keep = keep[: model.detections_per_img]
        detections.append({"boxes": kept_boxes[keep], "scores": scores[keep],
                           "labels": labels[keep], "probs": softmax[rows[keep]].float()})
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
