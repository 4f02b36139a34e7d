"""The tables of a report, as markdown and as CSV rows: the metric per cycle and group (mean
+- std over seeds, and the difference to random), per-class labeled counts, stage times.

Reads nothing from disk but through :mod:`al_det.report.stats`; writes nothing (the caller
writes the CSV files and report.md).
"""

from __future__ import annotations

from al_det.report.collect import Group
from al_det.report.stats import curve, mean_counts, timing_table
from al_det.timings import read_timings
from al_det.workdir import STAGES


def random_group(groups: list[Group]) -> Group | None:
    """The random baseline: the group named random, else the first with strategy random."""
    named = [g for g in groups if g.label == "random"]
    plain = [g for g in groups if g.cfg.acquire.strategy == "random"]
    return (named or plain or [None])[0]


def results(groups: list[Group], metric: str) -> tuple[str, list[dict]]:
    """Markdown (a row per group, a column per cycle) and CSV rows of ``metric`` in %."""
    base = random_group(groups)
    ref = {p.cycle: p.mean for p in curve(base, metric)} if base else {}
    curves = {g.label: curve(g, metric) for g in groups}
    cycles = sorted({p.cycle for c in curves.values() for p in c})
    first = {}
    for c in curves.values():
        for p in c:
            first.setdefault(p.cycle, p)
    head = [f"cycle {k}: {first[k].images:.0f} img ({100 * first[k].fraction:.1f}%)"
            for k in cycles]
    lines = ["| arm | seeds | " + " | ".join(head) + " |",
             "|---|---|" + "---|" * len(cycles)]
    rows = []
    for g in groups:
        pts = {p.cycle: p for p in curves[g.label]}
        cells = []
        for k in cycles:
            p = pts.get(k)
            if p is None:
                cells.append("-")
                continue
            diff = p.mean - ref[k] if k in ref and g is not base else None
            d = f" ({diff:+.2f})" if diff is not None else ""
            cells.append(f"{p.mean:.2f} ± {p.std:.2f}{d}" + (f" n={p.n}" if p.n != len(
                g.runs) else ""))
            rows.append({"arm": g.label, "strategy": g.cfg.acquire.strategy, "cycle": k,
                         "labeled_images": round(p.images, 1),
                         "labeled_fraction": round(p.fraction, 5), "metric": metric,
                         "mean": round(p.mean, 4), "std": round(p.std, 4), "n": p.n,
                         "diff_to_random": "" if diff is None else round(diff, 4),
                         "values": " ".join(f"{v:.4f}" for v in p.values)})
        lines.append(f"| {g.label} | {len(g.runs)} | " + " | ".join(cells) + " |")
    return "\n".join(lines), rows


def class_counts_table(groups: list[Group], k: int) -> tuple[str, list[dict]]:
    """Mean labeled instances per class at cycle ``k``, a column per group, and the std over
    classes in the last row."""
    import numpy as np

    counts = {g.label: mean_counts(g, k) for g in groups}
    classes = next((list(c) for c in counts.values() if c), [])
    lines = ["| class | " + " | ".join(g.label for g in groups) + " |",
             "|---|" + "---|" * len(groups)]
    rows = []
    for name in classes:
        cells = [f"{counts[g.label][name]:.1f}" if counts[g.label] else "-" for g in groups]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
        rows += [{"arm": g.label, "cycle": k, "class": name,
                  "mean_count": counts[g.label][name]} for g in groups if counts[g.label]]
    stds = [f"{np.std(list(counts[g.label].values())):.2f}" if counts[g.label] else "-"
            for g in groups]
    lines.append("| **std over classes** | " + " | ".join(stds) + " |")
    return "\n".join(lines), rows


def timing(groups: list[Group]) -> tuple[str, list[dict]]:
    """Seconds per stage and cycle (mean over the group's runs), a row per (group, cycle)."""
    lines = ["| arm | cycle | " + " | ".join(STAGES) + " | total |",
             "|---|---|" + "---|" * (len(STAGES) + 1)]
    rows = []
    for g in groups:
        for k, stages in timing_table(g).items():
            cells = [f"{stages[s][0]:.2f}" if s in stages else "-" for s in STAGES]
            total = sum(v[0] for v in stages.values())
            shared = " (shared)" if k == 0 and any(
                "shared_from" in t for r in g.runs for t in read_timings(r.wd.root)) else ""
            lines.append(f"| {g.label} | {k}{shared} | " + " | ".join(cells) +
                         f" | {total:.2f} |")
            rows += [{"arm": g.label, "cycle": k, "stage": s, "seconds": round(v[0], 3),
                      "runs": v[1]} for s, v in stages.items()]
    return "\n".join(lines), rows
