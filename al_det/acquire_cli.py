"""``al-det acquire`` in its two modes: in a work dir, or on any dump and labeled file.

File mode reads ``--dets`` (a dump folder) and ``--labeled`` (COCO JSON) and writes
``--output`` plus ``OUT.selection.json``; work-dir mode reads and writes the cycle's files
(see :mod:`al_det.cycle`). Imports no torch: acquisition is numpy only.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Sequence
from pathlib import Path

from al_det.config import AcquireConfig, from_dict, parse_yaml, validate
from al_det.errors import ConfigError

log = logging.getLogger(__name__)

FILE_MODE = ("dets", "labeled", "budget", "strategy", "output")


def parse_acquire_overrides(overrides: Sequence[str]) -> dict:
    """``--set acquire.KEY=VALUE`` pairs as a dict, values parsed as YAML."""
    out = {}
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep or not key.startswith("acquire."):
            raise ConfigError(f"--set {item!r}: acquire takes acquire.<param>=<value> only")
        out[key.removeprefix("acquire.")] = parse_yaml(value, f"--set {key}")
    return out


def acquire_command(*, workdir: Path | None, cycle: int | None, overrides: Sequence[str],
                    seed: int | None, no_intra: bool, no_inter: bool, force: bool,
                    **file_args: object) -> None:
    """Dispatch to work-dir mode or file mode; mixing them is an error."""
    params = parse_acquire_overrides(overrides)
    if no_intra:
        params["intra"] = False
    if no_inter:
        params["inter"] = False
    given = [k for k in FILE_MODE if file_args.get(k) is not None]
    if workdir is not None:
        if set(given) - {"strategy"}:
            raise ConfigError(f"--workdir cannot be combined with --{', --'.join(given)}")
        _workdir_mode(workdir, cycle, file_args.get("strategy"), seed, params, force)
        return
    missing = [k for k in FILE_MODE if k not in given]
    if missing:
        raise ConfigError(f"acquire needs -w WORKDIR, or all of --{', --'.join(FILE_MODE)} "
                          f"(missing --{', --'.join(missing)})")
    from al_det.acquire import run_acquire_standalone

    if seed is not None:
        params["seed"] = seed
    sel = run_acquire_standalone(
        Path(file_args["dets"]), Path(file_args["labeled"]), int(file_args["budget"]),
        str(file_args["strategy"]), Path(file_args["output"]), params,
    )
    print(f"selected {len(sel.image_ids)} images with {sel.strategy} -> {file_args['output']}")


def _workdir_mode(workdir: Path, cycle: int | None, strategy: object, seed: int | None,
                  params: dict, force: bool) -> None:
    """The cycle's config, with command-line changes to its acquisition section."""
    from al_det.cycle import run_acquire_cycle
    from al_det.init import locked_workdir, open_workdir
    from al_det.stages import setup_logging

    setup_logging()
    wd, cfg = open_workdir(workdir, force)
    k = wd.resolve_cycle(cycle).index
    if strategy is not None:
        params["strategy"] = strategy
    if params:
        raw = {**dataclasses.asdict(cfg.acquire), **params}
        acq = from_dict(AcquireConfig, raw, "command line", "acquire.")
        cfg = dataclasses.replace(cfg, acquire=acq)
        validate(cfg, "command line")
    if seed is not None:
        cfg = dataclasses.replace(cfg, seed=seed)
    with locked_workdir(wd):
        sel = run_acquire_cycle(wd, k, cfg)
    if sel is not None:
        print(f"cycle {k}: selected {len(sel.image_ids)} images with {sel.strategy}")
