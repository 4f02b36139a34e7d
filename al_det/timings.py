"""Wall time of each stage run: ``WORKDIR/timings.jsonl``, its one writer and one reader.

One JSON line per completed stage run: ``{"cycle": K, "stage": S, "seconds": T}`` (and
``"shared_from": DIR`` for the cycle-0 lines a sweep copies from its per-seed base work dir).
Written by ``al-det run``, ``al-det sweep`` and the stage commands (rank 0) after the stage
returns, the whole file rewritten atomically; a run that was killed records nothing, and a
resumed stage records only its last run. Nothing reads this file to decide a result: it is for
``al-det report`` (the paper's Table 4) only, so timings never make two runs differ.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from al_det import atomic

NAME = "timings.jsonl"


def timings_path(root: Path) -> Path:
    return Path(root) / NAME


def append_timing(root: Path, record: dict) -> None:
    """Append one record (the file rewritten atomically: a reader sees whole lines)."""
    path = timings_path(root)
    old = path.read_text() if path.exists() else ""
    atomic.write_text(path, old + json.dumps(record, sort_keys=True) + "\n")


@contextmanager
def timed(root: Path, k: int, stage: str, is_main: bool = True) -> Iterator[None]:
    """Record the seconds of what runs inside, if it returns (not when it raises)."""
    start = time.monotonic()
    yield
    if is_main:
        append_timing(root, {"cycle": k, "stage": stage,
                             "seconds": round(time.monotonic() - start, 3)})


def run_timed(root: Path, k: int, stage: str, fn: Callable[[], Any]) -> Any:
    """``fn()`` under :func:`timed` (rank 0 records)."""
    from al_det import dist

    with timed(root, k, stage, dist.is_main()):
        return fn()


def read_timings(root: Path) -> list[dict]:
    """The records of ``WORKDIR/timings.jsonl`` (none if it does not exist; torn lines
    skipped)."""
    path = timings_path(root)
    if not path.exists():
        return []
    out = []
    for line in path.read_text().splitlines():
        try:
            rec = json.loads(line)
        except ValueError:
            continue
        if isinstance(rec, dict) and {"cycle", "stage", "seconds"} <= rec.keys():
            out.append(rec)
    return out
