"""``al-det report``: ``report.md`` with its figures and CSV tables, for one or many work dirs.

Reads the work dirs (see :mod:`al_det.report.collect`); writes into the output folder, each
file atomically: ``report.md``, ``curves.png``, ``balance.png``, ``tsne.png``,
``sheet_<arm>.png`` (one per arm), ``results.csv``, ``class_counts.csv``, ``timings.csv``.
"""

from __future__ import annotations

import csv
import io
import re
from pathlib import Path

from al_det import atomic
from al_det.errors import AlDetError
from al_det.report import paper
from al_det.report.collect import Group, group_runs, load_runs
from al_det.report.plots import balance_figure, curves_figure, describe, pyplot
from al_det.report.sheet import contact_sheet
from al_det.report.tables import class_counts_table, results, timing
from al_det.report.tsne import has_features, tsne_figure


def _write_csv(path: Path, rows: list[dict]) -> None:
    buf = io.StringIO()
    if rows:
        writer = csv.DictWriter(buf, fieldnames=list(rows[0]), lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
    atomic.write_text(path, buf.getvalue())


def _slug(label: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.=+-]+", "_", label).strip("_") or "arm"


def _check_comparable(groups: list[Group]) -> None:
    kinds = {(g.cfg.evaluate.metric, describe([g]).split(" · ")[0]) for g in groups}
    if len(kinds) > 1:
        raise AlDetError("report: the work dirs use different datasets or metrics "
                         f"({sorted(kinds)}); report them separately")


def _protocol_line(groups: list[Group], refs: list[str]) -> str:
    proto = paper.protocol_of(groups[0].cfg)
    if proto is None:
        return ("Not one of the paper's protocols (model name, pool/test file names, initial, "
                "budget and metric of `al_det/report/paper_results.yaml`), so no paper "
                "reference lines.")
    if not refs:
        return f"Paper protocol: {proto[1]['title']}; no arm matches one of its methods."
    return (f"Paper protocol: {proto[1]['title']}. Dashed lines: the paper's numbers for "
            f"{', '.join(refs)}.")


def _latest_drawable(groups: list) -> int:
    """The latest cycle some work dir selected in with its dump's features kept (else the
    latest with a selection, else 0)."""
    runs = [r for g in groups for r in g.runs]
    chosen = [k for r in runs for k in r.wd.cycles() if r.wd.cycle(k).selection.exists()]
    kept = [k for r in runs for k in chosen if has_features(r, k)]
    return max(kept or chosen or [0])


def write_report(paths: list[Path], out: Path | None = None, cycle: int | None = None) -> Path:
    """Write the report of the work dirs in ``paths`` into ``out`` (default: the first
    path's ``report/``); ``cycle``: the cycle whose selections are drawn (default: the latest
    acquired cycle whose dump kept its features, see infer.keep_features). Returns report.md."""
    pyplot()  # one clear line without matplotlib, before any work
    groups = group_runs(load_runs(list(paths)))
    if not any(r.rows for g in groups for r in g.runs):
        raise AlDetError(f"{paths[0]}: no evaluated cycle yet (summary.csv is empty): run "
                         "al-det evaluate or al-det run first")
    _check_comparable(groups)
    if cycle is None:
        cycle = _latest_drawable(groups)
    out = Path(out) if out else Path(paths[0]) / "report"
    out.mkdir(parents=True, exist_ok=True)
    metric = groups[0].runs[0].metric
    metrics = [metric] if metric == "mAP" else ["AP", "AP50"]
    _, refs = curves_figure(groups, metrics, out / "curves.png")
    md = [f"# Active learning report: {describe(groups)}", "",
          f"{sum(len(g.runs) for g in groups)} work dirs in {len(groups)} arms: " +
          "; ".join(f"**{g.label}** (seeds {', '.join(map(str, g.seeds))})" for g in groups),
          "", _protocol_line(groups, refs), "", "## Learning curves", "",
          "![learning curves](curves.png)", "",
          "Lines: the mean over seeds; bands: ± one sample standard deviation (ddof=1; none "
          "for one seed). Values in %.", ""]
    for m in metrics:
        table, rows = results(groups, m)
        _write_csv(out / ("results.csv" if m == metrics[0] else f"results_{m}.csv"), rows)
        md += [f"### {m} (%) per cycle: mean ± std over seeds (difference to random)", "",
               table, ""]
    md += ["CSV: `results.csv`" + ("" if len(metrics) == 1 else
                                   ", `results_AP50.csv`"), ""]
    md += _balance_section(groups, out)
    md += _selection_section(groups, out, cycle)
    table, rows = timing(groups)
    _write_csv(out / "timings.csv", rows)
    md += ["## Wall time per stage (the paper's Table 4)", "",
           "Seconds of the run that completed each stage (mean over seeds), from "
           "`timings.jsonl` (training: else its `train/log.jsonl`). A killed attempt is not "
           "counted; a resumed stage counts its last run. \"shared\": a sweep's cycle 0, "
           "computed once per seed.", "", table, "", "CSV: `timings.csv`", ""]
    path = out / "report.md"
    atomic.write_text(path, "\n".join(md))
    return path


def _balance_section(groups: list[Group], out: Path) -> list[str]:
    balance_figure(groups, out / "balance.png")
    last = max(k for g in groups for r in g.runs for k in r.wd.cycles())
    table, _ = class_counts_table(groups, last)
    rows = []
    for k in range(last + 1):
        rows += class_counts_table(groups, k)[1]
    _write_csv(out / "class_counts.csv", rows)
    return ["## Class balance", "", "![class balance](balance.png)", "",
            "The standard deviation over classes of the labeled instance count (lower: more "
            "balanced); right, of the instances each acquisition added (the paper's Fig. 5).",
            "", f"### Labeled instances per class at cycle {last} (mean over seeds)", "",
            table, "", "CSV (every cycle): `class_counts.csv`", ""]


def _selection_section(groups: list[Group], out: Path, k: int) -> list[str]:
    md = [f"## What was selected at cycle {k}", ""]
    fig, why = tsne_figure(groups, k, out / "tsne.png")
    if fig is None:
        md += [f"*{why}.*", ""]
    else:
        md += ["![t-SNE of image prototypes](tsne.png)", "",
               "Each point is a candidate image's prototype (the mean feature of its "
               "detections), embedded with t-SNE; coloured: selected by the DivProto main "
               "pass or the strategy itself, hollow: the fill-up. Arms that select from the "
               "same dump (a sweep's shared cycle 0) share one map.", ""]
    for g in groups:
        name = f"sheet_{_slug(g.label)}.png"
        if contact_sheet(g, k, out / name) is not None:
            md += [f"### {g.label}", "", f"![{g.label} selection]({name})", ""]
        else:
            md += [f"### {g.label}", "", f"*No selection with its dump at cycle {k}.*", ""]
    return md
