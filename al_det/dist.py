"""The distributed layer: process-group init from the environment, rank helpers, exact sharding.

Reads environment variables only, writes nothing. The same code runs as one plain process,
under ``torchrun`` (``RANK``/``WORLD_SIZE``/``LOCAL_RANK``/``MASTER_ADDR``/``MASTER_PORT``) and
as tasks started by Slurm's ``srun`` without torchrun (``SLURM_PROCID``/``SLURM_STEP_NUM_TASKS``/
``SLURM_LOCALID``, the master address taken from the first node of the step's node list).
Backend: nccl when the device is CUDA, gloo otherwise.

One failing rank must make all ranks exit promptly, not after the 30-minute default collective
timeout: collectives time out after ``AL_DET_DIST_TIMEOUT`` seconds (default 300), NCCL's async
error handling is on, and gloo raises as soon as a peer's connection closes. Under torchrun the
agent also stops the surviving workers when one exits non-zero.

When a collective of this module fails (a peer died or timed out), the survivor prints one line
naming the rank it lost and exits at once with :data:`EXIT_PEER_LOST`, through ``os._exit``:
a normal interpreter exit would run the destructors of the broken process group (gloo's
pairs, the TCPStore and c10d's threads), which can abort the process with SIGABRT
("terminate called without an active exception") or hang, instead of giving the launcher
and Slurm's requeue logic a clean status.
"""

from __future__ import annotations

import datetime
import os
import re
import sys
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, NoReturn, TypeVar

import torch
import torch.distributed as dist

from al_det.errors import ConfigError

DEFAULT_TIMEOUT_S = 300
EXIT_PEER_LOST = 3  # a collective failed: another rank died or cannot be reached
T = TypeVar("T")
_info: DistInfo | None = None


@dataclass(frozen=True)
class DistInfo:
    """This process's place in the job and the device it computes on."""

    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def first_host(nodelist: str) -> str:
    """The first host of a Slurm node list: ``gpu[07-09,12],cpu1`` -> ``gpu07``."""
    first = re.match(r"[^,\[]*(\[[^\]]*\])?", nodelist.strip()).group(0)
    prefix, _, ranges = first.partition("[")
    if not ranges:
        return prefix
    # keep the zero padding of the first number of the first range
    return prefix + ranges.rstrip("]").split(",")[0].split("-")[0]


def slurm_env(environ: Mapping[str, str]) -> dict[str, str]:
    """torchrun-style variables derived from an ``srun`` step's Slurm variables, or ``{}``.

    Only a task of an ``srun`` step counts (``SLURM_STEP_NUM_TASKS`` is set by srun, not by the
    batch script itself), so a plain ``python -m al_det`` in an sbatch script stays one process.
    Variables already set in ``environ`` win.
    """
    if "WORLD_SIZE" in environ or "SLURM_PROCID" not in environ:
        return {}
    world = environ.get("SLURM_STEP_NUM_TASKS")
    if world is None or int(world) <= 1:
        return {}
    out = {
        "RANK": environ["SLURM_PROCID"],
        "WORLD_SIZE": world,
        "LOCAL_RANK": environ.get("SLURM_LOCALID", "0"),
    }
    if "MASTER_ADDR" not in environ:
        nodes = environ.get("SLURM_STEP_NODELIST") or environ.get("SLURM_JOB_NODELIST")
        if not nodes:
            raise ConfigError("srun step without SLURM_JOB_NODELIST: set MASTER_ADDR")
        out["MASTER_ADDR"] = first_host(nodes)
    if "MASTER_PORT" not in environ:
        # every task of the job derives the same port; jobs sharing a node rarely collide
        job = int(environ.get("SLURM_JOB_ID", "0"))
        out["MASTER_PORT"] = str(15000 + job % 20000)
    return out


def pick_device(pref: str, local_rank: int, world_size: int) -> torch.device:
    """``auto`` -> ``cuda:LOCAL_RANK`` if CUDA is available, else ``cpu``; explicit ones checked."""
    if pref == "cpu":
        return torch.device("cpu")
    if pref == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", local_rank % torch.cuda.device_count())
        return torch.device("cpu")
    if not pref.startswith("cuda"):
        raise ConfigError(f"device={pref!r}: use auto, cpu, cuda or cuda:N")
    if not torch.cuda.is_available():
        raise ConfigError(f"device={pref!r} but CUDA is not available here: use device=cpu")
    if pref == "cuda" or world_size > 1:
        # one GPU per process: an explicit index would put every rank on the same GPU
        return torch.device("cuda", local_rank % torch.cuda.device_count())
    return torch.device(pref)


def timeout() -> datetime.timedelta:
    """The collective timeout: ``AL_DET_DIST_TIMEOUT`` seconds, default 300."""
    raw = os.environ.get("AL_DET_DIST_TIMEOUT", str(DEFAULT_TIMEOUT_S))
    try:
        return datetime.timedelta(seconds=float(raw))
    except ValueError:
        raise ConfigError(f"AL_DET_DIST_TIMEOUT={raw!r}: give a number of seconds") from None


def init_distributed(device_pref: str = "auto") -> DistInfo:
    """Join the process group described by the environment (idempotent); one process if none."""
    global _info
    os.environ.update(slurm_env(os.environ))
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = pick_device(device_pref, local_rank, world)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if world > 1 and not dist.is_initialized():
        os.environ.setdefault("TORCH_NCCL_ASYNC_ERROR_HANDLING", "1")
        backend = "nccl" if device.type == "cuda" else "gloo"
        # device_id binds NCCL to this rank's GPU up front (barrier() then knows the device)
        extra = {"device_id": device} if device.type == "cuda" else {}
        dist.init_process_group(backend, init_method="env://", rank=rank, world_size=world,
                                timeout=timeout(), **extra)
    _info = DistInfo(rank, world, local_rank, device)
    return _info


def info() -> DistInfo:
    """The last :func:`init_distributed` result, or a single CPU process if never called."""
    return _info or DistInfo(0, 1, 0, torch.device("cpu"))


def device() -> torch.device:
    """This process's device (set by :func:`init_distributed`; cpu if it was never called)."""
    return info().device


def progress(iterable: Iterable[T], **kwargs: Any) -> Iterable[T]:
    """``iterable`` wrapped in a tqdm bar on rank 0; unchanged on the other ranks."""
    if not is_main():
        return iterable
    from tqdm import tqdm

    # no terminal (Slurm log file): update rarely instead of flooding the log
    kwargs.setdefault("mininterval", 0.1 if sys.stderr.isatty() else 30.0)
    kwargs.setdefault("dynamic_ncols", True)
    return tqdm(iterable, **kwargs)


def rank() -> int:
    return dist.get_rank() if dist.is_initialized() else 0


def world_size() -> int:
    return dist.get_world_size() if dist.is_initialized() else 1


def is_main() -> bool:
    return rank() == 0


def peer_lost(op: str, exc: BaseException) -> NoReturn:
    """Report a failed collective in one line and leave at once with :data:`EXIT_PEER_LOST`.

    ``os._exit`` on purpose: ``sys.exit`` would tear the broken process group down with the
    interpreter, and its C++ destructors can abort (SIGABRT) or block. Nothing is lost that a
    rerun needs: every artifact is written atomically and temp files are cleaned on restart.
    """
    me = info()
    others = [r for r in range(me.world_size) if r != me.rank]
    lost = f"rank {others[0]}" if len(others) == 1 else f"one of ranks {others}"
    text = str(exc).strip()
    first = text.splitlines()[0] if text else type(exc).__name__
    # gloo's text starts with a source location and ends with advice; keep the reason
    reason = re.sub(r"^\[[^\]]*\]\s*", "", first).split(". This is typically")[0]
    sys.stdout.flush()
    print(f"al-det: error: rank {me.rank} of {me.world_size}: lost {lost} during {op} "
          f"({reason}); that process died or hung: see its log, then rerun the same command "
          "(it resumes)", file=sys.stderr, flush=True)
    os._exit(EXIT_PEER_LOST)


def _collective(op: str, call: Callable[[], T]) -> T:
    """``call()``, a collective; its failure (RuntimeError from gloo/nccl) ends the process."""
    try:
        return call()
    except RuntimeError as exc:
        peer_lost(op, exc)


def barrier() -> None:
    if dist.is_initialized():
        _collective("barrier", dist.barrier)


def broadcast_object(obj: Any, src: int = 0) -> Any:
    """``obj`` from rank ``src`` on every rank (picklable objects)."""
    if not dist.is_initialized():
        return obj
    box = [obj]
    _collective("broadcast_object", lambda: dist.broadcast_object_list(box, src=src))
    return box[0]


def all_gather_object(obj: Any) -> list[Any]:
    """Every rank's ``obj``, in rank order."""
    if not dist.is_initialized():
        return [obj]
    out: list[Any] = [None] * dist.get_world_size()
    _collective("all_gather_object", lambda: dist.all_gather_object(out, obj))
    return out


def all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    """Sum of ``t`` over ranks (a new tensor; ``t`` itself unchanged)."""
    t = t.detach().clone()
    if dist.is_initialized():
        _collective("all_reduce", lambda: dist.all_reduce(t))
    return t


def shard_indices(n: int, rank: int, world: int) -> range:
    """Rank ``rank``'s contiguous block of ``range(n)``: no padding, no duplicates.

    Block sizes differ by at most one (the first ``n % world`` ranks get one more); the blocks
    of ranks 0..world-1 concatenated are exactly ``range(n)``.
    """
    if world < 1 or not 0 <= rank < world or n < 0:
        raise ValueError(f"shard_indices: need n >= 0 and 0 <= rank < world, got {n}, {rank}, "
                         f"{world}")
    base, extra = divmod(n, world)
    start = rank * base + min(rank, extra)
    return range(start, start + base + (rank < extra))


def cleanup() -> None:
    """Leave the process group (safe to call when none was joined)."""
    global _info
    if dist.is_initialized():
        dist.destroy_process_group()
    _info = None
