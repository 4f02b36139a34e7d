"""``al-det train``: train one cycle's detector on its labeled split, resumable, DDP under torchrun.

Reads ``cycle_K/labeled.json``, ``WORKDIR/categories.json``, the pool images
(``data.pool_images``) and, when present, the resumable checkpoint ``cycle_K/train/last.pth``.
Writes (rank 0 only, every file atomically):

* ``cycle_K/train/last.pth``, resumable (its format: :mod:`al_det.checkpoint`), every
  ``train.checkpoint_every`` iterations, at each epoch end and on SIGTERM;
* ``cycle_K/train/log.jsonl``: one JSON line every :data:`LOG_EVERY` iterations and at the end;
* ``cycle_K/train/interrupted``: marker written when SIGTERM stopped training (removed on resume);
* ``cycle_K/model.pth``: the final model (:mod:`al_det.checkpoint`); its existence means the
  stage is done, and ``last.pth`` is then removed.

The schedule counts iterations: ``epochs * ceil(n_labeled / batch_size)``, with ``batch_size``
the global batch split evenly over the processes, and ``epochs`` raised to the fewest whole
epochs that reach ``train.min_iters`` iterations when that is more. With
``model.loss_prediction.enabled`` the step runs
:class:`al_det.models.lossnet.LossPredictionTrainer` (the module DDP wraps) and adds its
ranking loss ``loss_ll``; the module's input is detached from iteration
``round(detach_after * total)`` on, a function of the iteration alone (resumes repeat it).
The data order and flips are a pure function of (seed, cycle, epoch, position) and all RNG
states are restored, so a resumed run ends with the weights the uninterrupted run would have
produced.
"""

from __future__ import annotations

import json
import logging
import math
import random
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from al_det import checkpoint, data, dist, testhooks
from al_det.atomic import write_json, write_text
from al_det.coco import CategoryMap, load_coco
from al_det.config import ExperimentConfig, TrainConfig
from al_det.errors import AlDetError, ConfigError, WorkdirError
from al_det.workdir import Cycle, Workdir

log = logging.getLogger(__name__)

LOG_EVERY = 20
EXIT_SIGTERM = 143  # 128 + SIGTERM: what Slurm and shells expect from a terminated job


class TrainingInterrupted(AlDetError):
    """SIGTERM stopped training after a checkpoint was saved; rerunning resumes it."""

    exit_code = EXIT_SIGTERM


# ------------------------------------------------------------------------------ schedule
def lr_at(iteration: int, total: int, t: TrainConfig) -> float:
    """The learning rate of (0-based) ``iteration`` out of ``total``.

    Linear warmup from ``warmup_factor * lr`` over ``min(warmup_iters, total)`` iterations,
    times ``lr_gamma`` once per milestone ``round(f * total)`` (f in ``lr_steps``) reached.
    """
    warm = min(t.warmup_iters, total)
    factor = 1.0
    if iteration < warm:
        alpha = iteration / warm
        factor = t.warmup_factor * (1.0 - alpha) + alpha
    steps = sum(iteration >= round(f * total) for f in t.lr_steps)
    return t.lr * factor * t.lr_gamma ** steps


def check_train_config(t: TrainConfig, world: int, loss_prediction: bool = False) -> None:
    """Settings only a training run can check (the world size is known only now);
    ``loss_prediction``: the module is on, so each process's batch must pair up."""
    if t.batch_size % world:
        fit = world * max(1, t.batch_size // world)
        raise ConfigError(f"train.batch_size={t.batch_size} is the global batch: it must be "
                          f"divisible by the {world} processes (e.g. {fit})")
    if loss_prediction and (t.batch_size // world) % 2:
        raise ConfigError(
            f"train.batch_size={t.batch_size} gives {t.batch_size // world} images per process "
            f"({world} processes): model.loss_prediction pairs the images of each process's "
            f"batch, so that must be even (e.g. train.batch_size={2 * t.batch_size})")
    if any(not 0.0 <= f <= 1.0 for f in t.lr_steps):
        raise ConfigError(f"train.lr_steps={list(t.lr_steps)}: give fractions of training "
                          "in [0, 1]")
    if t.warmup_iters < 0:
        raise ConfigError(f"train.warmup_iters={t.warmup_iters} must be >= 0")
    if t.clip_grad is not None and t.clip_grad <= 0:
        raise ConfigError(f"train.clip_grad={t.clip_grad} must be > 0 (or unset)")


# ------------------------------------------------------------------------------ state
@dataclass
class _Run:
    """Everything one training run carries between its helpers."""

    cfg: ExperimentConfig
    cycle: Cycle
    k: int
    info: dist.DistInfo
    dataset: data.DetectionDataset
    cmap: CategoryMap
    net: nn.Module  # the bare detector
    model: nn.Module  # the same, wrapped in DDP when distributed
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler
    total: int
    per_epoch: int
    chash: str
    detach_at: int | None = None  # loss prediction: the iteration its input is detached from
    iteration: int = 0
    saved_at: int = -1
    time_before: float = 0.0  # training seconds of the runs this one resumes
    started: float = field(default_factory=time.monotonic)
    window: list[dict[str, float]] = field(default_factory=list)

    @property
    def amp(self) -> bool:
        return self.scaler.is_enabled()

    @property
    def elapsed(self) -> float:
        """Training seconds so far, the interrupted runs included."""
        return self.time_before + time.monotonic() - self.started


def run_train(wd: Workdir, k: int, cfg: ExperimentConfig, *,
              on_iteration: Callable[[int], None] | None = None) -> Path:
    """Train cycle ``k`` (resuming from ``last.pth`` if any) and return ``cycle_K/model.pth``.

    ``on_iteration(i)`` is called after each completed iteration ``i`` (1-based; for tests and
    tools). A cycle whose ``model.pth`` exists is left as it is.
    """
    cycle = wd.cycle(k)
    info = dist.init_distributed(cfg.device)
    if cycle.model.exists():
        checkpoint.check_trained(cycle.model)
        if info.is_main:
            log.info("%s exists: cycle %d is trained", cycle.model, k)
        return cycle.model
    check_train_config(cfg.train, info.world_size, cfg.model.loss_prediction.enabled)
    run = _setup(wd, cycle, k, cfg, info)
    with _sigterm_flag() as stop:
        _train_loop(run, stop, on_iteration)
        return _save_final(run)  # a SIGTERM now lets the (short) final save finish


def _setup(wd: Workdir, cycle: Cycle, k: int, cfg: ExperimentConfig,
           info: dist.DistInfo) -> _Run:
    from al_det.models import build_model

    dataset, cmap = _dataset(wd, cycle, k, cfg)
    per_epoch = math.ceil(len(dataset) / cfg.train.batch_size)
    _seed_all(cfg.seed + k)  # every rank builds the same initial weights
    net = build_model(cfg.model, num_classes=len(cmap.labels),
                      score_thresh=cfg.infer.score_thresh,
                      detections_per_img=cfg.infer.detections_per_img).to(info.device)
    net.train()
    params = [p for p in net.parameters() if p.requires_grad]
    t = cfg.train
    optimizer = torch.optim.SGD(params, lr=t.lr, momentum=t.momentum,
                                weight_decay=t.weight_decay)
    scaler = torch.amp.GradScaler(info.device.type, enabled=t.amp and info.device.type == "cuda")
    model, lp, total = net, cfg.model.loss_prediction, schedule_length(t, per_epoch)
    if lp.enabled:  # the head must run inside the module DDP wraps, for its gradients
        from al_det.models.lossnet import LossPredictionTrainer

        model = LossPredictionTrainer(net, lp.weight, lp.margin)
    if info.distributed:
        ids = [info.device.index] if info.device.type == "cuda" else None
        model = nn.parallel.DistributedDataParallel(model, device_ids=ids)
    image_ids = [im["id"] for im in dataset.images]
    run = _Run(cfg, cycle, k, info, dataset, cmap, net, model, optimizer, scaler,
               total=total, per_epoch=per_epoch, chash=checkpoint.config_hash(cfg, k, image_ids),
               detach_at=round(lp.detach_after * total) if lp.enabled else None)
    if cycle.last_ckpt.exists():
        _resume(run)
    return run


def schedule_length(t: TrainConfig, per_epoch: int) -> int:
    """Iterations of a cycle: ``epochs`` epochs, or the fewest whole ones reaching ``min_iters``."""
    return max(t.epochs, math.ceil(t.min_iters / per_epoch)) * per_epoch


def _dataset(wd: Workdir, cycle: Cycle, k: int,
             cfg: ExperimentConfig) -> tuple[data.DetectionDataset, CategoryMap]:
    if not cycle.labeled.exists():
        raise WorkdirError(f"{cycle.labeled}: missing; cycle {k} has no labeled split yet")
    if cfg.data.pool_images is None:
        raise ConfigError("data.pool_images is not set: name the folder of the pool's images")
    cmap = wd.read_categories()
    labeled = load_coco(cycle.labeled)
    if not labeled["images"]:
        raise WorkdirError(f"{cycle.labeled}: no labeled images to train on")
    # the data seed is a function of (seed, cycle): each cycle sees its own order and flips
    seed = int(np.random.SeedSequence([cfg.seed % 2**32, k]).generate_state(1)[0])
    return data.DetectionDataset(labeled, cfg.data.pool_images, cmap, cfg.train.hflip, seed,
                                 cfg.train.augment), cmap


def _seed_all(seed: int) -> None:
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)
    random.seed(seed)


# ------------------------------------------------------------------------------ the loop
def _train_loop(run: _Run, stop: threading.Event,
                on_iteration: Callable[[int], None] | None) -> None:
    bar = tqdm(total=run.total, initial=run.iteration, desc=f"train cycle {run.k}",
               disable=not run.info.is_main, dynamic_ncols=True,
               mininterval=0.1 if sys.stderr.isatty() else 30.0)  # a Slurm log: rarely
    with bar:
        _epochs(run, stop, on_iteration, bar)


def _epochs(run: _Run, stop: threading.Event, on_iteration: Callable[[int], None] | None,
            bar: tqdm) -> None:
    t = run.cfg.train
    run.started, start_iter = time.monotonic(), run.iteration
    while run.iteration < run.total:
        epoch, pos = divmod(run.iteration, run.per_epoch)
        loader = data.train_loader(
            run.dataset, t.batch_size, epoch, rank=run.info.rank, world=run.info.world_size,
            start=pos, workers=t.workers, pin_memory=run.info.device.type == "cuda")
        for images, targets in data.batches(loader):
            if _should_stop(stop, run):
                _interrupt(run)
            lr, losses = _step(run, images, targets)
            run.iteration += 1
            _report(run, bar, lr, losses, epoch, time.monotonic() - run.started, start_iter)
            if on_iteration is not None:
                on_iteration(run.iteration)
            if run.iteration % t.checkpoint_every == 0 and run.iteration < run.total:
                save_checkpoint(run)
            if run.info.is_main:  # test-only (AL_DET_TEST_PAUSE_AT); a no-op in normal runs
                testhooks.pause_at(f"train:{run.k}:{run.iteration}", until=stop.is_set)
        if run.iteration < run.total and run.saved_at != run.iteration:
            save_checkpoint(run)  # epoch end


def _step(run: _Run, images: list[torch.Tensor],
          targets: list[dict]) -> tuple[float, dict[str, float]]:
    """One SGD iteration; returns its lr and the losses averaged over ranks."""
    dev = run.info.device
    images = [im.to(dev, non_blocking=True) for im in images]
    targets = [{k: v.to(dev) if torch.is_tensor(v) else v for k, v in t.items()}
               for t in targets]
    lr = lr_at(run.iteration, run.total, run.cfg.train)
    for group in run.optimizer.param_groups:
        group["lr"] = lr
    # loss prediction: its input is detached from iteration round(detach_after * total) on
    extra = {} if run.detach_at is None else {"detach": run.iteration >= run.detach_at}
    with torch.autocast(device_type=dev.type, enabled=run.amp):
        loss_dict = run.model(images, targets, **extra)
    names = sorted(loss_dict)
    local = torch.stack([loss_dict[n].detach().float() for n in names])
    mean = dist.all_reduce_sum(local) / run.info.world_size
    if not torch.isfinite(mean).all():
        _nonfinite(run, local, targets, dict(zip(names, mean.tolist(), strict=True)))
    loss = sum(loss_dict[n] for n in names)
    run.optimizer.zero_grad(set_to_none=True)
    run.scaler.scale(loss).backward()
    if run.cfg.train.clip_grad is not None:
        run.scaler.unscale_(run.optimizer)
        nn.utils.clip_grad_norm_(run.net.parameters(), run.cfg.train.clip_grad)
    run.scaler.step(run.optimizer)
    run.scaler.update()
    return lr, dict(zip(names, mean.tolist(), strict=True))


def _nonfinite(run: _Run, local: torch.Tensor, targets: list[dict],
               losses: dict[str, float]) -> None:
    """Stop on a NaN/inf loss, naming the images of every rank whose loss was not finite."""
    mine = [t["image_id"] for t in targets] if not torch.isfinite(local).all() else []
    bad = [i for ids in dist.all_gather_object(mine) for i in ids]
    names = {im["id"]: im["file_name"] for im in run.dataset.images}
    listed = ", ".join(f"{names.get(i, '?')} (image id {i})" for i in bad)
    kept = (f"the last good checkpoint {run.cycle.last_ckpt} is kept"
            if run.cycle.last_ckpt.exists() else "no checkpoint was written yet")
    shown = ", ".join(f"{n}={v:.4g}" for n, v in losses.items())
    raise AlDetError(
        f"{run.cycle.train_dir}: non-finite loss ({shown}) at iteration {run.iteration + 1} of "
        f"{run.total} on the batch of {listed}; {kept}. Check these images' boxes or lower "
        f"train.lr / raise train.warmup_iters, then rerun")


def _should_stop(stop: threading.Event, run: _Run) -> bool:
    """Whether SIGTERM reached any rank (all ranks must stop at the same iteration)."""
    if not run.info.distributed:
        return stop.is_set()
    flag = torch.tensor([float(stop.is_set())], device=run.info.device)
    return bool(dist.all_reduce_sum(flag).item() > 0)


def _interrupt(run: _Run) -> None:
    save_checkpoint(run)
    if run.info.is_main:
        write_json(run.cycle.interrupted,
                   {"iteration": run.iteration, "total": run.total, "time": time.time()})
    dist.barrier()
    raise TrainingInterrupted(
        f"{run.cycle.last_ckpt}: training of cycle {run.k} stopped by SIGTERM at iteration "
        f"{run.iteration} of {run.total}; checkpoint saved, rerun the same command to resume")


@contextmanager
def _sigterm_flag() -> Iterator[threading.Event]:
    """An event set by SIGTERM while training (the handler only sets it: saving is not safe
    inside a signal handler); the previous handler is restored afterwards."""
    stop = threading.Event()
    if threading.current_thread() is not threading.main_thread():
        yield stop  # signals can only be caught in the main thread
        return
    previous = signal.signal(signal.SIGTERM, lambda signum, frame: stop.set())
    try:
        yield stop
    finally:
        signal.signal(signal.SIGTERM, previous)


# ------------------------------------------------------------------------------ logging
def _report(run: _Run, bar: tqdm, lr: float, losses: dict[str, float], epoch: int,
            elapsed: float, start_iter: int) -> None:
    """Progress bar every iteration, a JSON log line every LOG_EVERY and at the end (rank 0)."""
    if not run.info.is_main:
        return
    run.window.append(losses)
    bar.set_postfix(loss=f"{sum(losses.values()):.3f}", lr=f"{lr:.2e}", refresh=False)
    bar.update(1)
    if run.iteration % LOG_EVERY and run.iteration != run.total:
        return
    mean = {n: float(np.mean([w[n] for w in run.window])) for n in run.window[0]}
    rate = elapsed / max(1, run.iteration - start_iter)
    eta = round(rate * (run.total - run.iteration), 1)
    line = {"iter": run.iteration, "epoch": epoch + 1, "lr": lr, "loss": sum(mean.values()),
            **mean, "time": round(run.elapsed, 3), "eta_s": eta}
    append_log(run.cycle.train_log, line)
    run.window = []


def append_log(path: Path, record: dict) -> None:
    """Append one JSON line (one write + flush: a reader sees whole lines)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a", encoding="utf-8") as fh:
        fh.write(json.dumps(record) + "\n")
        fh.flush()


def _trim_log(path: Path, iteration: int) -> None:
    """Drop log lines past ``iteration`` (written after the checkpoint we resume from)."""
    if not path.exists():
        return
    keep = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue  # a line torn by a kill
        if record.get("iter", 0) <= iteration:
            keep.append(line + "\n")
    write_text(path, "".join(keep))


# ------------------------------------------------------------------------------ checkpoints
def save_checkpoint(run: _Run) -> None:
    """Write ``last.pth`` (rank 0, atomically) with every rank's RNG states; all ranks call it."""
    states = dist.all_gather_object(checkpoint.rng_state())
    if run.info.is_main:
        checkpoint.save_last(run.cycle.last_ckpt, _training_state(run), states)
    run.saved_at = run.iteration
    dist.barrier()  # nobody exits (and gets the job torn down) before the file is complete


def _training_state(run: _Run) -> checkpoint.TrainingState:
    return checkpoint.TrainingState(run.net, run.optimizer, run.scaler, run.iteration, run.total,
                                    run.info.world_size, run.chash, run.elapsed)


def _resume(run: _Run) -> None:
    state = _training_state(run)
    checkpoint.resume(run.cycle.last_ckpt, state, run.info.rank)
    run.iteration = run.saved_at = state.iteration
    run.time_before = state.elapsed
    if run.info.is_main:
        _trim_log(run.cycle.train_log, run.iteration)
        append_log(run.cycle.train_log, {"event": "resumed", "iter": run.iteration})
        run.cycle.interrupted.unlink(missing_ok=True)
        log.info("resuming cycle %d from %s at iteration %d of %d", run.k, run.cycle.last_ckpt,
                 run.iteration, run.total)


def _save_final(run: _Run) -> Path:
    """Write ``model.pth`` (rank 0), then drop the resumable checkpoint and marker."""
    if run.info.is_main:
        checkpoint.save_trained(run.cycle.model, run.net, run.cfg.model.name, run.cmap, k=run.k,
                                iterations=run.total, chash=run.chash, seconds=run.elapsed)
        run.cycle.last_ckpt.unlink(missing_ok=True)
        run.cycle.interrupted.unlink(missing_ok=True)
        log.info("cycle %d trained: %s", run.k, run.cycle.model)
    dist.barrier()
    return run.cycle.model
