"""al-det: active learning for object detection (ENMS + DivProto, CVPR 2022) on torchvision detectors."""

__version__ = "0.1.0"
