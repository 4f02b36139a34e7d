"""Checkpoint files of training, both formats in one place: writing, checking and loading.

Writes (atomically; ``train.py`` calls these on rank 0 only):

* ``cycle_K/train/last.pth``, resumable: ``version`` (:data:`CKPT_VERSION`), ``model``,
  ``optimizer``, ``scaler`` (state dicts), ``iteration``, ``total_iters``, ``world_size``,
  ``config_hash``, ``rng`` (every rank's RNG states, :func:`rng_state`) and ``elapsed``
  (training seconds so far);
* ``cycle_K/model.pth``, the trained model: ``model``, ``name``, ``num_classes``,
  ``categories``, ``cycle``, ``iterations``, ``config_hash``, ``train_seconds``.

Reads both with ``torch.load(weights_only=True)``: a corrupted or foreign file is a
WorkdirError naming it, never a silent retrain.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from al_det.atomic import atomic_open
from al_det.coco import CategoryMap
from al_det.config import ExperimentConfig
from al_det.errors import WorkdirError

log = logging.getLogger(__name__)

CKPT_VERSION = 1
RESTART = "delete it to restart training from scratch"


@dataclass
class TrainingState:
    """The live training objects ``last.pth`` saves; :func:`resume` restores them in place
    and sets ``iteration`` and ``elapsed`` to the checkpoint's."""

    net: nn.Module  # the bare detector (not the DDP wrapper)
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler
    iteration: int
    total: int
    world_size: int
    config_hash: str
    elapsed: float


def save_last(path: Path, state: TrainingState, rng_states: list[dict[str, Any]]) -> None:
    """Write the resumable checkpoint atomically; ``rng_states`` holds every rank's."""
    ckpt = {"version": CKPT_VERSION, "model": state.net.state_dict(),
            "optimizer": state.optimizer.state_dict(), "scaler": state.scaler.state_dict(),
            "iteration": state.iteration, "total_iters": state.total,
            "world_size": state.world_size, "config_hash": state.config_hash,
            "rng": rng_states, "elapsed": state.elapsed}
    with atomic_open(path, "wb") as fh:
        torch.save(ckpt, fh)


def resume(path: Path, state: TrainingState, rank: int) -> None:
    """Restore ``state`` and this rank's RNG states from ``path``, or a WorkdirError naming it
    (another version, training config or labeled set, or a model it does not fit)."""
    ckpt = load_file(path, RESTART)
    needed = {"model", "optimizer", "iteration", "rng"}
    if ckpt.get("version") != CKPT_VERSION or not needed <= ckpt.keys():
        raise WorkdirError(f"{path}: not an al-det training checkpoint (version 1); {RESTART}")
    if ckpt.get("config_hash") != state.config_hash or ckpt.get("total_iters") != state.total:
        raise WorkdirError(f"{path}: written for another training config or labeled set; "
                           f"restore that config or {RESTART}")
    try:
        state.net.load_state_dict(ckpt["model"])
        state.optimizer.load_state_dict(ckpt["optimizer"])
        if ckpt.get("scaler") and state.scaler.is_enabled():
            state.scaler.load_state_dict(ckpt["scaler"])
    except (RuntimeError, ValueError, KeyError) as exc:
        reason = str(exc).splitlines()[0]
        raise WorkdirError(f"{path}: does not fit this model ({reason}); {RESTART}") from None
    states = ckpt["rng"]
    if len(states) != state.world_size:
        log.warning("%s was written by %d processes, now %d: the run continues but will not "
                    "repeat the uninterrupted one exactly", path, len(states), state.world_size)
    set_rng_state(states[rank % len(states)])
    state.iteration = int(ckpt["iteration"])
    state.elapsed = float(ckpt.get("elapsed", 0.0))


def save_trained(path: Path, net: nn.Module, name: str, cmap: CategoryMap, *, k: int,
                 iterations: int, chash: str, seconds: float) -> None:
    """Write the trained model of cycle ``k`` atomically (what :func:`load_trained` reads)."""
    payload = {"model": net.state_dict(), "name": name, "num_classes": len(cmap.labels),
               "categories": cmap.to_json()["categories"], "cycle": k,
               "iterations": iterations, "config_hash": chash,
               "train_seconds": round(seconds, 1)}
    with atomic_open(path, "wb") as fh:
        torch.save(payload, fh)


# train keys added after checkpoints were first written, with the value that reproduces the
# training from before them: at that value a key is left out of the hash, so those fit still
LATER_TRAIN_KEYS = {"augment": "hflip", "min_iters": 0}


def config_hash(cfg: ExperimentConfig, k: int, image_ids: list[int]) -> str:
    """A hash of everything that decides the trained weights (not workers or checkpointing)."""
    train = dataclasses.asdict(cfg.train)
    for key in ("workers", "checkpoint_every"):
        train.pop(key)
    for key, default in LATER_TRAIN_KEYS.items():
        if train[key] == default:
            del train[key]
    model = dataclasses.asdict(cfg.model)
    if not model["loss_prediction"]["enabled"]:
        del model["loss_prediction"]  # off, it decides nothing: earlier checkpoints still fit
    blob = {"seed": cfg.seed, "cycle": k, "model": model, "train": train,
            "images": image_ids}
    return hashlib.sha256(json.dumps(blob, sort_keys=True).encode()).hexdigest()[:16]


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
    if not Path(path).exists():
        raise WorkdirError(f"{path}: not found; {fix}")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - torch raises many types on a bad file
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise WorkdirError(f"{path}: corrupted or unreadable ({reason}); {fix}") from None
    if not isinstance(obj, dict):
        raise WorkdirError(f"{path}: not an al-det checkpoint; {fix}")
    return obj


def check_trained(path: Path) -> None:
    """A ``model.pth`` that exists must load: a truncated or foreign one is named, with what to
    do, rather than taken for a trained cycle."""
    ckpt = load_file(path, "the cycle is not trained: delete it to retrain (`al-det train`)")
    if "model" not in ckpt:
        raise WorkdirError(f"{path}: not an al-det model file; delete it to retrain")


def load_trained(path: Path, cfg: ExperimentConfig, num_classes: int,
                 device: torch.device | str) -> nn.Module:
    """The model saved by :func:`run_train`, in eval mode on ``device``.

    ``num_classes`` is K, the number of foreground categories. A corrupted file, or one saved
    for another detector or category count, is a WorkdirError naming the file.
    """
    from al_det.models import build_model

    path = Path(path)
    if not path.exists():
        raise WorkdirError(f"{path}: not found: this cycle is not trained yet; run `al-det train`")
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
