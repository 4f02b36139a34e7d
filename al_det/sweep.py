"""``al-det sweep``: one ordinary work dir per (arm, seed), cycle 0 computed once per seed.

Layout under ROOT::

    ROOT/sweep.json              the plan (al_det/sweep_plan.py)
    ROOT/_cycle0/seed_N/         per seed: a work dir that only trains, evaluates and infers
                                 cycle 0 (its config is the sweep's config with seed N)
    ROOT/ARM/seed_N/             an ordinary work dir (al-det run/status/report/... work on it)

Cycle 0 does not depend on the acquisition strategy: when an arm's resolved config differs from
its seed's base config only in ``acquire.*`` keys, and its strategy reads what the base's dump
holds (labeled images as centres, ``probs.npy``), its work dir is made from the base:
``categories.json``, ``versions.json``, cycle 0's splits, ``model.pth``, ``train/``,
``detections.json``, ``metrics.json`` and ``dump/`` are hard-linked (copied across file
systems), ``summary.csv`` copied, cycle 0's timings copied (marked ``shared_from``), then its
own config frozen; all of it is assembled in a temporary folder renamed into place, so a member
either does not exist or is complete. Every al-det write replaces files by renaming, so a later
rewrite in one work dir never changes another's linked file. Other arms init and train their
own cycle 0. Then each work dir runs as ``al-det run -w`` would: resumable stage by stage.

Reads the plan and the config; writes the work dirs above (each through the stages' own
atomic writers) and nothing else.
"""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path

from al_det import atomic
from al_det.config import ExperimentConfig, diff_configs, override
from al_det.errors import ConfigError
from al_det.infer import covers_labeled, wants_probs
from al_det.sweep_plan import Arm, Plan, base_dir, member_dir
from al_det.timings import append_timing, read_timings
from al_det.workdir import Workdir, freeze, load_frozen, locked_workdir

log = logging.getLogger(__name__)

CYCLE0_STAGES = ("train", "evaluate", "infer")


def base_sets(plan: Plan, seed: int) -> list[str]:
    return [*plan.sets, f"seed={seed}"]


def _cycle0_stages(cfg: ExperimentConfig) -> list[str]:
    return [s for s in CYCLE0_STAGES if s != "evaluate" or cfg.data.test is not None]


def base_done(root: Path, seed: int) -> bool:
    wd = Workdir(base_dir(root, seed))
    if not wd.config.exists():
        return False
    cfg = load_frozen(wd)
    return all(wd.stage_done(0, s) for s in _cycle0_stages(cfg))


def run_base(root: Path, plan: Plan, seed: int) -> Workdir:
    """Init ``ROOT/_cycle0/seed_N`` and train, evaluate, infer its cycle 0 (resumable)."""
    from al_det import dist
    from al_det.init import run_init
    from al_det.stages import stage_function
    from al_det.timings import run_timed
    from al_det.workdir import open_workdir

    wd = Workdir(base_dir(root, seed))
    with locked_workdir(wd):
        cfg = run_init(Path(plan.config), wd.root, base_sets(plan, seed))
        if cfg.mode != "simulation":
            raise ConfigError(f"{plan.config}: mode={cfg.mode}: a sweep needs mode: simulation "
                              "(its labels come from the pool file)")
        wd, cfg = open_workdir(wd.root)
        dist.init_distributed(cfg.device)
        try:
            for stage in _cycle0_stages(cfg):
                if not wd.stage_done(0, stage):
                    print(f"sweep: {wd.root}: cycle 0 {stage}", flush=True)
                    run_timed(wd.root, 0, stage, lambda s=stage: stage_function(s)(wd, 0, cfg))
        finally:
            dist.cleanup()
    return wd


def member_config(root: Path, arm: Arm, seed: int) -> tuple[ExperimentConfig, bool]:
    """The member's config (the base's frozen one with the arm's overrides) and whether it
    may share the base's cycle 0."""
    base = load_frozen(Workdir(base_dir(root, seed)))
    cfg = override(base, arm.sets)
    keys = [d.split(":")[0] for d in diff_configs(base, cfg)]
    # the dump must hold what the arm's strategy reads (labeled centres, probs.npy); a
    # loss-prediction head changes model.*, so learning_loss never shares a plain cycle 0
    same_dump = (covers_labeled(cfg), wants_probs(cfg)) == (covers_labeled(base),
                                                             wants_probs(base))
    return cfg, all(k.startswith("acquire.") for k in keys) and same_dump


def _link_or_copy(src: str, dst: str) -> str:
    try:
        os.link(src, dst)
    except OSError:  # another file system, or links not allowed
        shutil.copy2(src, dst)
    return dst


def share_cycle0(base: Workdir, member: Workdir, cfg: ExperimentConfig) -> None:
    """Make ``member`` from ``base``'s finished cycle 0 (see the module docstring)."""
    src0 = base.cycle(0)
    with atomic.atomic_dir(member.root) as tmp:
        wd = Workdir(tmp)
        dst0 = wd.cycle(0)
        dst0.root.mkdir()
        for f in (base.categories, base.versions):
            _link_or_copy(f, str(tmp / f.name))
        for p in (src0.labeled, src0.unlabeled, src0.model, src0.detections, src0.metrics):
            if p.exists():
                _link_or_copy(p, str(dst0.root / p.name))
        for d in (src0.train_dir, src0.dump):
            if d.is_dir():
                shutil.copytree(d, dst0.root / d.name, copy_function=_link_or_copy)
        if base.summary.exists():
            shutil.copy2(base.summary, wd.summary)
        for rec in read_timings(base.root):
            if rec["cycle"] == 0:
                append_timing(tmp, {**rec, "shared_from": str(base.root)})
        freeze(wd, cfg)


def prepare_member(root: Path, plan: Plan, arm: Arm, seed: int) -> tuple[Path, bool]:
    """The member work dir, made from its seed's base (or initialised on its own) if it does
    not exist yet; refused if it exists with another config. Returns (path, shared)."""
    from al_det.init import run_init

    path = member_dir(root, arm, seed)
    cfg, shared = member_config(root, arm, seed)
    wd = Workdir(path)
    _clean_member_tmp(path)
    if wd.config.exists() and not shared:  # init compares the config with the frozen one
        with locked_workdir(wd):
            run_init(Path(plan.config), path, [*base_sets(plan, seed), *arm.sets])
        return path, shared
    if wd.config.exists():
        frozen = load_frozen(wd)
        # the cycles may have been extended with al-det run -w DIR --set cycles=N
        diff = [d for d in diff_configs(frozen, cfg) if not d.startswith("cycles:")]
        if diff:
            raise ConfigError(f"{wd.config}: this work dir of the sweep has another config "
                              f"({'; '.join(diff)}); move it away to rerun the sweep")
        return path, shared
    if path.exists():  # an own-cycle-0 init killed before config.yaml: start it again
        shutil.rmtree(path)
    if shared:
        share_cycle0(Workdir(base_dir(root, seed)), wd, cfg)
    else:
        log.info("%s: its config differs from cycle 0's in more than acquire.*: own cycle 0",
                 path)
        with locked_workdir(wd):
            run_init(Path(plan.config), path, [*base_sets(plan, seed), *arm.sets])
    return path, shared


def _clean_member_tmp(path: Path) -> None:
    """Leftovers of a killed :func:`share_cycle0` of this member (not of its neighbours, which
    another task may be making right now)."""
    for p in path.parent.glob(f"{atomic.TMP_PREFIX}{path.name}.*"):
        shutil.rmtree(p, ignore_errors=True) if p.is_dir() else p.unlink(missing_ok=True)


def run_member(root: Path, plan: Plan, arm: Arm, seed: int) -> Path:
    """Prepare the member and run all its cycles (``al-det run -w``: resumable)."""
    from al_det.run import run_experiment

    if not base_done(root, seed):
        run_base(root, plan, seed)
    path, shared = prepare_member(root, plan, arm, seed)
    how = "cycle 0 shared from " + str(base_dir(root, seed).relative_to(root)) if shared \
        else "own cycle 0"
    print(f"sweep: {path.relative_to(root)} ({how})", flush=True)
    run_experiment(None, path)
    return path


def run_task(root: Path, plan: Plan, index: int) -> Path:
    """One array task: ``plan.tasks()[index]`` (the per-seed bases come first)."""
    tasks = plan.tasks()
    if not 0 <= index < len(tasks):
        raise ConfigError(f"--task {index}: the sweep has tasks 0..{len(tasks) - 1} "
                          "(al-det sweep -w ROOT --list)")
    kind, arm, seed = tasks[index]
    if kind == "base":
        return run_base(root, plan, seed).root
    return run_member(root, plan, arm, seed)


def run_sweep(root: Path, plan: Plan) -> None:
    """Every task in order: per seed its cycle 0, then its arms; then the grid's status."""
    from al_det.sweep_status import sweep_table

    n = len(plan.tasks())
    for i in range(n):
        print(f"sweep: task {i + 1}/{n}", flush=True)
        run_task(root, plan, i)
    print(sweep_table(root))


def remaining_stages(path: Path) -> list[str]:
    """``CYCLE STAGE`` lines of what is left in a work dir, in order (for scripts)."""
    from al_det.run import _stages

    wd = Workdir(path)
    cfg = load_frozen(wd)
    if path.parent.name == "_cycle0":
        return [f"0 {s}" for s in _cycle0_stages(cfg) if not wd.stage_done(0, s)]
    out = []
    for k in range(cfg.cycles):
        for stage in _stages(cfg, last=k == cfg.cycles - 1):
            if not wd.stage_done(k, stage):
                out.append(f"{k} {stage}")
    return out


def prepare_task(root: Path, plan: Plan, index: int) -> tuple[Path, list[str]]:
    """For a script that runs each stage itself (torchrun): init the task's work dir (a
    member: from its finished base) and list its remaining stages."""
    from al_det.init import run_init

    tasks = plan.tasks()
    if not 0 <= index < len(tasks):
        raise ConfigError(f"--task {index}: the sweep has tasks 0..{len(tasks) - 1}")
    kind, arm, seed = tasks[index]
    if kind == "base":
        wd = Workdir(base_dir(root, seed))
        with locked_workdir(wd):
            run_init(Path(plan.config), wd.root, base_sets(plan, seed))
        return wd.root, remaining_stages(wd.root)
    if not base_done(root, seed):
        raise ConfigError(f"{base_dir(root, seed)}: cycle 0 of seed {seed} is not done: run "
                          f"its task {plan.seeds.index(seed)} first")
    path, _ = prepare_member(root, plan, arm, seed)
    return path, remaining_stages(path)
