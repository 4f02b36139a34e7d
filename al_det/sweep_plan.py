"""A sweep's plan: which work dirs (arm x seed) a sweep makes, read from a sweep file or flags.

An *arm* is a strategy (``--strategies random,entropy``) or a named parameter set (a sweep
file's ``variants``/``grid``); each (arm, seed) is one ordinary work dir ``ROOT/ARM/seed_N``.
A sweep file is YAML with one top-level ``sweep:`` section::

    sweep:
      base: ../coco_frcnn.yaml        # the experiment config, relative to this file
      seeds: [0, 1, 2]
      strategies: [random, entropy]   # arms named after the strategy
      variants:                       # arms named by you: dotted config keys -> values
        no-intra: {acquire.intra: false}
      grid:                           # arms for every combination (named alpha=0.5,beta=0.75)
        acquire.alpha: [0.25, 0.5]
        acquire.beta: [0.5, 0.75]
      set: {train.epochs: 6}          # overrides for every work dir

Reads the sweep file (or nothing: flags only); writes ``ROOT/sweep.json`` (the resolved plan,
atomically), which later commands read, so ``al-det sweep -w ROOT`` resumes without flags and
``al-det status``/``report`` recognise a sweep root by it.
"""

from __future__ import annotations

import difflib
import itertools
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from al_det import atomic
from al_det.config import parse_yaml
from al_det.errors import ConfigError

PLAN = "sweep.json"
BASES = "_cycle0"  # ROOT/_cycle0/seed_N: the per-seed cycle 0 shared by that seed's arms
NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.=,+-]*")
SWEEP_KEYS = ("base", "seeds", "strategies", "variants", "grid", "set")


@dataclass(frozen=True)
class Arm:
    """One line of the comparison: a name and its ``--set`` overrides."""

    name: str
    sets: tuple[str, ...]


@dataclass(frozen=True)
class Plan:
    config: str  # the experiment config, absolute
    sets: tuple[str, ...]  # overrides of every work dir
    seeds: tuple[int, ...]
    arms: tuple[Arm, ...]

    def to_json(self) -> dict:
        return {"config": self.config, "set": list(self.sets), "seeds": list(self.seeds),
                "arms": [{"name": a.name, "set": list(a.sets)} for a in self.arms]}

    @classmethod
    def from_json(cls, d: Mapping, source: str) -> Plan:
        try:
            return cls(str(d["config"]), tuple(d["set"]), tuple(int(s) for s in d["seeds"]),
                       tuple(Arm(a["name"], tuple(a["set"])) for a in d["arms"]))
        except (KeyError, TypeError, ValueError) as exc:
            raise ConfigError(f"{source}: not a sweep plan ({exc!r}); remove it and rerun "
                              "`al-det sweep -c CONFIG -w ROOT ...`") from None

    def members(self) -> list[tuple[Arm, int]]:
        """The (arm, seed) work dirs, seed-major: a seed's arms run after its cycle 0."""
        return [(a, s) for s in self.seeds for a in self.arms]

    def tasks(self) -> list[tuple[str, Arm | None, int]]:
        """Array tasks: ("base", None, seed) per seed first, then ("member", arm, seed)."""
        return [("base", None, s) for s in self.seeds] + \
               [("member", a, s) for a, s in self.members()]


def member_dir(root: Path, arm: Arm, seed: int) -> Path:
    return Path(root) / arm.name / f"seed_{seed}"


def base_dir(root: Path, seed: int) -> Path:
    return Path(root) / BASES / f"seed_{seed}"


def is_sweep_root(path: Path) -> bool:
    return (Path(path) / PLAN).is_file()


def read_plan(root: Path) -> Plan:
    path = Path(root) / PLAN
    try:
        return Plan.from_json(json.loads(path.read_text()), str(path))
    except FileNotFoundError:
        raise ConfigError(f"{root}: not a sweep root (no {PLAN}): start it with "
                          "`al-det sweep -c CONFIG -w ROOT --strategies ... --seeds ...`") from None
    except ValueError as exc:
        raise ConfigError(f"{path}: unreadable ({exc}); remove it and rerun al-det sweep") from None


def _value(v: Any) -> str:
    return json.dumps(v)  # JSON is YAML: the --set parser reads it back exactly


def _sets(mapping: Any, source: str, key: str) -> tuple[str, ...]:
    """A mapping of dotted keys -> values (or a list of "k=v" strings) as --set strings."""
    if mapping is None:
        return ()
    if isinstance(mapping, list) and all(isinstance(x, str) and "=" in x for x in mapping):
        return tuple(mapping)
    if not isinstance(mapping, dict):
        raise ConfigError(f"{source}: {key} must map dotted config keys to values, "
                          "e.g. {acquire.intra: false}")
    return tuple(f"{k}={_value(v)}" for k, v in mapping.items())


def _check_name(name: str, source: str) -> str:
    if not NAME_RE.fullmatch(str(name)):
        raise ConfigError(f"{source}: arm name {name!r}: use letters, digits and _.=,+- "
                          "(not starting with _ or -): it names a folder")
    return str(name)


def strategy_arms(names: Sequence[str], source: str) -> list[Arm]:
    from al_det.strategies import STRATEGIES

    arms = []
    for n in names:
        if n not in STRATEGIES:
            close = difflib.get_close_matches(n, list(STRATEGIES), n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise ConfigError(f"{source}: unknown strategy {n!r}{hint}; strategies: "
                              f"{', '.join(STRATEGIES)}")
        arms.append(Arm(n, (f"acquire.strategy={n}",)))
    return arms


def grid_arms(grid: Any, source: str) -> list[Arm]:
    """Every combination of the grid's values, named ``alpha=0.5,beta=0.75``."""
    if not grid:
        return []
    if not isinstance(grid, dict) or not all(isinstance(v, list) and v for v in grid.values()):
        raise ConfigError(f"{source}: grid must map dotted config keys to lists of values")
    keys = list(grid)
    arms = []
    for combo in itertools.product(*(grid[k] for k in keys)):
        name = ",".join(f"{k.split('.')[-1]}={v}" for k, v in zip(keys, combo, strict=True))
        arms.append(Arm(_check_name(name, source),
                        tuple(f"{k}={_value(v)}" for k, v in zip(keys, combo, strict=True))))
    return arms


def parse_sweep_file(path: Path) -> dict | None:
    """The ``sweep:`` section of ``path``, or None when it is an experiment config."""
    raw = parse_yaml(Path(path).read_text(), str(path))
    if not isinstance(raw, dict) or "sweep" not in raw:
        return None
    extra = [k for k in raw if k != "sweep"]
    if extra:
        raise ConfigError(f"{path}: a sweep file holds only the sweep: section, not {extra}; "
                          "put experiment keys in the base config or under sweep.set")
    section = raw["sweep"]
    if not isinstance(section, dict):
        raise ConfigError(f"{path}: sweep: must be a mapping with keys {', '.join(SWEEP_KEYS)}")
    for key in section:
        if key not in SWEEP_KEYS:
            close = difflib.get_close_matches(str(key), SWEEP_KEYS, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise ConfigError(f"{path}: unknown key sweep.{key}{hint}; keys: "
                              f"{', '.join(SWEEP_KEYS)}")
    if "base" not in section:
        raise ConfigError(f"{path}: sweep.base is missing: name the experiment config")
    return section


def make_plan(config: Path, strategies: Sequence[str] | None, seeds: Sequence[int] | None,
              overrides: Sequence[str] = ()) -> Plan:
    """The plan of ``config`` (an experiment config or a sweep file); flags replace the sweep
    file's strategies and seeds; ``overrides`` come after its ``set``."""
    config = Path(config)
    section = parse_sweep_file(config) or {}
    src = str(config)
    base = (config.parent / str(section["base"])).resolve() if section else config.resolve()
    if not base.is_file():
        raise ConfigError(f"{src}: sweep.base {section.get('base')!r}: no such file {base}")
    seeds = list(seeds) if seeds else section.get("seeds", [0])
    if not isinstance(seeds, list) or not seeds or \
            not all(isinstance(s, int) and not isinstance(s, bool) for s in seeds):
        raise ConfigError(f"{src}: seeds must be a list of integers, e.g. [0, 1, 2]")
    names = list(strategies) if strategies else section.get("strategies") or []
    arms = strategy_arms(names, src)
    variants = section.get("variants") or {}
    if not isinstance(variants, dict):
        raise ConfigError(f"{src}: sweep.variants must map names to parameter sets")
    arms += [Arm(_check_name(n, src), _sets(v, src, f"variants.{n}"))
             for n, v in variants.items()]
    arms += grid_arms(section.get("grid"), src)
    if not arms:
        from al_det.config import load_config

        name = load_config(base).acquire.strategy
        arms = [Arm(name, (f"acquire.strategy={name}",))]
    dup = sorted({a.name for a in arms if [b.name for b in arms].count(a.name) > 1})
    if dup:
        raise ConfigError(f"{src}: arm names appear twice: {', '.join(dup)}")
    if len(set(seeds)) != len(seeds):
        raise ConfigError(f"{src}: seeds appear twice: {seeds}")
    sets = (*_sets(section.get("set"), src, "sweep.set"), *overrides)
    return Plan(str(base), tuple(sets), tuple(seeds), tuple(arms))


def settle_plan(root: Path, plan: Plan | None) -> Plan:
    """The plan to run: ``ROOT/sweep.json``'s, or the given one written there. A given plan
    may add arms and seeds to the stored one; changing or dropping any is refused."""
    root = Path(root)
    stored = read_plan(root) if is_sweep_root(root) else None
    if plan is None:
        if stored is None:
            read_plan(root)  # raises: not a sweep root
        return stored
    if stored is not None:
        if (plan.config, plan.sets) != (stored.config, stored.sets):
            raise ConfigError(
                f"{root / PLAN}: this sweep was started with config {stored.config} and "
                f"--set {list(stored.sets)}; use a new ROOT for {plan.config} {list(plan.sets)}")
        old = {a.name: a for a in stored.arms}
        changed = [a.name for a in plan.arms if a.name in old and old[a.name] != a]
        if changed:
            raise ConfigError(f"{root / PLAN}: arms {changed} had other settings; rename them")
        arms = (*stored.arms, *(a for a in plan.arms if a.name not in old))
        seeds = (*stored.seeds, *(s for s in plan.seeds if s not in stored.seeds))
        plan = Plan(stored.config, stored.sets, seeds, arms)
    if plan != stored:
        atomic.write_json(root / PLAN, plan.to_json(), indent=1)
    return plan
