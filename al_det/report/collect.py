"""Which work dirs a report covers, and how they group into arms (strategy or variant).

Reads each work dir's frozen ``config.yaml``, ``summary.csv`` and (in a sweep root)
``sweep.json``; writes nothing. A path is a work dir (it has ``config.yaml``) or a folder
searched for work dirs (a sweep root: its ``ARM/seed_N``, never its ``_cycle0`` bases).
The work dirs of one sweep arm form a group; other work dirs group together when their
frozen configs are equal but for ``seed``, ``name`` and (generated demo data) the data
paths; a group is named by its sweep arm, else by its
strategy and the acquisition parameters it sets apart from the defaults.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path

from al_det.config import ExperimentConfig, to_dict
from al_det.errors import WorkdirError
from al_det.summary import read_summary
from al_det.workdir import Workdir, load_frozen

SKIP = ("_cycle0", "data", "report")


@dataclass(frozen=True)
class Run:
    """One work dir: its config, summary rows and arm name (sweep members)."""

    wd: Workdir
    cfg: ExperimentConfig
    rows: tuple[dict, ...]
    arm: str | None

    @property
    def metric(self) -> str:
        return "mAP" if self.cfg.evaluate.metric == "voc07" else "AP"


@dataclass(frozen=True)
class Group:
    label: str
    runs: tuple[Run, ...]

    @property
    def cfg(self) -> ExperimentConfig:
        return self.runs[0].cfg

    @property
    def seeds(self) -> list[int]:
        return [r.cfg.seed for r in self.runs]


def find_workdirs(paths: list[Path]) -> list[Path]:
    """The work dirs named by or found below ``paths``, in a stable order, each once."""
    found: list[Path] = []
    for p in map(Path, paths):
        if not p.exists():
            raise WorkdirError(f"{p}: no such work dir or folder")
        if (p / "config.yaml").exists():
            found.append(p)
            continue
        if (p / "sweep.json").exists():  # the plan's order: arms as the user listed them
            plan = json.loads((p / "sweep.json").read_text())
            found += [p / a["name"] / f"seed_{s}" for a in plan.get("arms", [])
                      for s in plan.get("seeds", [])
                      if (p / a["name"] / f"seed_{s}" / "config.yaml").exists()]
            continue
        below = sorted(c.parent for c in p.rglob("config.yaml")
                       if not set(c.relative_to(p).parts[:-1]) & set(SKIP))
        if not below:
            raise WorkdirError(f"{p}: no al-det work dir in it (no config.yaml): run al-det "
                               "run or al-det sweep first")
        found += below
    out, seen = [], set()
    for p in found:
        if p.resolve() not in seen:
            seen.add(p.resolve())
            out.append(p)
    return out


def _arm_name(path: Path) -> str | None:
    root = path.parent.parent
    if (root / "sweep.json").exists():
        plan = json.loads((root / "sweep.json").read_text())
        if path.parent.name in [a["name"] for a in plan.get("arms", [])]:
            return path.parent.name
    return None


def load_runs(paths: list[Path]) -> list[Run]:
    runs = []
    for p in find_workdirs(paths):
        wd = Workdir(p)
        runs.append(Run(wd, load_frozen(wd), tuple(read_summary(wd.summary)), _arm_name(p)))
    return runs


def _key(cfg: ExperimentConfig) -> str:
    d = to_dict(cfg)
    d.pop("seed"), d.pop("name")
    if cfg.data.synthetic is not None:
        d["data"] = {"synthetic": d["data"]["synthetic"]}
    return json.dumps(d, sort_keys=True)


def _label(cfg: ExperimentConfig) -> str:
    """strategy (key=value, ...): the parameters it takes that differ from the defaults."""
    from al_det.config import AcquireConfig
    from al_det.strategies import STRATEGIES

    cls = STRATEGIES.get(cfg.acquire.strategy)
    fields = [f.name for f in dataclasses.fields(cls)] if cls else []
    default = AcquireConfig()
    diff = [f"{k}={getattr(cfg.acquire, k)}" for k in fields
            if hasattr(default, k) and getattr(cfg.acquire, k) != getattr(default, k)]
    return cfg.acquire.strategy + (f" ({', '.join(diff)})" if diff else "")


def group_runs(runs: list[Run]) -> list[Group]:
    """Runs grouped by config (seed aside), in order of first appearance; labels unique."""
    groups: dict[str, list[Run]] = {}
    for r in runs:  # a sweep's arm is a group by construction
        key = f"{r.wd.root.parent.parent.resolve()}/{r.arm}" if r.arm else _key(r.cfg)
        groups.setdefault(key, []).append(r)
    out, used = [], set()
    for members in groups.values():
        members.sort(key=lambda r: r.cfg.seed)
        arms = {r.arm for r in members}
        label = arms.pop() if len(arms) == 1 and None not in arms else _label(members[0].cfg)
        base, i = label, 2
        while label in used:
            label, i = f"{base} #{i}", i + 1
        used.add(label)
        out.append(Group(label, tuple(members)))
    return out
