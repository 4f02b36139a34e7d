"""Checkpoint files of training: RNG states, safe loading, and the trained model.

Reads ``cycle_K/train/last.pth`` and ``cycle_K/model.pth`` with
``torch.load(weights_only=True)``: a corrupted or foreign file is a WorkdirError naming it,
never a silent retrain. Writes nothing (``train.py`` saves, atomically).
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from al_det.config import ExperimentConfig
from al_det.errors import WorkdirError


def rng_state() -> dict[str, Any]:
    """This process's RNG states as tensors and plain containers (``weights_only`` loadable)."""
    _, keys, pos, has_gauss, gauss = np.random.get_state()
    version, py_state, py_gauss = random.getstate()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": {"keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "gauss": float(gauss)},
        "python": {"version": version, "state": list(py_state), "gauss": py_gauss},
    }


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    cuda = state["cuda"]
    if cuda and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["cuda"])
    n = state["numpy"]
    np.random.set_state(("MT19937", n["keys"].numpy().astype(np.uint32), n["pos"],
                         n["has_gauss"], n["gauss"]))
    p = state["python"]
    random.setstate((p["version"], tuple(p["state"]), p["gauss"]))


def load_file(path: Path, fix: str) -> dict:
    """``torch.load(weights_only=True)`` or a WorkdirError naming the file."""
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - torch raises many types on a bad file
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise WorkdirError(f"{path}: corrupted or unreadable ({reason}); {fix}") from None
    if not isinstance(obj, dict):
        raise WorkdirError(f"{path}: not an al-det checkpoint; {fix}")
    return obj


def load_trained(path: Path, cfg: ExperimentConfig, num_classes: int,
                 device: torch.device | str) -> nn.Module:
    """The model saved by :func:`run_train`, in eval mode on ``device``.

    ``num_classes`` is K, the number of foreground categories. A corrupted file, or one saved
    for another detector or category count, is a WorkdirError naming the file.
    """
    from al_det.models import build_model

    path = Path(path)
    fix = "delete it and rerun `al-det train` for this cycle"
    ckpt = load_file(path, fix)
    if "model" not in ckpt:
        raise WorkdirError(f"{path}: not an al-det model file; {fix}")
    if ckpt.get("name") != cfg.model.name or ckpt.get("num_classes") != num_classes:
        raise WorkdirError(
            f"{path}: holds a {ckpt.get('name')} for {ckpt.get('num_classes')} classes, but the "
            f"config asks for a {cfg.model.name} for {num_classes}; {fix}")
    model = build_model(cfg.model, num_classes=num_classes, score_thresh=cfg.infer.score_thresh,
                        detections_per_img=cfg.infer.detections_per_img, load_weights=False)
    try:
        model.load_state_dict(ckpt["model"])
    except RuntimeError as exc:
        raise WorkdirError(f"{path}: does not fit the model ({str(exc).splitlines()[0]}); "
                           f"{fix}") from None
    return model.to(device).eval()
