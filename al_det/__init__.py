"""al-det: active learning for object detection (ENMS + DivProto, CVPR 2022), torchvision."""

__version__ = "0.1.0"
