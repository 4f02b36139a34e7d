"""al-det: active learning for object detection (ENMS + DivProto, CVPR 2022), torchvision.

The Python API (imported on first use, so that ``import al_det`` stays light)::

    from al_det import select, read_dump, write_dump
    sel = select("dump/", "labeled.json", "enms_divproto", 100, t_intra=0.6)
    sel.image_ids, sel.keys, sel.reasons
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"

_API = {"select": "al_det.acquire", "Selection": "al_det.acquire", "read_dump": "al_det.dump",
        "write_dump": "al_det.dump", "Dump": "al_det.dump", "STRATEGIES": "al_det.strategies"}
__all__ = [*_API, "__version__"]


def __getattr__(name: str) -> Any:
    if name not in _API:
        raise AttributeError(f"module 'al_det' has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(_API[name]), name)
