"""``al-det run`` (all cycles of an experiment, resumable) and ``al-det status``.

Reads the experiment config and the work dir; writes nothing of its own: each stage writes
its artifacts, and a stage whose final file exists is skipped, so the same command after a
crash or a kill continues from the last completed stage.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

from al_det.workdir import STAGES, Workdir, load_frozen, read_split

log = logging.getLogger(__name__)


def run_experiment(config_path: Path | None, workdir: Path, overrides: Sequence[str] = (),
                   force: bool = False) -> None:
    """Init if needed, then train, evaluate, infer, acquire per cycle; the last trains and
    evaluates only. Labelling mode stops after an acquisition, for the labels to come.
    Without ``config_path`` the work dir's frozen config is the truth (``overrides`` change
    it: refused unless forced, more cycles excepted)."""
    from al_det import dist
    from al_det.config import override
    from al_det.init import run_init
    from al_det.stages import stage_function
    from al_det.timings import run_timed
    from al_det.workdir import locked_workdir, open_workdir

    wd = Workdir(Path(workdir))
    with locked_workdir(wd):
        if config_path is not None:
            run_init(config_path, workdir, overrides, force=force)
            wd, cfg = open_workdir(workdir, force)
        else:
            wd, cfg = open_workdir(workdir, force, cfg=override(load_frozen(wd), overrides))
        dist.init_distributed(cfg.device)
        skipped: dict[int, list[str]] = {}
        try:
            for k in range(cfg.cycles):
                if not wd.cycle(k).unlabeled.exists():
                    break  # labelling mode: the labels of cycle k - 1's selection are due
                for stage in _stages(cfg, last=k == cfg.cycles - 1):
                    if wd.stage_done(k, stage, cfg.mode):
                        skipped.setdefault(k, []).append(stage)
                    else:
                        run_timed(wd.root, k, stage,
                                  lambda s=stage, k=k: stage_function(s)(wd, k, cfg))
        finally:
            dist.cleanup()
    if skipped:
        print("skipped as done: " + "; ".join(f"cycle {k} {', '.join(s)}"
                                              for k, s in skipped.items()))
    print(status_table(workdir))


def _stages(cfg, last: bool) -> list[str]:  # noqa: ANN001 - an ExperimentConfig
    """A cycle's stages: no evaluation without a test set, no inference nor acquisition at
    the end."""
    stages = ["train"] + (["evaluate"] if cfg.data.test is not None else [])
    return stages if last else [*stages, "infer", "acquire"]


def status_table(workdir: Path) -> str:
    """The cycle x stage table: done stages, labeled images and AP per cycle."""
    from al_det.summary import read_summary

    wd = Workdir(Path(workdir))
    ks = wd.cycles()
    if not ks:
        return f"{wd.root}: no cycle yet (run `al-det init`)"
    mode = load_frozen(wd).mode
    rows = read_summary(wd.summary)
    name = "mAP" if rows and "mAP" in rows[0] else "AP"
    aps = {int(r["cycle"]): r[name] for r in rows}
    head = f"{'cycle':>5}  {'labeled':>8}  " + "  ".join(f"{s:>8}" for s in STAGES) + f"{name:>10}"
    lines = [head]
    for k in ks:
        done = ["done" if wd.stage_done(k, s, mode) else "-" for s in STAGES]
        n = len(read_split(wd.cycle(k).labeled)["images"])
        ap = f"{float(aps[k]):>10.4f}" if aps.get(k) not in (None, "") else f"{'-':>10}"
        lines.append(f"{k:>5}  {n:>8}  " + "  ".join(f"{d:>8}" for d in done) + ap)
    return "\n".join([*lines, next_step(wd)])


def next_step(wd: Workdir) -> str:
    """What comes next in the work dir, as the command to run."""
    cfg = load_frozen(wd)
    k = wd.cycles()[-1]
    for stage in _stages(cfg, last=k == cfg.cycles - 1):
        if not wd.stage_done(k, stage, cfg.mode):
            return f"next: cycle {k} {stage}: al-det {stage} -w {wd.root} (or al-det run -w " \
                   f"{wd.root})"
    if k < cfg.cycles - 1 and cfg.mode == "labelling":
        n = len(read_split(wd.cycle(k).to_label)["images"])
        return (f"next: cycle {k + 1}: waiting for labels: {n} images in "
                f"{wd.cycle(k).to_label} -> al-det label -w {wd.root} --annotations EXPORT.json")
    return f"next: nothing: all {cfg.cycles} cycles are done (more: al-det run -w {wd.root} " \
           f"--set cycles={cfg.cycles + 1})"
