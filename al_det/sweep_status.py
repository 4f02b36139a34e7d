"""``al-det status -w ROOT`` for a sweep root: one line per work dir of the grid.

Reads ``ROOT/sweep.json`` and each work dir's stage files and ``summary.csv``; writes
nothing.
"""

from __future__ import annotations

from pathlib import Path

from al_det.sweep_plan import base_dir, member_dir, read_plan
from al_det.workdir import Workdir, load_frozen


def _progress(path: Path, base: bool) -> tuple[str, str, str]:
    """(stages done / total, the next stage, the metric per evaluated cycle)."""
    from al_det.run import _stages
    from al_det.summary import read_summary

    wd = Workdir(path)
    if not wd.config.exists():
        return "-", "not started", ""
    cfg = load_frozen(wd)
    todo = []
    for k in range(1 if base else cfg.cycles):
        stages = _stages(cfg, last=k == cfg.cycles - 1)
        todo += [(k, s) for s in stages if not base or s != "acquire"]
    done = [(k, s) for k, s in todo if wd.stage_done(k, s, cfg.mode)]
    rest = [t for t in todo if t not in done]
    nxt = f"cycle {rest[0][0]} {rest[0][1]}" if rest else "done"
    rows = read_summary(wd.summary)
    name = "mAP" if rows and "mAP" in rows[0] else "AP"
    aps = " ".join(f"{float(r[name]):.4f}" if r.get(name) else "-" for r in rows)
    return f"{len(done)}/{len(todo)}", nxt, aps


def sweep_table(root: Path) -> str:
    """The grid: per-seed cycle 0 bases, then every (arm, seed) work dir."""
    root = Path(root)
    plan = read_plan(root)
    rows = [(str(base_dir(root, s).relative_to(root)), *_progress(base_dir(root, s), True))
            for s in plan.seeds]
    rows += [(str(member_dir(root, a, s).relative_to(root)),
              *_progress(member_dir(root, a, s), False)) for a, s in plan.members()]
    width = max(len(r[0]) for r in rows)
    head = (f"sweep {root}: {len(plan.arms)} arms x {len(plan.seeds)} seeds "
            f"({', '.join(a.name for a in plan.arms)}; seeds {', '.join(map(str, plan.seeds))})")
    lines = [head, f"{'work dir':<{width}}  {'stages':>7}  {'next':<20}  AP by cycle"]
    lines += [f"{r[0]:<{width}}  {r[1]:>7}  {r[2]:<20}  {r[3]}" for r in rows]
    left = sum(r[2] != "done" for r in rows)
    lines.append(f"next: al-det sweep -w {root}" if left else
                 f"all done: al-det report {root}")
    return "\n".join(lines)
