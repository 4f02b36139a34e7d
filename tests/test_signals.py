"""SIGTERM (Slurm preemption) and a second driver, on real ``al-det`` processes.

Each process is paused at a named point (``AL_DET_TEST_PAUSE_AT``, see ``al_det.testhooks``)
and signalled once it has said so, so the signal lands exactly there, on a busy machine too.
``train`` and ``run`` catch SIGTERM, save a checkpoint and exit 143; ``infer`` and
``evaluate`` die of the signal (a shell reports that as 143 too) keeping what they finished:
inference shards, which the rerun reuses, with another number of processes as well.
"""

from __future__ import annotations

import json
import re
import shutil
import signal
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from procs import PAUSE_ENV, Proc, al_det_cmd, al_det_lines, child_env

from al_det.cli import main
from al_det.dump import read_dump

CONFIG = """\
seed: 2
cycles: 2
initial: 8
data:
  synthetic: {n_pool: 24, n_test: 6, image_size: 100, seed: 3}
model: {name: tiny_frcnn, min_size: 100, max_size: 100}
train: {epochs: 2, batch_size: 4, warmup_iters: 1, workers: 0, checkpoint_every: 100}
infer: {batch_size: 2, workers: 0, score_thresh: 0.0, chunk_size: 4, feature_dtype: float32}
acquire: {strategy: entropy, budget: 4}
"""
TOTAL_ITERS = 4  # 2 epochs of ceil(8 / 4) iterations


def run_al_det(*args: str, nproc: int = 1, pause_at: str | None = None) -> Proc:
    return Proc(al_det_cmd(*args, nproc=nproc),
                child_env(**({PAUSE_ENV: pause_at} if pause_at else {})))


def ok(*args: str, nproc: int = 1) -> str:
    rc, out, err = run_al_det(*args, nproc=nproc).finish(timeout=600)
    assert rc == 0, err[-3000:]
    return out


@pytest.fixture(scope="module")
def fresh(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An initialised work dir (cycle 0's splits), untrained."""
    root = tmp_path_factory.mktemp("signals")
    (root / "exp.yaml").write_text(CONFIG)
    result = CliRunner().invoke(main, ["init", "-c", str(root / "exp.yaml"), "-w",
                                       str(root / "wd")])
    assert result.exit_code == 0, result.output
    return root / "wd"


@pytest.fixture(scope="module")
def trained(fresh: Path) -> Path:
    """A copy of ``fresh`` whose cycle 0 is trained."""
    wd = fresh.parent / "trained"
    shutil.copytree(fresh, wd)
    ok("train", "-w", str(wd))
    return wd


def copy_of(wd: Path, tmp_path: Path) -> Path:
    shutil.copytree(wd, tmp_path / "wd")
    return tmp_path / "wd"


def log_records(wd: Path) -> list[dict]:
    path = wd / "cycle_000" / "train" / "log.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()]


def check_interrupted_at(wd: Path, iteration: int) -> None:
    c0 = wd / "cycle_000"
    ckpt = torch.load(c0 / "train" / "last.pth", weights_only=True)
    assert ckpt["iteration"] == iteration and not (c0 / "model.pth").exists()
    assert json.loads((c0 / "train" / "interrupted").read_text())["iteration"] == iteration


@pytest.mark.slow
def test_train_sigterm_exits_143_keeps_checkpoint_refuses_second_driver_and_resumes(
        fresh: Path, tmp_path: Path) -> None:
    wd = copy_of(fresh, tmp_path)
    first = run_al_det("train", "-w", str(wd), pause_at="train:0:1")
    try:
        first.wait_pause("train:0:1")
        # a second real process on the same work dir, while the first holds it
        rc, _, err = run_al_det("evaluate", "-w", str(wd)).finish()
        assert rc == 2 and al_det_lines(err) == [
            f"al-det: error: {wd}: another al-det process (pid {first.pid}) is using this work "
            "dir; wait for it to finish or stop it"], err
        first.signal(signal.SIGTERM)
        rc, _, err = first.finish()
    finally:
        first.kill()
    assert rc == 143 and al_det_lines(err) == [
        f"al-det: error: {wd / 'cycle_000/train/last.pth'}: training of cycle 0 stopped by "
        f"SIGTERM at iteration 1 of {TOTAL_ITERS}; checkpoint saved, rerun the same command to "
        "resume"], err
    check_interrupted_at(wd, 1)

    ok("train", "-w", str(wd))
    assert (wd / "cycle_000" / "model.pth").exists()
    assert not (wd / "cycle_000" / "train" / "last.pth").exists()
    assert {"event": "resumed", "iter": 1} in log_records(wd)


@pytest.mark.slow
def test_run_sigterm_exits_143_and_the_rerun_resumes(tmp_path: Path) -> None:
    wd, config = tmp_path / "wd", tmp_path / "one_cycle.yaml"
    config.write_text(CONFIG.replace("cycles: 2", "cycles: 1"))  # short: init, train, evaluate
    args = ("run", "-c", str(config), "-w", str(wd))
    proc = run_al_det(*args, pause_at="train:0:3")
    try:
        proc.wait_pause("train:0:3")
        proc.signal(signal.SIGTERM)
        rc, _, err = proc.finish()
    finally:
        proc.kill()
    assert rc == 143 and len(al_det_lines(err)) == 1 and "at iteration 3 of" in err, err
    check_interrupted_at(wd, 3)
    out = ok(*args)
    assert {"event": "resumed", "iter": 3} in log_records(wd)
    assert out.splitlines()[-2].split()[:4] == ["0", "8", "done", "done"]


@pytest.mark.slow
@pytest.mark.dist
def test_torchrun_train_sigterm_stops_every_rank_and_resumes(fresh: Path,
                                                             tmp_path: Path) -> None:
    """Slurm's path: SIGTERM reaches torchrun's agent, which forwards it to both ranks."""
    wd = copy_of(fresh, tmp_path)
    agent = run_al_det("train", "-w", str(wd), nproc=2, pause_at="train:0:2")
    try:
        agent.wait_pause("train:0:2")  # rank 0 paused; rank 1 waits in the next stop check
        agent.signal(signal.SIGTERM)
        rc, _, err = agent.finish()
    finally:
        agent.kill()
    # torchrun exits 1 after forwarding SIGTERM (the sbatch scripts requeue on that); each
    # rank stopped at the same iteration and said so in one line
    assert rc == 1, err[-3000:]
    lines = al_det_lines(err)
    assert len(lines) == 2 and all(f"at iteration 2 of {TOTAL_ITERS}" in ln for ln in lines), err
    check_interrupted_at(wd, 2)
    assert torch.load(wd / "cycle_000/train/last.pth", weights_only=True)["world_size"] == 2
    ok("train", "-w", str(wd), nproc=2)
    assert (wd / "cycle_000" / "model.pth").exists()
    assert {"event": "resumed", "iter": 2} in log_records(wd)


def chunk_meta(wd: Path, c: int) -> Path:
    return wd / "cycle_000" / "dump_shards" / f"chunk_{c:05d}" / "meta.json"


@pytest.mark.slow
@pytest.mark.dist
def test_infer_killed_keeps_shards_reused_with_another_world_size(trained: Path,
                                                                   tmp_path: Path) -> None:
    """16 unlabeled images in 4 chunks: SIGTERM after chunk 1 (1 process), SIGTERM again after
    chunk 3 (2 processes: rank 1 does chunks 2-3, rank 0 reuses 0-1), finish with 1 process:
    the dump equals an uninterrupted one."""
    ref = tmp_path / "ref"
    shutil.copytree(trained, ref)
    ok("infer", "-w", str(ref))
    wd = copy_of(trained, tmp_path)

    proc = run_al_det("infer", "-w", str(wd), pause_at="infer:0:1")
    try:
        proc.wait_pause("infer:0:1")
        proc.signal(signal.SIGTERM)
        rc = proc.finish()[0]
    finally:
        proc.kill()
    assert rc == -signal.SIGTERM  # no handler: the signal's default, 143 to a shell
    assert [chunk_meta(wd, c).exists() for c in range(4)] == [True, True, False, False]
    assert not (wd / "cycle_000" / "dump").exists()
    kept = [chunk_meta(wd, c).stat().st_mtime_ns for c in range(2)]

    agent = run_al_det("infer", "-w", str(wd), nproc=2, pause_at="infer:0:3")
    try:
        agent.wait_pause("infer:0:3")
        assert [chunk_meta(wd, c).stat().st_mtime_ns for c in range(2)] == kept  # reused
        assert chunk_meta(wd, 2).exists()
        agent.signal(signal.SIGTERM)  # preempted again: the agent stops both ranks
        assert agent.finish()[0] == 1
    finally:
        agent.kill()
    assert not (wd / "cycle_000" / "dump").exists()

    ok("infer", "-w", str(wd))
    a, b = read_dump(ref / "cycle_000" / "dump"), read_dump(wd / "cycle_000" / "dump")
    assert a.image_ids == b.image_ids and len(a.image_ids) == 16
    assert np.array_equal(a.offsets, b.offsets) and np.array_equal(a.labels, b.labels)
    np.testing.assert_allclose(a.scores, b.scores, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(a.features, b.features, rtol=1e-4, atol=1e-5)
    assert not (wd / "cycle_000" / "dump_shards").exists()


@pytest.mark.slow
def test_evaluate_sigterm_writes_nothing_and_the_rerun_evaluates(trained: Path,
                                                                 tmp_path: Path) -> None:
    wd = copy_of(trained, tmp_path)
    before = sorted(p.relative_to(wd) for p in wd.rglob("*"))
    proc = run_al_det("evaluate", "-w", str(wd), pause_at="evaluate:0")
    try:
        proc.wait_pause("evaluate:0")
        proc.signal(signal.SIGTERM)
        rc = proc.finish()[0]
    finally:
        proc.kill()
    assert rc == -signal.SIGTERM
    assert sorted(p.relative_to(wd) for p in wd.rglob("*")) == before  # nothing half-written
    ok("evaluate", "-w", str(wd))
    metrics = json.loads((wd / "cycle_000" / "metrics.json").read_text())
    assert metrics["cycle"] == 0 and metrics["labeled_images"] == 8


@pytest.mark.slow
@pytest.mark.dist
def test_one_rank_raising_makes_every_rank_exit_promptly(trained: Path, tmp_path: Path) -> None:
    """Rank 1's shard of the test set holds an unreadable image: rank 1 raises al-det's error
    (not killed); rank 0 must not wait in the gather for the 300 s collective timeout."""
    from al_det.config import load_config

    wd = copy_of(trained, tmp_path)
    cfg = load_config(wd / "config.yaml")
    test = json.loads(Path(cfg.data.test).read_text())
    bad = test["images"][-1]  # the last image is in rank 1's block
    shutil.copytree(cfg.data.test_images, tmp_path / "test_images")
    (tmp_path / "test_images" / bad["file_name"]).write_bytes(b"not an image")
    config = (wd / "config.yaml").read_text().replace(str(cfg.data.test_images),
                                                      str(tmp_path / "test_images"))
    (wd / "config.yaml").write_text(config)

    agent = run_al_det("evaluate", "-w", str(wd), "--force", nproc=2)
    try:
        rc, _, err = agent.finish(timeout=120)  # far below the collective timeout
    finally:
        agent.kill()
    assert rc != 0
    lines = al_det_lines(err)
    named = [ln for ln in lines if f"{bad['file_name']} (image id {bad['id']})" in ln]
    assert len(named) == 1 and "unreadable" in named[0], err[-3000:]
    # rank 0 either left with its one line about rank 1 or was stopped by the agent
    assert all(ln in named or "rank 0 of 2: lost rank 1" in ln for ln in lines), lines
    # torchrun's agent prints its own traceback; no rank prints one from al-det's code
    assert not re.search(r'File "[^"]*/al_det/', err), err[-3000:]
    assert not (wd / "cycle_000" / "metrics.json").exists()
