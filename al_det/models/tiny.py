"""``tiny_frcnn``: a Faster R-CNN small enough to train from scratch on a CPU (demo, tests).

Reads and writes nothing; random initialisation only (it has no pretrained weights).
"""

from __future__ import annotations

from collections import OrderedDict

from torch import Tensor, nn
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.faster_rcnn import FasterRCNN
from torchvision.ops import FeaturePyramidNetwork, MultiScaleRoIAlign

from al_det.config import ModelConfig
from al_det.errors import ConfigError

TINY_WIDTHS = (16, 32, 64, 128)  # stem, then the stages at strides 4, 8, 16
TINY_FPN_CHANNELS = 32
TINY_ROI_SIZE = 7
TINY_BOX_BATCH = 64


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
