"""The ``al-det`` command: parses options, loads inputs and calls the library, nothing more.

Each command imports its stage module lazily, so ``al-det --help`` and ``al-det acquire``
never import torch. Library errors (:class:`al_det.errors.AlDetError`) become one line on
stderr and exit status 2; SIGTERM during training exits 143 after a checkpoint is saved.
"""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from al_det.errors import AlDetError

EXIT_USER_ERROR = 2


def _friendly(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Turn library errors into one clear line and a non-zero exit, never a traceback."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except AlDetError as exc:
            click.echo(f"al-det: error: {exc}", err=True)
            sys.exit(getattr(exc, "exit_code", EXIT_USER_ERROR))

    return wrapper


workdir_opt = click.option(
    "-w", "--workdir", required=True, type=click.Path(file_okay=False, path_type=Path),
    help="The experiment's work dir (made by `al-det init`).",
)
cycle_opt = click.option(
    "--cycle", "cycle", type=int, default=None, help="Cycle index (default: the latest).",
)
force_opt = click.option(
    "--force", is_flag=True,
    help="Go on although the config or library versions changed (recorded in history.jsonl).",
)
set_opt = click.option(
    "--set", "overrides", multiple=True, metavar="KEY.PATH=VALUE",
    help="Override a config key, the value parsed as YAML (repeatable), e.g. train.lr=0.01.",
)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="al-det")
def main() -> None:
    """Active learning for object detection: ENMS + DivProto (CVPR 2022) and baselines.

    One cycle: train -> evaluate -> infer -> acquire. `al-det run` does all cycles.
    """


@main.command()
@click.option("-c", "--config", "config_path", required=True,
              type=click.Path(dir_okay=False, path_type=Path), help="Experiment YAML file.")
@workdir_opt
@set_opt
@force_opt
@_friendly
def init(config_path: Path, workdir: Path, overrides: tuple[str, ...], force: bool) -> None:
    """Validate the data and config, freeze them, and write cycle 0's splits."""
    from al_det.init import locked_workdir, run_init
    from al_det.workdir import Workdir

    with locked_workdir(Workdir(workdir)):
        run_init(config_path, workdir, overrides, force=force)


def _stage_command(stage: str, summary: str) -> None:
    """Register ``al-det <stage>``: the torch stages share their options and runner."""

    @workdir_opt
    @cycle_opt
    @force_opt
    @_friendly
    def command(workdir: Path, cycle: int | None, force: bool) -> None:
        from al_det.stages import run_stage

        run_stage(stage, workdir, cycle, force)

    command.__doc__ = summary
    main.command(name=stage)(command)


_stage_command("train", "Train the detector on the cycle's labeled split (torchrun: DDP).")
_stage_command("evaluate", "COCO AP of the cycle's model on the test set -> metrics.json, "
                           "summary.csv.")
_stage_command("infer", "Detections + instance features on the unlabeled pool -> the cycle's "
                        "dump.")


@main.command()
@click.option("-w", "--workdir", type=click.Path(file_okay=False, path_type=Path),
              help="Work-dir mode: acquire for the cycle, config-driven.")
@cycle_opt
@click.option("--dets", type=click.Path(file_okay=False, path_type=Path),
              help="File mode: a detections dump folder (docs/detections-dump.md).")
@click.option("--labeled", type=click.Path(dir_okay=False, path_type=Path),
              help="File mode: the labeled set S as COCO JSON.")
@click.option("--budget", type=int, help="File mode: number of images to select.")
@click.option("--strategy", help="random | entropy | enms | divproto | enms_divproto | coreset"
              " | learning_loss | cdal | external")
@click.option("--output", type=click.Path(dir_okay=False, path_type=Path),
              help="File mode: the COCO JSON of selected images (and OUT.selection.json).")
@click.option("--seed", type=int, default=None, help="Seed of random selection.")
@click.option("--no-intra", is_flag=True, help="DivProto without intra-class rejection.")
@click.option("--no-inter", is_flag=True, help="DivProto without inter-class balancing.")
@set_opt
@force_opt
@_friendly
def acquire(workdir: Path | None, cycle: int | None, dets: Path | None, labeled: Path | None,
            budget: int | None, strategy: str | None, output: Path | None, seed: int | None,
            no_intra: bool, no_inter: bool, overrides: tuple[str, ...], force: bool) -> None:
    """Select the next images to label (never imports torch).

    \b
    Work-dir mode:  al-det acquire -w WORKDIR [--cycle K]
    File mode:      al-det acquire --dets DUMP --labeled S.json --budget B \\
                        --strategy enms_divproto --output OUT.json
    """
    from al_det.acquire_cli import acquire_command

    acquire_command(
        workdir=workdir, cycle=cycle, dets=dets, labeled=labeled, budget=budget,
        strategy=strategy, output=output, seed=seed, no_intra=no_intra, no_inter=no_inter,
        overrides=overrides, force=force,
    )


@main.command()
@workdir_opt
@cycle_opt
@click.option("--annotations", required=True, type=click.Path(dir_okay=False, path_type=Path),
              help="COCO JSON exported from CVAT / Label Studio for to_label.json's images.")
@force_opt
@_friendly
def label(workdir: Path, cycle: int | None, annotations: Path, force: bool) -> None:
    """Real labelling: import the annotations of to_label.json's images as the next cycle."""
    from al_det.label import run_label

    run_label(workdir, cycle, annotations, force=force)


@main.command()
@click.option("-c", "--config", "config_path", required=True,
              type=click.Path(dir_okay=False, path_type=Path), help="Experiment YAML file.")
@workdir_opt
@set_opt
@force_opt
@_friendly
def run(config_path: Path, workdir: Path, overrides: tuple[str, ...], force: bool) -> None:
    """All cycles: init if needed, then train, evaluate, infer, acquire per cycle (resumable)."""
    from al_det.run import run_experiment

    run_experiment(config_path, workdir, overrides, force=force)


@main.command()
@workdir_opt
@_friendly
def status(workdir: Path) -> None:
    """Print the cycle x stage table of a work dir."""
    from al_det.run import status_table

    click.echo(status_table(workdir))


@main.command()
@workdir_opt
@click.option("--output", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="PNG path (default WORKDIR/curve.png).")
@_friendly
def report(workdir: Path, output: Path | None) -> None:
    """Plot AP over the labeled fraction (needs matplotlib: pip install al-det[plot])."""
    from al_det.report import plot_summary

    click.echo(plot_summary(workdir, output))
