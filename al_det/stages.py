"""The stages of a cycle, name -> function, and the runner of one torch stage.

Each ``run_<stage>(wd, k, cfg)`` writes its own artifacts (see :mod:`al_det.workdir`); this
module only looks them up and, for ``al-det train/evaluate/infer``, opens the work dir, sets up
the process group from the launcher's environment, holds the work dir's lock on rank 0 (so a
second job on the same work dir is refused) and tears the group down on the way out, so that
one failing rank does not leave the others hanging.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from contextlib import nullcontext
from pathlib import Path

from al_det.atomic import clean_tmp
from al_det.errors import WorkdirError
from al_det.timings import run_timed
from al_det.workdir import RunLock, adopt_changes, find_changes, open_workdir

# module and function of each stage, imported on use: acquire never imports torch
STAGE_FUNCTIONS = {
    "train": ("al_det.train", "run_train"),
    "evaluate": ("al_det.evaluate", "run_evaluate"),
    "infer": ("al_det.infer", "run_infer"),
    "acquire": ("al_det.acquire", "run_acquire"),
}


def stage_function(stage: str) -> Callable:
    """The ``run_<stage>(wd, k, cfg)`` function of ``stage``."""
    if stage not in STAGE_FUNCTIONS:
        raise WorkdirError(f"unknown stage {stage!r}; stages: {', '.join(STAGE_FUNCTIONS)}")
    module, name = STAGE_FUNCTIONS[stage]
    return getattr(importlib.import_module(module), name)


def run_stage(stage: str, workdir: Path, cycle: int | None, force: bool = False) -> None:
    """Run the torch ``stage`` for ``cycle`` (default: the latest) of ``workdir``."""
    from al_det import dist

    run = stage_function(stage)
    wd, cfg = open_workdir(workdir, force, record=False)  # rank 0 records, under the lock
    k = wd.resolve_cycle(cycle).index
    dist.init_distributed(cfg.device)
    try:
        with RunLock(wd) if dist.is_main() else nullcontext():
            if dist.is_main():
                adopt_changes(wd, cfg, find_changes(wd, cfg))  # what open_workdir let pass
                clean_tmp(wd.cycle(k).root)
            dist.barrier()
            run_timed(wd.root, k, stage, lambda: run(wd, k, cfg))
            # leave together: a rank that tore its group down while rank 0 was still writing
            # and scoring (evaluate) sometimes died of SIGABRT under load
            dist.barrier()
    finally:
        dist.cleanup()

