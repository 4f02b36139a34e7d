"""Runs one torch stage (train, evaluate, infer) of a work dir, alone or under torchrun.

Reads the frozen config through :func:`al_det.init.open_workdir`; the stage modules write
their own artifacts. Sets up the process group from the launcher's environment, holds the
work dir's lock on rank 0 (so a second job on the same work dir is refused), and tears the
group down on the way out so one failing rank does not leave the others hanging.
"""

from __future__ import annotations

import logging
from pathlib import Path

from al_det.atomic import clean_tmp
from al_det.init import open_workdir
from al_det.workdir import RunLock

log = logging.getLogger(__name__)


def run_stage(stage: str, workdir: Path, cycle: int | None, force: bool = False) -> None:
    """Run ``stage`` for ``cycle`` (default: the latest) of ``workdir``."""
    from contextlib import nullcontext

    from al_det import dist

    setup_logging()
    wd, cfg = open_workdir(workdir, force)
    k = wd.resolve_cycle(cycle).index
    dist.init_distributed(cfg.device)
    try:
        with RunLock(wd) if dist.is_main() else nullcontext():
            if dist.is_main():
                clean_tmp(wd.cycle(k).root)
            dist.barrier()
            stage_function(stage)(wd, k, cfg)
    finally:
        dist.cleanup()


def stage_function(stage: str):  # noqa: ANN201 - returns a run_<stage> function
    if stage == "train":
        from al_det.train import run_train
        return run_train
    if stage == "evaluate":
        from al_det.evaluate import run_evaluate
        return run_evaluate
    from al_det.infer import run_infer
    return run_infer


def setup_logging() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s al-det %(levelname)s %(message)s",
                        datefmt="%H:%M:%S")
