"""Every artifact path of a work dir, stage state, and the run lock.

Layout (a stage is done when its final file exists; all writes are atomic)::

    WORKDIR/config.yaml            the resolved config, frozen by init
    WORKDIR/versions.json          library versions at init
    WORKDIR/categories.json        categories in model-label order (label = index + 1)
    WORKDIR/data/                  the generated demo dataset (synthetic configs only)
    WORKDIR/summary.csv            one row per evaluated cycle
    WORKDIR/.lock                  held by the process driving the work dir
    WORKDIR/cycle_KKK/labeled.json, unlabeled.json
                      train/last.pth (resumable), train/log.jsonl, model.pth (final)
                      detections.json, metrics.json          (evaluate)
                      dump_shards/rank_R_of_W/, dump/         (infer)
                      selection.json                          (acquire)
"""

from __future__ import annotations

import fcntl
import os
import re
from dataclasses import dataclass
from pathlib import Path

from al_det.errors import WorkdirError

STAGES = ("train", "evaluate", "infer", "acquire")


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
    model = property(lambda self: self.root / "model.pth")
    detections = property(lambda self: self.root / "detections.json")
    metrics = property(lambda self: self.root / "metrics.json")
    dump = property(lambda self: self.root / "dump")
    shards = property(lambda self: self.root / "dump_shards")
    selection = property(lambda self: self.root / "selection.json")
    to_label = property(lambda self: self.root / "to_label.json")

    def shard(self, rank: int, world: int) -> Path:
        return self.shards / f"rank_{rank:03d}_of_{world:03d}"

    def stage_done(self, stage: str) -> bool:
        final = {"train": self.model, "evaluate": self.metrics, "infer": self.dump / "meta.json",
                 "acquire": self.selection}
        return final[stage].exists()


@dataclass(frozen=True)
class Workdir:
    root: Path

    config = property(lambda self: self.root / "config.yaml")
    versions = property(lambda self: self.root / "versions.json")
    categories = property(lambda self: self.root / "categories.json")
    data = property(lambda self: self.root / "data")
    summary = property(lambda self: self.root / "summary.csv")
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
