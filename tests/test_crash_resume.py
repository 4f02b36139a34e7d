"""Fault injection: SIGKILL `al-det run` at several points, rerun, and end where an
uninterrupted run ends: the same splits in every cycle and no temporary file left behind."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

CONFIG = """\
seed: 5
cycles: 3
initial: 12
data:
  synthetic: {n_pool: 40, n_test: 8, image_size: 128, seed: 2}
model: {name: tiny_frcnn, min_size: 128, max_size: 128}
train: {epochs: 2, batch_size: 4, warmup_iters: 2, workers: 0, checkpoint_every: 2}
infer: {batch_size: 4, workers: 0, score_thresh: 0.0, chunk_size: 8}
acquire: {strategy: enms_divproto, budget: 6}
"""

# kill when these appear: mid-training, mid-inference, after the acquisition, next training
TRIGGERS = (
    "cycle_000/train/last.pth",
    "cycle_000/dump_shards/chunk_00001/meta.json",
    "cycle_000/selection.json",
    "cycle_001/train/last.pth",
    "cycle_001/dump_shards/chunk_00000/meta.json",
)


def start_run(config: Path, wd: Path) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "al_det", "run", "-c", str(config), "-w", str(wd)]
    return subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def kill_when(proc: subprocess.Popen, path: Path, timeout: float = 300) -> bool:
    """SIGKILL ``proc`` as soon as ``path`` exists; False if it ended first."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists():
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()
            return True
        if proc.poll() is not None:
            return False
        time.sleep(0.02)
    proc.kill()
    raise AssertionError(f"{path} did not appear in {timeout} s")


def finish(proc: subprocess.Popen) -> None:
    _, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err


def splits(wd: Path) -> list[tuple[list[int], list[int]]]:
    out = []
    for cycle in sorted(wd.glob("cycle_*")):
        labeled = json.loads((cycle / "labeled.json").read_text())
        unlabeled = json.loads((cycle / "unlabeled.json").read_text())
        out.append(([i["id"] for i in labeled["images"]], [i["id"] for i in unlabeled["images"]]))
    return out


@pytest.mark.slow
def test_sigkill_at_several_points_then_rerun_matches_uninterrupted(tmp_path: Path) -> None:
    config = tmp_path / "exp.yaml"
    config.write_text(CONFIG)
    ref, crashed = tmp_path / "ref", tmp_path / "crashed"
    finish(start_run(config, ref))

    kills = 0
    for trigger in TRIGGERS:
        proc = start_run(config, crashed)
        if kill_when(proc, crashed / trigger):
            kills += 1
        else:
            assert proc.returncode == 0, proc.stderr.read()
    assert kills >= 3
    finish(start_run(config, crashed))

    assert len(splits(ref)) == 3
    assert splits(crashed) == splits(ref)
    for k in range(2):
        sel = [json.loads((wd / f"cycle_{k:03d}" / "selection.json").read_text())["images"]
               for wd in (ref, crashed)]
        assert [s["id"] for s in sel[0]] == [s["id"] for s in sel[1]]
    leftovers = [p for p in crashed.rglob("*") if p.name.startswith(".tmp-")]
    assert leftovers == []
    assert not any(crashed.glob("cycle_*/dump_shards"))
