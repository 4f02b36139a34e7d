"""The ``al-det`` command: parses options, loads inputs and calls the library, nothing more.

Each command imports its stage module lazily, so ``al-det --help`` and ``al-det acquire``
never import torch. Library errors (:class:`al_det.errors.AlDetError`) become one line on
stderr and exit status 2; SIGTERM during training exits 143 after a checkpoint is saved.
"""

from __future__ import annotations

import functools
import logging
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


@click.group(context_settings={"help_option_names": ["-h", "--help"], "show_default": True})
@click.version_option(package_name="al-det")
def main() -> None:
    """Active learning for object detection: ENMS + DivProto (CVPR 2022) and baselines.

    One cycle: train -> evaluate -> infer -> acquire. `al-det run` does all cycles.
    """
    logging.basicConfig(level=logging.INFO, format="%(asctime)s al-det %(levelname)s %(message)s",
                        datefmt="%H:%M:%S")


@main.command()
@click.option("-c", "--config", "config_path", required=True,
              type=click.Path(dir_okay=False, path_type=Path), help="Experiment YAML file.")
@workdir_opt
@set_opt
@force_opt
@_friendly
def init(config_path: Path, workdir: Path, overrides: tuple[str, ...], force: bool) -> None:
    """Validate the data and config, freeze them, and write cycle 0's splits.

    \b
    Example:  al-det init -c configs/coco_frcnn.yaml -w runs/coco
    """
    from al_det.init import describe, run_init
    from al_det.workdir import Workdir, locked_workdir

    with locked_workdir(Workdir(workdir)):
        run_init(config_path, workdir, overrides, force=force)
    click.echo(describe(Workdir(workdir)))


def _stage_command(stage: str, summary: str, example: str) -> None:
    """Register ``al-det <stage>``: the torch stages share their options and runner."""

    @workdir_opt
    @cycle_opt
    @force_opt
    @_friendly
    def command(workdir: Path, cycle: int | None, force: bool) -> None:
        from al_det.stages import run_stage

        run_stage(stage, workdir, cycle, force)

    command.__doc__ = f"{summary}\n\n\b\nExample:  {example}\n"
    main.command(name=stage)(command)


_stage_command("train", "Train the detector on the cycle's labeled split (torchrun: DDP).",
               "al-det train -w runs/coco [--cycle K]\n"
               "on 8 GPUs: torchrun --nproc_per_node 8 -m al_det train -w runs/coco")


@main.command()
@click.option("-w", "--workdir", type=click.Path(file_okay=False, path_type=Path),
              help="Work-dir mode: evaluate the cycle's model (config: evaluate.metric).")
@cycle_opt
@force_opt
@click.option("--gt", type=click.Path(dir_okay=False, path_type=Path),
              help="File mode: the ground truth, COCO JSON.")
@click.option("--dets", type=click.Path(dir_okay=False, path_type=Path),
              help="File mode: any detector's results, a COCO results JSON list.")
@click.option("--metric", type=click.Choice(["coco", "voc07"]), default=None,
              help="File mode: coco (pycocotools AP, default) or voc07 (VOC 2007 11-point mAP).")
@click.option("--output", type=click.Path(dir_okay=False, path_type=Path),
              help="File mode: write the metrics as JSON here.")
@_friendly
def evaluate(workdir: Path | None, cycle: int | None, force: bool, gt: Path | None,
             dets: Path | None, metric: str | None, output: Path | None) -> None:
    """Metrics of the cycle's model on the test set, or of any results file.

    \b
    Work-dir mode:  al-det evaluate -w WORKDIR [--cycle K]   -> metrics.json, summary.csv
    File mode:      al-det evaluate --gt GT.json --dets DETS.json [--metric coco|voc07] \\
                        [--output METRICS.json]   (never imports torch)
    """
    import warnings

    from al_det.errors import ConfigError

    given = [f"--{n}" for n, v in (("gt", gt), ("dets", dets), ("metric", metric),
                                   ("output", output)) if v is not None]
    if workdir is not None:
        if given:
            raise ConfigError(f"evaluate: -w WORKDIR cannot be combined with {', '.join(given)}"
                              " (the work dir's config sets evaluate.metric)")
        from al_det.stages import run_stage

        run_stage("evaluate", workdir, cycle, force)
        return
    if cycle is not None or force:
        raise ConfigError("evaluate: --cycle and --force need -w WORKDIR")
    if gt is None or dets is None:
        missing = [f"--{n}" for n, v in (("gt", gt), ("dets", dets)) if v is None]
        raise ConfigError(f"evaluate needs -w WORKDIR, or --gt GT.json and --dets DETS.json "
                          f"(missing {' and '.join(missing)})")
    from al_det.evaluate import evaluate_files, format_scores

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        scores = evaluate_files(gt, dets, metric or "coco", output)
    for w in caught:  # one plain line each, not Python's source-location format
        click.echo(f"al-det: warning: {w.message}", err=True)
    click.echo(format_scores(scores) + (f"\n-> {output}" if output is not None else ""))


_stage_command("infer", "Detections + instance features on the unlabeled pool -> the cycle's "
                        "dump.", "al-det infer -w runs/coco [--cycle K]")


class StrategyChoice(click.Choice):
    """The names of the strategy dict, loaded when first needed (``al-det --help`` and the
    other commands need not import the strategies)."""

    def __init__(self) -> None:
        super().__init__([])

    @property
    def choices(self):  # noqa: ANN201 - click reads a sequence of names
        from al_det.strategies import STRATEGIES

        return tuple(STRATEGIES)

    @choices.setter
    def choices(self, _value) -> None:  # noqa: ANN001 - set by click.Choice.__init__
        pass

    def convert(self, value, param, ctx):  # noqa: ANN001, ANN201
        # the choices show in --help; a wrong name is refused by the library, in one line
        # with a "did you mean", rather than by click's multi-line usage error
        return value


@main.command()
@click.option("-w", "--workdir", type=click.Path(file_okay=False, path_type=Path),
              help="Work-dir mode: acquire for the cycle, config-driven.")
@cycle_opt
@click.option("--dets", type=click.Path(file_okay=False, path_type=Path),
              help="File mode: a detections dump folder (docs/detections-dump.md).")
@click.option("--labeled", type=click.Path(dir_okay=False, path_type=Path),
              help="File mode: the labeled set S as COCO JSON.")
@click.option("--budget", type=int, help="File mode: number of images to select.")
@click.option("--strategy", type=StrategyChoice(), help="The acquisition strategy.")
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

    In work-dir mode --strategy, --seed, --no-intra, --no-inter and --set change the frozen
    config: refused unless --force (then recorded in history.jsonl).
    """
    from al_det.errors import ConfigError

    file_args = {"dets": dets, "labeled": labeled, "budget": budget, "output": output}
    given = [k for k, v in file_args.items() if v is not None]
    switches = {"acquire.intra": False} if no_intra else {}
    switches.update({"acquire.inter": False} if no_inter else {})
    if workdir is not None:
        if given:
            raise ConfigError(f"--workdir cannot be combined with --{', --'.join(given)}")
        from al_det.acquire import acquire_workdir

        changes = {**switches, "acquire.strategy": strategy, "seed": seed}
        sets = [*overrides, *(f"{k}={v}" for k, v in changes.items() if v is not None)]
        sel = acquire_workdir(workdir, cycle, sets, force)
        click.echo(sel.describe() if sel is not None else "acquisition already done")
        return
    missing = [k for k in (*file_args, "strategy") if k not in given and
               not (k == "strategy" and strategy)]
    if missing:
        raise ConfigError(f"acquire needs -w WORKDIR, or all of --dets, --labeled, --budget, "
                          f"--strategy, --output (missing --{', --'.join(missing)})")
    from al_det.acquire import file_params, run_acquire_standalone

    params = {**file_params(overrides), **{k.split(".")[1]: v for k, v in switches.items()}}
    if seed is not None:
        params["seed"] = seed
    sel = run_acquire_standalone(dets, labeled, budget, strategy, output, params)
    click.echo(f"{sel.describe()} -> {output}")


@main.command()
@workdir_opt
@cycle_opt
@click.option("--annotations", required=True, type=click.Path(dir_okay=False, path_type=Path),
              help="The export of to_label.json's images: COCO (CVAT, Label Studio, ...) or "
                   "Label Studio's JSON.")
@click.option("--missing-as-empty", is_flag=True,
              help="Selected images absent from the export were looked at and hold no object "
                   "(Label Studio's COCO export leaves them out); default: an error.")
@force_opt
@_friendly
def label(workdir: Path, cycle: int | None, annotations: Path, missing_as_empty: bool,
          force: bool) -> None:
    """Real labelling: import the annotations of to_label.json's images as the next cycle.

    \b
    Example:  al-det label -w runs/exp --annotations project-1-at-2024-05-01.json
    """
    from al_det.label import run_label

    click.echo(run_label(workdir, cycle, annotations, force=force,
                         missing_as_empty=missing_as_empty))


@main.command()
@workdir_opt
@cycle_opt
@click.option("--to", "dest", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="Folder to put the images in (made if missing; file_name sub-folders kept).")
@click.option("--copy", is_flag=True,
              help="Copy the files instead of linking them (hard links, or symbolic links "
                   "across file systems).")
@_friendly
def export(workdir: Path, cycle: int | None, dest: Path, copy: bool) -> None:
    """Real labelling: gather to_label.json's image files into a folder for upload.

    \b
    Example:  al-det export -w runs/exp --to upload
    """
    from al_det.export import run_export

    click.echo(run_export(workdir, cycle, dest, copy=copy))


@main.command()
@click.option("-c", "--config", "config_path", type=click.Path(dir_okay=False, path_type=Path),
              help="Experiment YAML file (default: the work dir's frozen config).")
@workdir_opt
@set_opt
@force_opt
@_friendly
def run(config_path: Path | None, workdir: Path, overrides: tuple[str, ...], force: bool) -> None:
    """All cycles: init if needed, then train, evaluate, infer, acquire per cycle (resumable).

    \b
    New experiment:  al-det run -c configs/demo.yaml -w runs/demo
    Resume / extend: al-det run -w runs/demo [--set cycles=6]
    """
    from al_det.run import run_experiment

    run_experiment(config_path, workdir, overrides, force=force)


@main.command(name="config")
@click.option("-w", "--workdir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Print this work dir's frozen config instead of the defaults.")
@_friendly
def config_command(workdir: Path | None) -> None:
    """Print the full default config with every key commented (or a work dir's frozen one).

    \b
    Example:  al-det config > my.yaml   (edit, then: al-det run -c my.yaml -w runs/my)
    """
    from al_det.config import default_config_text
    from al_det.workdir import Workdir, load_frozen

    if workdir is None:
        click.echo(default_config_text(), nl=False)
        return
    wd = Workdir(workdir)
    load_frozen(wd)  # names a folder that is no work dir
    click.echo(wd.config.read_text(), nl=False)


@main.command()
@workdir_opt
@_friendly
def status(workdir: Path) -> None:
    """Print the cycle x stage table of a work dir and what to run next.

    \b
    Example:  al-det status -w runs/demo
    """
    from al_det.sweep_plan import is_sweep_root

    if is_sweep_root(workdir):
        from al_det.sweep_status import sweep_table

        click.echo(sweep_table(workdir))
        return
    from al_det.run import status_table

    click.echo(status_table(workdir))


def _csv(kind: type) -> Callable[[click.Context, click.Parameter, str | None], list | None]:
    def parse(ctx: click.Context, param: click.Parameter, value: str | None) -> list | None:
        if value is None:
            return None
        try:
            return [kind(v.strip()) for v in value.split(",") if v.strip()]
        except ValueError:
            raise click.BadParameter(f"{value!r}: a comma-separated list") from None

    return parse


@main.command()
@click.option("-c", "--config", "config_path", type=click.Path(dir_okay=False, path_type=Path),
              help="An experiment config or a sweep file (configs/sweeps/); needed the first "
                   "time, then ROOT/sweep.json is the plan.")
@click.option("-w", "--root", "root", required=True,
              type=click.Path(file_okay=False, path_type=Path),
              help="The sweep's root: one work dir per ARM/seed_N below it.")
@click.option("--strategies", callback=_csv(str), default=None, metavar="A,B,...",
              help="Strategies to compare (replaces the sweep file's).")
@click.option("--seeds", callback=_csv(int), default=None, metavar="0,1,...",
              help="Seeds (replaces the sweep file's; default 0).")
@set_opt
@click.option("--task", type=int, default=None,
              help="Run only this task (Slurm array index; --list shows them).")
@click.option("--list", "list_tasks", is_flag=True, help="Print the tasks and exit.")
@click.option("--stages", "list_stages", is_flag=True,
              help="With --task: prepare its work dir, print it and its remaining stages "
                   "('CYCLE STAGE' lines), run nothing (for scripts that launch torchrun).")
@_friendly
def sweep(config_path: Path | None, root: Path, strategies: list[str] | None,
          seeds: list[int] | None, overrides: tuple[str, ...], task: int | None,
          list_tasks: bool, list_stages: bool) -> None:
    """Compare strategies (or parameter sets) over seeds: a work dir per (arm, seed).

    Cycle 0 is trained, evaluated and inferred once per seed (ROOT/_cycle0/seed_N) and
    shared by that seed's work dirs. Resumable: rerun the same command (or just -w ROOT).

    \b
    Example:  al-det sweep -c configs/demo.yaml -w runs/bench \\
                  --strategies random,entropy,enms_divproto --seeds 0,1,2
              al-det sweep -c configs/sweeps/table_a.yaml -w runs/table_a
              al-det status -w runs/bench;  al-det report runs/bench
    """
    from al_det import sweep as sw
    from al_det.errors import ConfigError
    from al_det.sweep_plan import make_plan, settle_plan

    if config_path is None and (strategies or seeds or overrides):
        raise ConfigError("sweep: --strategies, --seeds and --set need -c CONFIG")
    plan = make_plan(config_path, strategies, seeds, overrides) if config_path else None
    plan = settle_plan(root, plan)
    if list_tasks:
        for i, (kind, arm, seed) in enumerate(plan.tasks()):
            path = sw.base_dir(root, seed) if kind == "base" else sw.member_dir(root, arm, seed)
            click.echo(f"{i} {kind} {path}")
        return
    if list_stages:
        if task is None:
            raise ConfigError("sweep: --stages needs --task I")
        path, stages = sw.prepare_task(root, plan, task)
        click.echo("\n".join([str(path), *stages]))
        return
    if task is not None:
        sw.run_task(root, plan, task)
        return
    sw.run_sweep(root, plan)


@main.command()
@click.argument("paths", nargs=-1, type=click.Path(file_okay=False, path_type=Path))
@click.option("-w", "--workdir", "workdirs", multiple=True,
              type=click.Path(file_okay=False, path_type=Path),
              help="A work dir or sweep root (repeatable; the same as a PATH argument).")
@click.option("-o", "--output", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Folder for report.md, its figures and CSVs (default: FIRST_PATH/report).")
@click.option("--cycle", type=int, default=None,
              help="The cycle whose selections the t-SNE and contact sheets show (default: the "
                   "latest acquired one whose dump kept its features).")
@_friendly
def report(paths: tuple[Path, ...], workdirs: tuple[Path, ...], output: Path | None,
           cycle: int | None) -> None:
    """Compare work dirs: report.md with figures, grouped by strategy/variant over seeds.

    Needs matplotlib (pip install "al-det[plot]"; the t-SNE also scikit-learn).

    \b
    Example:  al-det report runs/bench              -> runs/bench/report/report.md
              al-det report runs/a runs/b -o out/
    """
    from al_det.errors import ConfigError
    from al_det.report import write_report

    given = [*paths, *workdirs]
    if not given:
        raise ConfigError("report: name at least one work dir or sweep root")
    click.echo(write_report(given, output, cycle))
