"""``al-det run`` (all cycles of an experiment, resumable) and ``al-det status``.

Reads the experiment config and the work dir; writes nothing of its own: each stage writes
its artifacts, and a stage whose final file exists is skipped, so the same command after a
crash or a kill continues from the last completed stage.
"""

from __future__ import annotations

import csv
import json
import logging
from collections.abc import Sequence
from pathlib import Path

from al_det.workdir import STAGES, Workdir

log = logging.getLogger(__name__)


def run_experiment(config_path: Path, workdir: Path, overrides: Sequence[str] = (),
                   force: bool = False) -> None:
    """Init if needed, then train, evaluate, infer, acquire per cycle; the last trains and
    evaluates only. Labelling mode stops after an acquisition, for the labels to come."""
    from al_det import dist
    from al_det.cycle import acquire_done, run_acquire_cycle
    from al_det.init import locked_workdir, open_workdir, run_init
    from al_det.stages import setup_logging, stage_function

    setup_logging()
    with locked_workdir(Workdir(Path(workdir))):
        run_init(config_path, workdir, overrides, force=force)
        wd, cfg = open_workdir(workdir, force)
        dist.init_distributed(cfg.device)
        try:
            for k in range(cfg.cycles):
                if not wd.cycle(k).unlabeled.exists():
                    log.info("cycle %d: waiting for labels: run `al-det label`", k)
                    return
                for stage in _stages(cfg, last=k == cfg.cycles - 1):
                    if not wd.cycle(k).stage_done(stage):
                        stage_function(stage)(wd, k, cfg)
                if k < cfg.cycles - 1 and not acquire_done(wd, k, cfg):
                    run_acquire_cycle(wd, k, cfg)
        finally:
            dist.cleanup()
    print(status_table(workdir))


def _stages(cfg, last: bool) -> list[str]:  # noqa: ANN001 - an ExperimentConfig
    """The torch stages of a cycle: no evaluation without a test set, no inference at the end."""
    stages = ["train"] + (["evaluate"] if cfg.data.test is not None else [])
    return stages if last else [*stages, "infer"]


def status_table(workdir: Path) -> str:
    """The cycle x stage table: done stages, labeled images and AP per cycle."""
    wd = Workdir(Path(workdir))
    ks = wd.cycles()
    if not ks:
        return f"{wd.root}: no cycle yet (run `al-det init`)"
    name, aps = _summary_ap(wd.summary)
    head = f"{'cycle':>5}  {'labeled':>8}  " + "  ".join(f"{s:>8}" for s in STAGES) + f"{name:>10}"
    lines = [head]
    for k in ks:
        c = wd.cycle(k)
        done = ["done" if _done(wd, k, s) else "-" for s in STAGES]
        n = len(json.loads(c.labeled.read_text())["images"])
        ap = f"{aps[k]:>10.4f}" if k in aps else f"{'-':>10}"
        lines.append(f"{k:>5}  {n:>8}  " + "  ".join(f"{d:>8}" for d in done) + ap)
    return "\n".join(lines)


def _done(wd: Workdir, k: int, stage: str) -> bool:
    if stage == "acquire":
        return wd.cycle(k).selection.exists() and (
            wd.cycle(k + 1).unlabeled.exists() or wd.cycle(k).to_label.exists())
    return wd.cycle(k).stage_done(stage)


def _summary_ap(path: Path) -> tuple[str, dict[int, float]]:
    """The headline column of summary.csv (AP, or mAP for voc07) and its defined values."""
    if not path.exists():
        return "AP", {}
    with open(path, newline="") as fh:
        reader = csv.DictReader(fh)
        name = "mAP" if "mAP" in (reader.fieldnames or ()) else "AP"
        return name, {int(r["cycle"]): float(r[name]) for r in reader if r.get(name)}
