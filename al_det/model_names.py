"""The detector names ``model.name`` accepts, without importing torch.

Reads and writes nothing. ``config.py`` validates ``model.name`` against this tuple, and
``al-det acquire`` (which imports config but must never import torch) stays torch-free; the
adapters themselves live in :mod:`al_det.models` (tests/test_models.py checks that its
``ADAPTERS`` keys equal this tuple, in this order).
"""

MODEL_NAMES: tuple[str, ...] = (
    "tiny_frcnn",
    "fasterrcnn_resnet50_fpn",
    "fasterrcnn_resnet101_fpn",
    "fasterrcnn_mobilenet_v3_large_fpn",
    "retinanet_resnet50_fpn",
    "ssd300_vgg16",
    "fcos_resnet50_fpn",
)
