"""Fault injection: SIGKILL `al-det run` at several points, rerun, and end where an
uninterrupted run ends: the same splits in every cycle and no temporary file left behind."""

from __future__ import annotations

import json
import signal
from pathlib import Path

import pytest
from procs import PAUSE_ENV, Proc, al_det_cmd, child_env

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

# (testhooks point, what must exist when the process is paused there): mid-training after a
# checkpoint, mid-inference after a chunk, after the selection but before the next splits,
# the next cycle's training and inference
KILL_POINTS = (
    ("train:0:2", "cycle_000/train/last.pth"),
    ("infer:0:1", "cycle_000/dump_shards/chunk_00001/meta.json"),
    ("acquire:0", "cycle_000/selection.json"),
    ("train:1:2", "cycle_001/train/last.pth"),
    ("infer:1:0", "cycle_001/dump_shards/chunk_00000/meta.json"),
)


def start_run(config: Path, wd: Path, pause_at: str | None = None) -> Proc:
    extra = {PAUSE_ENV: pause_at} if pause_at else {}
    return Proc(al_det_cmd("run", "-c", str(config), "-w", str(wd)), child_env(**extra))


def finish(proc: Proc) -> None:
    rc, _, err = proc.finish(timeout=600)
    assert rc == 0, err[-3000:]


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

    for point, artifact in KILL_POINTS:
        proc = start_run(config, crashed, pause_at=point)
        try:
            proc.wait_pause(point)  # paused right there: the kill happens at that point, always
            assert (crashed / artifact).exists(), (point, artifact)
            if point.startswith("acquire"):
                assert not (crashed / "cycle_001" / "unlabeled.json").exists()
            proc.signal(signal.SIGKILL)
            assert proc.finish()[0] == -signal.SIGKILL
        finally:
            proc.kill()
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
