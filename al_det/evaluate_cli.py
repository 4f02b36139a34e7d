"""``al-det evaluate`` in its two modes: a work dir's cycle, or any ground truth and results.

Work-dir mode runs the torch stage (:func:`al_det.stages.run_stage`, which writes the cycle's
``detections.json``, ``metrics.json`` and ``summary.csv`` row). File mode reads ``--gt`` (COCO
JSON) and ``--dets`` (a COCO results list), prints the metrics and, with ``--output``, writes
them as JSON atomically: ``AP, AP50, AP75, APs, APm, APl, per_class`` for ``coco``,
``mAP, per_class`` for ``voc07`` (undefined values are ``null``). File mode imports no torch.
"""

from __future__ import annotations

import sys
import warnings
from pathlib import Path

from al_det.errors import ConfigError

METRIC_CHOICES = ("coco", "voc07")


def evaluate_command(*, workdir: Path | None, cycle: int | None, force: bool, gt: Path | None,
                     dets: Path | None, metric: str | None, output: Path | None) -> None:
    """Dispatch to work-dir mode or file mode; mixing them is an error."""
    given = [name for name, v in (("gt", gt), ("dets", dets), ("metric", metric),
                                  ("output", output)) if v is not None]
    if workdir is not None:
        if given:
            raise ConfigError(f"evaluate: -w WORKDIR cannot be combined with --{', --'.join(given)}"
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
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        scores = evaluate_files(gt, dets, metric or "coco", output)
    for w in caught:  # one plain line each, not Python's source-location format
        print(f"al-det: warning: {w.message}", file=sys.stderr)
    print(format_scores(scores))
    if output is not None:
        print(f"-> {output}")


def evaluate_files(gt_path: Path, dets_path: Path, metric: str,
                   output: Path | None = None) -> dict:
    """The ``metric`` scores of a results file against a COCO ground truth; written to
    ``output`` (atomically) when given. Every input is validated before anything is written."""
    from al_det import atomic, coco, metrics
    from al_det.results import load_results

    if metric not in METRIC_CHOICES:
        raise ConfigError(f"--metric {metric!r} is not one of {list(METRIC_CHOICES)}")
    gt = coco.load_coco(Path(gt_path))
    detections = load_results(Path(dets_path), gt, str(gt_path))
    scores = metrics.compute(metric, gt, detections)
    if output is not None:
        atomic.write_json(Path(output), scores, indent=1)
    return scores


def format_scores(scores: dict) -> str:
    """The headline metrics, then one line per class (``-``: undefined)."""
    def fmt(v: float | None) -> str:
        return "-" if v is None else f"{v:.4f}"

    lines = [f"{name:<6} {fmt(v)}" for name, v in scores.items() if name != "per_class"]
    width = max((len(n) for n in scores["per_class"]), default=0)
    lines.append("per class:")
    lines += [f"  {name:<{width}}  {fmt(v)}" for name, v in scores["per_class"].items()]
    return "\n".join(lines)
