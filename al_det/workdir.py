"""The work dir: every artifact path, stage state, opening, the run lock and its history.

Layout (a stage is done when its final file exists; all writes are atomic)::

    WORKDIR/config.yaml            the resolved config, frozen by init
    WORKDIR/.frozen.yaml           what init froze (a hand edit of config.yaml is compared to it)
    WORKDIR/versions.json          library versions at init
    WORKDIR/categories.json        categories in model-label order (label = index + 1)
    WORKDIR/history.jsonl          forced changes of config or versions, one JSON line each
    WORKDIR/data/                  the generated demo dataset (synthetic configs only)
    WORKDIR/summary.csv            one row per evaluated cycle
    WORKDIR/timings.jsonl          seconds of each completed stage run (al_det/timings.py)
    WORKDIR/report/                al-det report's default output
    WORKDIR/.lock                  held by the process driving the work dir
    WORKDIR/cycle_KKK/labeled.json, unlabeled.json
                      train/last.pth (resumable), train/log.jsonl, train/interrupted,
                      model.pth (final)
                      detections.json, metrics.json          (evaluate)
                      dump_shards/chunk_NNNNN/, dump/         (infer)
                      selection.json, to_label.json           (acquire)
                      preannotations.json, labelstudio_tasks.json, labelstudio_config.xml,
                      to_label.txt                            (acquire, labelling mode)

Reads ``config.yaml``, ``.frozen.yaml``, ``versions.json``, ``categories.json`` and the split
files for the commands (one reader each); writes ``history.jsonl`` and, when a change is
forced, the frozen config and versions.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import re
import shutil
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

import orjson

from al_det import atomic
from al_det.coco import CategoryMap
from al_det.config import ExperimentConfig, diff_configs, dump_config, load_config
from al_det.errors import ConfigError, WorkdirError

log = logging.getLogger(__name__)

STAGES = ("train", "evaluate", "infer", "acquire")
TRACKED_PACKAGES = ("al-det", "torch", "torchvision", "numpy", "pycocotools")


@dataclass(frozen=True)
class Cycle:
    """Paths of one cycle's artifacts."""

    root: Path

    @property
    def index(self) -> int:
        return int(self.root.name.split("_")[1])

    labeled = property(lambda self: self.root / "labeled.json")
    unlabeled = property(lambda self: self.root / "unlabeled.json")
    train_dir = property(lambda self: self.root / "train")
    last_ckpt = property(lambda self: self.root / "train" / "last.pth")
    train_log = property(lambda self: self.root / "train" / "log.jsonl")
    interrupted = property(lambda self: self.root / "train" / "interrupted")
    model = property(lambda self: self.root / "model.pth")
    detections = property(lambda self: self.root / "detections.json")
    metrics = property(lambda self: self.root / "metrics.json")
    dump = property(lambda self: self.root / "dump")
    shards = property(lambda self: self.root / "dump_shards")
    selection = property(lambda self: self.root / "selection.json")
    to_label = property(lambda self: self.root / "to_label.json")
    # the hand-off of a labelling round, beside to_label.json (al_det/handoff.py)
    preannotations = property(lambda self: self.root / "preannotations.json")
    ls_tasks = property(lambda self: self.root / "labelstudio_tasks.json")
    ls_config = property(lambda self: self.root / "labelstudio_config.xml")
    to_label_txt = property(lambda self: self.root / "to_label.txt")

    def chunk(self, c: int) -> Path:
        """The folder of inference chunk ``c`` (a complete dump of its images once done)."""
        return self.shards / f"chunk_{c:05d}"


@dataclass(frozen=True)
class Workdir:
    root: Path

    config = property(lambda self: self.root / "config.yaml")
    frozen = property(lambda self: self.root / ".frozen.yaml")
    versions = property(lambda self: self.root / "versions.json")
    categories = property(lambda self: self.root / "categories.json")
    history = property(lambda self: self.root / "history.jsonl")
    data = property(lambda self: self.root / "data")
    summary = property(lambda self: self.root / "summary.csv")
    curve = property(lambda self: self.root / "curve.png")
    lock_file = property(lambda self: self.root / ".lock")

    def cycle(self, k: int) -> Cycle:
        return Cycle(self.root / f"cycle_{k:03d}")

    def cycles(self) -> list[int]:
        """Indices of the cycles that have their splits, ascending."""
        found = []
        for p in self.root.glob("cycle_*"):
            if re.fullmatch(r"cycle_\d{3,}", p.name) and (p / "unlabeled.json").exists():
                found.append(int(p.name.split("_")[1]))
        return sorted(found)

    def latest_cycle(self) -> int:
        cycles = self.cycles()
        if not cycles:
            raise WorkdirError(f"{self.root}: no cycle yet: run `al-det init -c CONFIG -w DIR`")
        return cycles[-1]

    def resolve_cycle(self, k: int | None) -> Cycle:
        """The given cycle, or the latest one; an error naming the work dir if it is missing."""
        if not self.config.exists():
            raise WorkdirError(
                f"{self.root}: not an al-det work dir (no config.yaml): run `al-det init` first"
            )
        k = self.latest_cycle() if k is None else k
        cycle = self.cycle(k)
        if not cycle.unlabeled.exists():
            raise WorkdirError(f"{cycle.root}: cycle {k} has no splits yet (acquire cycle {k - 1})")
        return cycle

    def stage_done(self, k: int, stage: str, mode: str = "simulation") -> bool:
        """Whether ``stage`` of cycle ``k`` has its final file. An acquisition ends with the
        next cycle's splits (simulation) or with the images to label (labelling)."""
        c = self.cycle(k)
        final = {"train": c.model, "evaluate": c.metrics, "infer": c.dump / "meta.json",
                 "acquire": c.to_label if mode == "labelling" else self.cycle(k + 1).unlabeled}
        if stage not in final:
            raise WorkdirError(f"unknown stage {stage!r}; stages: {', '.join(STAGES)}")
        return final[stage].exists()

    def read_categories(self) -> CategoryMap:
        """``categories.json``: the model's labels, fixed at init."""
        try:
            return CategoryMap.from_json(json.loads(self.categories.read_text()),
                                         str(self.categories))
        except (OSError, ValueError) as exc:
            raise WorkdirError(f"{self.categories}: missing or unreadable ({exc}); re-run "
                               "`al-det init` in a new work dir") from exc


def read_split(path: Path) -> dict:
    """A split file (``labeled.json``, ``unlabeled.json``, ``to_label.json``) as a COCO dict."""
    try:
        data = orjson.loads(Path(path).read_bytes())
    except FileNotFoundError:
        raise WorkdirError(f"{path}: missing; the cycle has no such split yet") from None
    except (OSError, orjson.JSONDecodeError) as exc:
        raise WorkdirError(f"{path}: corrupted or unreadable ({exc}); restore it from the "
                           "previous cycle's acquisition (delete it and rerun `al-det acquire`)"
                           ) from exc
    if not isinstance(data, dict) or not isinstance(data.get("images"), list):
        raise WorkdirError(f"{path}: not a split file (a COCO object with 'images'); restore it")
    return data


# ---------------------------------------------------------------------------- the run lock
class RunLock:
    """An exclusive, non-blocking lock on the work dir (released by the OS if we die).

    Under torchrun only rank 0 takes it, so one job of N processes counts as one driver.
    """

    def __init__(self, workdir: Workdir):
        self.path = workdir.lock_file
        self.fd: int | None = None

    def __enter__(self) -> RunLock:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(self.fd, 64, 0).decode(errors="replace").strip() or "?"
            os.close(self.fd)
            self.fd = None
            raise WorkdirError(
                f"{self.path.parent}: another al-det process (pid {holder}) is using this work "
                "dir; wait for it to finish or stop it"
            ) from None
        os.ftruncate(self.fd, 0)
        os.pwrite(self.fd, str(os.getpid()).encode(), 0)
        return self

    def __exit__(self, *exc: object) -> None:
        if self.fd is not None:
            fcntl.flock(self.fd, fcntl.LOCK_UN)
            os.close(self.fd)
            self.fd = None


@contextmanager
def locked_workdir(wd: Workdir) -> Iterator[None]:
    """Hold the work dir's lock and clear leftovers of killed writes; if what runs inside fails
    before ``config.yaml`` exists in a work dir this call created, remove that dir again, so a
    failed init leaves nothing behind."""
    fresh = not wd.root.exists()
    try:
        with RunLock(wd):
            atomic.clean_tmp(wd.root)
            yield
    except BaseException:
        if fresh and not wd.config.exists():
            shutil.rmtree(wd.root, ignore_errors=True)
        raise


# ------------------------------------------------------------- opening: the frozen config
def library_versions() -> dict[str, str]:
    """Installed versions, read from package metadata (no torch import)."""
    out = {}
    for name in TRACKED_PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "not installed"
    return out


def load_frozen(wd: Workdir) -> ExperimentConfig:
    if not wd.config.exists():
        raise WorkdirError(f"{wd.root}: not an al-det work dir (no config.yaml): run `al-det init`")
    return load_config(wd.config)


def freeze(wd: Workdir, cfg: ExperimentConfig) -> None:
    """Write ``cfg`` as the work dir's config (``.frozen.yaml`` first, ``config.yaml`` last:
    init's final file)."""
    text = dump_config(cfg)
    atomic.write_text(wd.frozen, text)
    atomic.write_text(wd.config, text)


@dataclass(frozen=True)
class Changes:
    """What opening a work dir found changed since init: config keys and library versions,
    and ``extended``: more cycles, which changes no finished result (allowed, recorded)."""

    config: list[str]
    versions: list[str]
    extended: list[str]


def find_changes(wd: Workdir, cfg: ExperimentConfig) -> Changes:
    """How ``cfg`` differs from what init froze, and the library versions from those at init."""
    # a work dir from before .frozen.yaml existed: compare with its config.yaml
    frozen_cfg = load_config(wd.frozen if wd.frozen.exists() else wd.config)
    config = diff_configs(frozen_cfg, cfg)
    extended = [c for c in config if c.startswith("cycles:") and cfg.cycles > frozen_cfg.cycles]
    frozen = json.loads(wd.versions.read_text()) if wd.versions.exists() else {}
    versions = [f"{k}: {frozen.get(k)} -> {v}" for k, v in library_versions().items()
                if frozen.get(k) != v]
    return Changes([c for c in config if c not in extended], versions, extended)


def refuse_changes(wd: Workdir, changes: Changes) -> None:
    """Unforced changes are refused, naming them; results would mix settings or versions."""
    if changes.config:
        raise ConfigError(
            f"{wd.config}: the config differs from the one this work dir was initialised "
            f"with ({'; '.join(changes.config)}); use a new work dir, or --force to adopt it")
    if changes.versions:
        raise WorkdirError(
            f"{wd.versions}: library versions changed since init ({'; '.join(changes.versions)}"
            "); results would mix versions: use the same environment, or --force to go on")


def adopt_changes(wd: Workdir, cfg: ExperimentConfig, changes: Changes) -> None:
    """Forced changes (and more cycles): recorded in history.jsonl, then frozen as the new
    truth. Only the process holding the lock calls this (rank 0 under torchrun)."""
    if changes.extended:
        record_forced(wd, "extended", changes.extended)
    if changes.config:
        record_forced(wd, "config", changes.config)
    if changes.config or changes.extended:
        freeze(wd, cfg)
    if changes.versions:
        record_forced(wd, "versions", changes.versions)
        atomic.write_json(wd.versions, library_versions(), indent=1)


def open_workdir(workdir: Path, force: bool = False, *, record: bool = True,
                 cfg: ExperimentConfig | None = None) -> tuple[Workdir, ExperimentConfig]:
    """The work dir and its frozen config (or ``cfg``, a changed one). A hand-edited
    config.yaml, a changed ``cfg`` or changed library versions are refused unless forced;
    forced ones are recorded when ``record`` (the lock holder), so each change once."""
    wd = Workdir(Path(workdir))
    cfg = load_frozen(wd) if cfg is None else cfg
    changes = find_changes(wd, cfg)
    if not force:
        refuse_changes(wd, changes)
    if record:
        adopt_changes(wd, cfg, changes)
    return wd, cfg


def record_forced(wd: Workdir, what: str, changes: list[str]) -> None:
    """Append a forced change (``what``: config, versions, extended) to history.jsonl
    (rewritten atomically)."""
    old = wd.history.read_text() if wd.history.exists() else ""
    line = json.dumps({"time": time.strftime("%Y-%m-%dT%H:%M:%S"), "forced": what,
                       "changes": changes})
    atomic.write_text(wd.history, old + line + "\n")
    log.warning("forced %s change: %s", what, "; ".join(changes))
