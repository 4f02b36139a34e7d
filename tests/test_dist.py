"""The distributed layer: exact shards, Slurm variables, and real 2-process gloo runs.

The ``dist`` tests start real processes: ``torchrun --nproc_per_node 2`` training with DDP
(preempted by SIGTERM through torchrun's agent, then resumed), and two ranks joined through
Slurm's variables where one is SIGKILLed and the other must exit at once.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch

from al_det import atomic, checkpoint, dist
from al_det.coco import CategoryMap
from al_det.workdir import Workdir

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("n", [0, 1, 2, 5, 7, 16, 101])
@pytest.mark.parametrize("world", [1, 2, 3, 4, 8])
def test_shard_indices_exact(n: int, world: int) -> None:
    shards = [dist.shard_indices(n, r, world) for r in range(world)]
    assert [i for s in shards for i in s] == list(range(n))  # in order, no gap, no duplicate
    assert max(map(len, shards)) - min(map(len, shards)) <= 1
    assert all(s.step == 1 for s in shards)  # contiguous blocks


def test_shard_indices_rejects_bad_rank() -> None:
    with pytest.raises(ValueError):
        dist.shard_indices(10, 2, 2)


def test_slurm_variables_become_torchrun_ones() -> None:
    env = {"SLURM_PROCID": "5", "SLURM_STEP_NUM_TASKS": "8", "SLURM_LOCALID": "1",
           "SLURM_JOB_NODELIST": "gpu[007-009,012],cpu1", "SLURM_JOB_ID": "123456"}
    got = dist.slurm_env(env)
    assert got == {"RANK": "5", "WORLD_SIZE": "8", "LOCAL_RANK": "1", "MASTER_ADDR": "gpu007",
                   "MASTER_PORT": str(15000 + 123456 % 20000)}
    assert dist.slurm_env({**env, "MASTER_ADDR": "head", "MASTER_PORT": "29500"}) == {
        "RANK": "5", "WORLD_SIZE": "8", "LOCAL_RANK": "1"}
    assert dist.slurm_env({**env, "WORLD_SIZE": "8"}) == {}  # torchrun's variables win
    batch_script = {k: v for k, v in env.items() if k != "SLURM_STEP_NUM_TASKS"}
    assert dist.slurm_env(batch_script) == {}  # not an srun step: one process
    assert dist.first_host("node1,node2") == "node1"
    assert dist.first_host("a-b[3-4]") == "a-b3"


def test_single_process_without_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "SLURM_PROCID"):
        monkeypatch.delenv(var, raising=False)
    info = dist.init_distributed("auto")
    assert (info.rank, info.world_size) == (0, 1) and dist.is_main()
    assert info.device == torch.device("cuda:0" if torch.cuda.is_available() else "cpu")
    assert dist.all_gather_object(3) == [3] and dist.broadcast_object("x") == "x"
    dist.barrier()
    dist.cleanup()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("SLURM_", "RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_"))}
    env.update(OMP_NUM_THREADS="1", PYTHONPATH=str(REPO), **extra)
    return env


TRAIN_SCRIPT = textwrap.dedent("""
    import os, signal, sys
    from pathlib import Path
    from al_det import dist, train
    from al_det.config import DataConfig, ExperimentConfig, ModelConfig, TrainConfig
    from al_det.workdir import Workdir

    wd, pool, images, stop_at = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
    cfg = ExperimentConfig(
        seed=3, device="cpu", data=DataConfig(pool=pool, pool_images=images),
        model=ModelConfig(name="tiny_frcnn", min_size=64, max_size=64),
        train=TrainConfig(epochs=2, batch_size=4, lr=0.01, warmup_iters=1, workers=0,
                          checkpoint_every=100, hflip=0.5))
    info = dist.init_distributed(cfg.device)
    assert info.world_size == 2, info

    def preempt(i):
        if i == stop_at and info.rank == 0:
            os.kill(os.getppid(), signal.SIGTERM)  # Slurm-style: the launcher gets SIGTERM

    try:
        train.run_train(Workdir(Path(wd)), 0, cfg, on_iteration=preempt)
    except train.TrainingInterrupted as exc:
        print(f"rank {info.rank}: {exc}", flush=True)
        sys.exit(exc.exit_code)
    finally:
        dist.cleanup()
""")


def _torchrun(script: Path, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
           "--master_addr", "127.0.0.1", "--master_port", str(_free_port()), str(script), *args]
    return subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=timeout,
                          cwd=REPO)


@pytest.mark.dist
def test_torchrun_ddp_preempted_then_resumed(tmp_path: Path, demo_data: dict) -> None:
    from al_det.config import DataConfig, ExperimentConfig, ModelConfig

    pool = json.loads(Path(demo_data["pool"]).read_text())
    images = pool["images"][:4]  # global batch 4 = 2 per rank: 1 iteration per epoch, 2 in all
    ids = {im["id"] for im in images}
    wd = Workdir(tmp_path / "wd")
    atomic.write_json(wd.categories, CategoryMap(pool["categories"]).to_json())
    atomic.write_json(wd.cycle(0).labeled, dict(pool, images=images, annotations=[
        a for a in pool["annotations"] if a["image_id"] in ids]))
    script = tmp_path / "train_script.py"
    script.write_text(TRAIN_SCRIPT)
    args = (str(wd.root), str(demo_data["pool"]), str(demo_data["images"]))

    cut = _torchrun(script, *args, "1")
    assert cut.returncode != 0, cut.stdout + cut.stderr
    cycle = wd.cycle(0)
    assert cycle.last_ckpt.exists() and (cycle.train_dir / "interrupted").exists(), cut.stderr
    ckpt = torch.load(cycle.last_ckpt, weights_only=True)
    assert ckpt["world_size"] == 2 and len(ckpt["rng"]) == 2 and ckpt["iteration"] == 1
    assert not cycle.model.exists()

    done = _torchrun(script, *args, "0")
    assert done.returncode == 0, done.stdout + done.stderr
    assert not cycle.last_ckpt.exists()
    log = [json.loads(line) for line in cycle.train_log.read_text().splitlines()]
    assert [ln["iter"] for ln in log if "loss" in ln] == [2]  # rank 0 alone logs
    cfg = ExperimentConfig(data=DataConfig(pool=str(demo_data["pool"])),
                           model=ModelConfig(name="tiny_frcnn", min_size=64, max_size=64))
    model = checkpoint.load_trained(cycle.model, cfg, len(pool["categories"]), "cpu")
    assert not any(k.startswith("module.") for k in model.state_dict())  # unwrapped from DDP


PEER_SCRIPT = textwrap.dedent("""
    import sys, time
    import torch
    from al_det import dist
    info = dist.init_distributed("cpu")
    dist.barrier()
    print("ready", info.rank, info.world_size, flush=True)
    if info.rank == 1:
        time.sleep(600)  # never joins the all_reduce below; the test kills it
    try:
        torch.distributed.all_reduce(torch.zeros(1))
    except Exception as exc:
        print("raised", type(exc).__name__, flush=True)
        sys.exit(3)
""")


@pytest.mark.dist
def test_dead_peer_makes_the_other_rank_exit_promptly(tmp_path: Path) -> None:
    """Two ranks joined through srun's variables (no torchrun); SIGKILL one mid-collective."""
    script = tmp_path / "peer.py"
    script.write_text(PEER_SCRIPT)
    common = {"SLURM_STEP_NUM_TASKS": "2", "SLURM_JOB_NODELIST": "localhost",
              "MASTER_PORT": str(_free_port()), "AL_DET_DIST_TIMEOUT": "600"}
    procs = [subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True,
                              env=_env(SLURM_PROCID=str(r), SLURM_LOCALID=str(r), **common))
             for r in range(2)]
    try:
        for p in procs:
            assert p.stdout.readline().split()[:3] == ["ready", str(procs.index(p)), "2"]
        time.sleep(1.0)  # rank 0 is now blocked in the all_reduce
        procs[1].send_signal(signal.SIGKILL)
        start = time.monotonic()
        rc = procs[0].wait(timeout=60)
        waited = time.monotonic() - start
    finally:
        for p in procs:
            p.kill()
            p.wait()
    assert rc == 3 and waited < 30, (rc, waited)
