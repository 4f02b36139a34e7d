"""The detector seam: the only package that reaches into torchvision detector internals.

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
fasterrcnn_resnet101_fpn           box head (TwoMLPHead) output of its proposal 1024    256
fasterrcnn_mobilenet_v3_large_fpn  box head (TwoMLPHead) output of its proposal 1024    256
retinanet_resnet50_fpn             RoIAlign 7x7 of the final box on FPN, mean   256     256
fcos_resnet50_fpn                  RoIAlign 7x7 of the final box on FPN, mean   256     256
ssd300_vgg16                       RoIAlign 7x7 on conv4_3 and fc7, mean, cat  1536    1536
=================================  ===========================================  ======  ====

The image feature (D2) is the mean over feature levels of each spatially averaged map (for
SSD: the concatenation of conv4_3's and fc7's), taken over the image's own region, not the
padding that batching adds. ``ssd300_vgg16`` always resizes to 300x300 (its architecture);
``model.min_size``/``max_size`` apply to the other models. ``fasterrcnn_resnet101_fpn`` has
ImageNet backbone weights (``ResNet101_Weights``) but no detector weights in torchvision.

Layout: ``adapters.py`` (one :class:`Adapter` per family and ``ADAPTERS``, name -> adapter),
``builders.py`` (torchvision builders, weights by name), ``tiny.py`` (the demo detector),
``features.py`` (instance and image features), ``losses.py`` (training forward with per-image
losses). ``al_det/model_names.py`` lists the names without importing torch, for the config.

Adding a detector: of an existing family, a builder and one ``ADAPTERS`` entry (and its name
in ``model_names.py``); of a new family, an :class:`Adapter` subclass too.

Optional heads and outputs (``lossnet.py``: Learning Loss's module, built into the detector
when ``model.loss_prediction.enabled``; ``probs`` per detection, ``loss_pred`` per image, see
:func:`predict_with_features`), along these extension points:

* **Optional heads** (e.g. Learning Loss's loss-prediction module): a module built beside the
  detector that reads the maps :meth:`Adapter.feature_maps` names (the same maps
  :func:`forward_train` returns in ``TrainOutputs.maps``, from the training forward itself)
  and is trained on ``TrainOutputs.per_image`` (:func:`per_image_losses`). Under DDP the
  detector and the head must run inside one wrapped module's ``forward`` (DDP only syncs
  gradients of what its own forward ran), so such a head comes with a small ``nn.Module``
  whose forward calls :func:`forward_train`; ``train.py`` then steps on its loss.
* **Optional inference outputs**: :func:`predict_with_features` may add per-image keys (a
  0-d ``loss_pred``, the head's prediction) and per-detection keys (``probs``, ``[n, K+1]``)
  that the dump writer carries as ``loss_pred.npy`` and ``probs.npy``
  (shared/spec/detections-dump.md). Per-detection outputs must stay aligned through score
  filtering and NMS: Faster R-CNN's :func:`features.rcnn_postprocess` already carries each
  detection's proposal row (index the softmax with it); the dense families need the same
  row column in a copy of their ``postprocess_detections`` (anchor index per detection).
"""

from __future__ import annotations

import dataclasses
from collections import OrderedDict

import torch
from torch import Tensor, nn

from al_det.config import ModelConfig
from al_det.errors import AlDetError, ConfigError
from al_det.models import lossnet
from al_det.models.adapters import ADAPTERS, Adapter
from al_det.models.builders import freeze_batchnorm
from al_det.models.losses import Targets, TrainOutputs

__all__ = [
    "ADAPTERS", "Adapter", "TrainOutputs", "adapter_of", "build_model", "feature_dim",
    "feature_maps", "forward_train", "image_feature_dim", "per_image_losses",
    "predict_with_features", "set_inference_params",
]

_TAG = "al_det_model"  # the attribute build_model sets: the ADAPTERS key the model came from


def build_model(cfg: ModelConfig, num_classes: int, score_thresh: float = 0.05,
                detections_per_img: int = 100, load_weights: bool = True) -> nn.Module:
    """Build detector ``cfg.name`` for ``num_classes`` foreground classes (labels 1..K).

    ``load_weights=False`` builds the architecture the configured pretrained weights imply
    without fetching them, for loading a model al-det trained (no download at inference).
    """
    if cfg.name not in ADAPTERS:
        raise ConfigError(f"model.name={cfg.name!r} is unknown: use one of {', '.join(ADAPTERS)}")
    if num_classes < 1:
        raise AlDetError(f"a detector needs at least one category, got {num_classes}")
    build = ADAPTERS[cfg.name].build
    pretrained = cfg.weights is not None or cfg.weights_backbone is not None
    if load_weights or not pretrained:
        model = build(cfg, num_classes, score_thresh, detections_per_img)
    else:
        bare = dataclasses.replace(cfg, weights=None, weights_backbone=None)
        model = build(bare, num_classes, score_thresh, detections_per_img)
        freeze_batchnorm(model.backbone)
    if cfg.loss_prediction.enabled:
        lossnet.attach(model)  # after the detector: off, the initial weights are unchanged
    setattr(model, _TAG, cfg.name)
    return model


def _unwrap(model: nn.Module) -> nn.Module:
    """The detector inside a DistributedDataParallel wrapper, or the model itself."""
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model


def adapter_of(model: nn.Module) -> Adapter:
    """The adapter of a model :func:`build_model` made (DDP-wrapped or not)."""
    name = getattr(_unwrap(model), _TAG, None)
    if name not in ADAPTERS:
        raise AlDetError(f"unsupported detector {type(_unwrap(model)).__name__}: build it with "
                         f"al_det.models.build_model")
    return ADAPTERS[name]


def set_inference_params(model: nn.Module, score_thresh: float, detections_per_img: int) -> None:
    """Set the score threshold and the per-image cap on detections of a built model."""
    target = adapter_of(model).inference_module(_unwrap(model))
    target.score_thresh = score_thresh
    target.detections_per_img = detections_per_img


def feature_dim(model: nn.Module) -> int:
    """D, the length of the instance feature of each detection (see the module docstring)."""
    return adapter_of(model).feature_dim(_unwrap(model))


def image_feature_dim(model: nn.Module) -> int:
    """D2, the length of the image-level feature (see the module docstring)."""
    return adapter_of(model).image_feature_dim(_unwrap(model))


def feature_maps(model: nn.Module, images: list[Tensor]) -> OrderedDict[str, Tensor]:
    """The backbone maps a training-time module can read (FPN levels, SSD's six maps)."""
    return adapter_of(model).feature_maps(_unwrap(model), images)


def predict_with_features(model: nn.Module, images: list[Tensor],
                          probs: bool = False) -> list[dict[str, Tensor]]:
    """Detect on ``images`` ([3, H, W] floats in [0, 1]) and return each detection's feature.

    Per image: ``boxes`` [n, 4] xyxy in original pixels, ``scores`` [n], ``labels`` [n]
    (1..K), ``features`` [n, D] float32 and ``image_feature`` [D2] float32; with ``probs``,
    ``probs`` [n, K+1] float32 (column 0 background, column j label j: the softmax of the
    detection's own proposal / anchor, or ``[1 - max s, s_1..s_K]`` normalised from a sigmoid
    detector's anchor scores); with a loss-prediction module, ``loss_pred`` (0-d float32).
    The detections are those of ``model(images)`` in eval mode, with ``probs`` on or off. The
    model's train/eval mode is restored after.
    """
    adapter, model = adapter_of(model), _unwrap(model)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            return adapter.predict_with_features(model, images, probs)
    finally:
        model.train(was_training)


def forward_train(model: nn.Module, images: list[Tensor], targets: Targets) -> TrainOutputs:
    """The training forward of ``model`` (train mode): batch losses equal to the stock
    ``model(images, targets)``'s, each image's loss terms alone, and the feature maps."""
    return adapter_of(model).forward_train(_unwrap(model), images, targets)


def per_image_losses(model: nn.Module, images: list[Tensor], targets: Targets) -> Tensor:
    """[B]: each image's detection loss alone (box head for Faster R-CNN, every term for the
    single-stage families; see :mod:`al_det.models.losses`)."""
    per_image = forward_train(model, images, targets).per_image
    return sum(per_image[name] for name in sorted(per_image))
