"""The distributed layer: exact shards, Slurm variables, and real 2-process gloo runs.

The ``dist`` tests start real processes: ``torchrun --nproc_per_node 2`` training with DDP
(preempted by SIGTERM through torchrun's agent, then resumed), and two ranks joined through
Slurm's variables where one is SIGKILLed and the other must exit at once.
"""

from __future__ import annotations

import json
import os
import queue
import signal
import socket
import subprocess
import sys
import textwrap
import threading
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
    # the documented sizes: the first n % world ranks get one more (contiguity is the line above)
    base, extra = divmod(n, world)
    assert [len(s) for s in shards] == [base + (r < extra) for r in range(world)]


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
    # the repo first, then conftest's PYTHONPATH (the children's no-network guard)
    env.update(OMP_NUM_THREADS="1", PYTHONPATH=os.pathsep.join([str(REPO),
                                                                os.environ["PYTHONPATH"]]),
               **extra)
    return env


TRAIN_SCRIPT = textwrap.dedent("""
    import os, signal, sys, threading, time
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
        if i != stop_at or info.rank != 0:
            return
        # wrap the training's SIGTERM handler to learn when the agent's forward arrived
        got, handler = threading.Event(), signal.getsignal(signal.SIGTERM)
        signal.signal(signal.SIGTERM, lambda s, f: (got.set(), handler(s, f)))
        os.kill(os.getppid(), signal.SIGTERM)  # Slurm-style: the launcher gets SIGTERM
        while not got.is_set():  # so the next stop check surely sees it, even under load
            time.sleep(0.01)

    try:
        train.run_train(Workdir(Path(wd)), 0, cfg, on_iteration=preempt)
    except train.TrainingInterrupted as exc:
        print(f"rank {info.rank}: {exc}", flush=True)
        sys.exit(exc.exit_code)
    finally:
        dist.cleanup()
""")


def _torchrun(script: Path, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    # --standalone: the agent binds its own free port (no pick-then-bind race)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node",
           "2", str(script), *args]
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
    # torchrun exits 1 after forwarding a SIGTERM (the sbatch scripts requeue on that); each
    # worker stopped at the same iteration, saying so in its one line
    assert cut.returncode == 1, cut.stdout + cut.stderr
    for r in range(2):
        assert f"rank {r}: {wd.cycle(0).last_ckpt}: training of cycle 0 stopped by SIGTERM at " \
               "iteration 1 of 2" in cut.stdout, cut.stdout + cut.stderr
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
    import os, threading
    import torch
    from al_det import dist
    info = dist.init_distributed("cpu")
    dist.barrier()
    print("ready", info.rank, info.world_size, flush=True)
    if info.rank == int(os.environ["DEAD_RANK"]):
        threading.Event().wait()  # never joins the all_reduce below; the test kills it
    dist.all_reduce_sum(torch.zeros(1))  # al-det's collective: must end the process
    print("all_reduce returned", flush=True)
""")


@pytest.mark.dist
@pytest.mark.parametrize("dead", [1, 0])  # rank 0 also hosts the TCPStore
def test_dead_peer_makes_the_other_rank_exit_promptly(tmp_path: Path, dead: int) -> None:
    """Two ranks joined through srun's variables (no torchrun); SIGKILL one mid-collective:
    the survivor exits with al-det's status 3 and one line naming the dead rank, never by a
    signal (SIGABRT from tearing a broken process group down) and never after a timeout."""
    script = tmp_path / "peer.py"
    script.write_text(PEER_SCRIPT)
    procs = _start_ranks(script, {"DEAD_RANK": str(dead), "AL_DET_DIST_TIMEOUT": "600"})
    survivor = procs[1 - dead]
    try:
        # both printed "ready": the survivor is entering (or in) the all_reduce, which cannot
        # complete without the dead rank; killed before or during it, the survivor must exit
        procs[dead].proc.send_signal(signal.SIGKILL)
        start = time.monotonic()
        rc = survivor.proc.wait(timeout=60)
        waited = time.monotonic() - start
    finally:
        for r in procs:
            r.close()
    out, err = survivor.rest()
    lines = [ln for ln in err if ln.startswith("al-det:")]
    assert rc == dist.EXIT_PEER_LOST and waited < 30, (rc, waited, err)
    assert len(lines) == 1 and f"rank {1 - dead} of 2: lost rank {dead} during all_reduce" in (
        lines[0]), err
    assert "all_reduce returned" not in out


class _Rank:
    """A started rank whose stdout and stderr lines are read by threads (readline with a
    timeout: a hung rank fails the test instead of hanging it)."""

    def __init__(self, cmd: list[str], env: dict[str, str]) -> None:
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                     text=True, env=env)
        self.out: queue.Queue[str | None] = queue.Queue()
        self.err: list[str] = []
        self._threads = [threading.Thread(target=self._pump, args=(self.proc.stdout, self.out.put),
                                          daemon=True),
                         threading.Thread(target=self._pump, args=(self.proc.stderr,
                                                                   self.err.append), daemon=True)]
        for t in self._threads:
            t.start()

    @staticmethod
    def _pump(pipe, put) -> None:  # noqa: ANN001 - a text pipe and a list/queue method
        for line in pipe:
            put(line.rstrip("\n"))
        put(None)

    def readline(self, timeout: float) -> str | None:
        """The next stdout line; None at EOF; AssertionError after ``timeout`` seconds."""
        try:
            return self.out.get(timeout=timeout)
        except queue.Empty:
            raise AssertionError(f"no output in {timeout} s; stderr: {self.err}") from None

    def rest(self) -> tuple[str, list[str]]:
        """Everything the process printed after the last :meth:`readline` (it has exited)."""
        for t in self._threads:
            t.join(timeout=30)
        lines = []
        while not self.out.empty():
            line = self.out.get()
            if line is not None:
                lines.append(line)
        return "\n".join(lines), [ln for ln in self.err if ln is not None]

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()


def _start_ranks(script: Path, extra: dict[str, str], tries: int = 3) -> list[_Rank]:
    """Rank 0 and 1 of ``script`` joined through srun's variables, both past "ready".

    The port is free when picked but may be taken before rank 0's TCPStore binds it (another
    test, another user): then rank 0 fails with "address already in use" and we pick again.
    """
    for _ in range(tries):
        common = {"SLURM_STEP_NUM_TASKS": "2", "SLURM_JOB_NODELIST": "localhost",
                  "MASTER_PORT": str(_free_port()), **extra}
        ranks = [_Rank([sys.executable, str(script)],
                       _env(SLURM_PROCID=str(r), SLURM_LOCALID=str(r), **common))
                 for r in range(2)]
        lines = [ranks[0].readline(timeout=120), ranks[1].readline(timeout=120)]
        if lines == [f"ready {r} 2" for r in range(2)]:
            return ranks
        for r in ranks:
            r.close()
        errors = " ".join(ranks[0].rest()[1])
        if "address already in use" not in errors.lower() and "EADDRINUSE" not in errors:
            raise AssertionError(f"ranks did not start: {lines}; rank 0 stderr: {errors}")
    raise AssertionError(f"no free port in {tries} tries")
