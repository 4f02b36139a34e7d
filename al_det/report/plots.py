"""Matplotlib set-up and the curve figures of a report: the metric and the class balance.

Reads nothing from disk (takes the groups and their statistics); writes PNG files
atomically. matplotlib is optional: :func:`pyplot` raises one clear line without it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from al_det import atomic
from al_det.errors import AlDetError
from al_det.report import paper
from al_det.report.collect import Group
from al_det.report.stats import balance, curve, pool_size


def pyplot() -> Any:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise AlDetError('al-det report needs matplotlib: pip install "al-det[plot]"') from None
    return plt


def save(fig: Any, path: Path, dpi: int = 110) -> Path:
    plt = pyplot()
    with atomic.atomic_open(path, "wb") as fh:
        fig.savefig(fh, format="png", dpi=dpi, bbox_inches="tight")
    plt.close(fig)
    return path


def colours(groups: list[Group]) -> dict[str, Any]:
    plt = pyplot()
    cmap = plt.get_cmap("tab10" if len(groups) <= 10 else "tab20")
    return {g.label: cmap(i % cmap.N) for i, g in enumerate(groups)}


def describe(groups: list[Group]) -> str:
    """Dataset · model · budget · seeds, for titles."""
    cfg = groups[0].cfg
    syn = cfg.data.synthetic
    data = (f"synthetic demo ({syn.n_pool} pool images)" if syn is not None
            else Path(cfg.data.pool).name)
    seeds = sorted({s for g in groups for s in g.seeds})
    budget = cfg.acquire.budget
    budget = f"{int(budget)}" if budget >= 1 else f"{budget:.0%} of the pool"
    return f"{data} · {cfg.model.name} · budget {budget}/cycle · seeds {seeds}"


def _secondary_fraction(ax: Any, pool: int) -> None:
    top = ax.secondary_xaxis("top", functions=(lambda x: 100 * x / pool,
                                               lambda f: f * pool / 100))
    top.set_xlabel("labeled fraction of the pool (%)")


def _references(ax: Any, groups: list[Group], metric: str, colour: dict, pool: int) -> list:
    proto = paper.protocol_of(groups[0].cfg)
    drawn = []
    if proto is None:
        return drawn
    for g in groups:
        found = paper.method_of(proto[1], g.cfg)
        if found is None:
            continue
        pts = paper.reference_points(proto[1], found[1], metric, pool)
        if not pts:
            continue
        xs, ys, _ = zip(*pts, strict=True)
        ax.plot(xs, ys, ls="--", marker="x", color=colour[g.label], alpha=0.8, lw=1.2,
                label=f"paper: {found[0]}")
        drawn.append(found[0])
    bound = proto[1].get("upper_bound", {}).get(metric)
    if bound is not None:
        ax.axhline(bound, ls=":", color="grey", lw=1, label=f"paper: all images ({bound})")
    return drawn


def curves_figure(groups: list[Group], metrics: list[str], out: Path) -> tuple[Path, list]:
    """One panel per metric: mean over seeds and a +-1 std band per group, against labeled
    images (fraction on the top axis); dashed: the paper's numbers where they apply."""
    plt = pyplot()
    colour = colours(groups)
    pool = pool_size(groups[0].runs[0])
    fig, axes = plt.subplots(1, len(metrics), figsize=(6.2 * len(metrics), 4.6), squeeze=False)
    refs: list = []
    for ax, metric in zip(axes[0], metrics, strict=True):
        for g in groups:
            pts = curve(g, metric)
            if not pts:
                continue
            xs = [p.images for p in pts]
            ms = [p.mean for p in pts]
            ss = [p.std for p in pts]
            ax.plot(xs, ms, marker="o", ms=4, color=colour[g.label],
                    label=f"{g.label} (n={max(p.n for p in pts)})")
            ax.fill_between(xs, [m - s for m, s in zip(ms, ss, strict=True)],
                            [m + s for m, s in zip(ms, ss, strict=True)],
                            color=colour[g.label], alpha=0.18, lw=0)
        refs += _references(ax, groups, metric, colour, pool)
        ax.set_xlabel("labeled images")
        ax.set_ylabel(f"{metric} (%)")
        ax.set_title(f"{metric}: mean ± 1 std over seeds", fontsize=10)
        ax.grid(alpha=0.3)
        _secondary_fraction(ax, pool)
        ax.legend(fontsize=8, loc="best")
    fig.suptitle(describe(groups), fontsize=11)
    fig.tight_layout()
    return save(fig, out), sorted(set(refs))


def balance_figure(groups: list[Group], out: Path) -> Path:
    """The std over classes of labeled instance counts per cycle (left: the labeled set;
    right: the images each acquisition added, the paper's Fig. 5), mean +- std over seeds."""
    plt = pyplot()
    colour = colours(groups)
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.3))
    titles = {"labeled": "whole labeled set after the cycle's acquisition",
              "acquired": "images acquired in the cycle (paper's Fig. 5)"}
    for g in groups:
        bal = balance(g)
        for ax, kind in zip(axes, ("labeled", "acquired"), strict=True):
            if not bal[kind]:
                continue
            k, x, m, s = zip(*bal[kind], strict=True)
            xs = k if kind == "acquired" else x
            ax.plot(xs, m, marker="o", ms=4, color=colour[g.label], label=g.label)
            ax.fill_between(xs, [a - b for a, b in zip(m, s, strict=True)],
                            [a + b for a, b in zip(m, s, strict=True)],
                            color=colour[g.label], alpha=0.18, lw=0)
    axes[0].set_xlabel("labeled images")
    axes[1].set_xlabel("acquisition cycle (its model's cycle index)")
    axes[1].xaxis.get_major_locator().set_params(integer=True)
    for ax, kind in zip(axes, ("labeled", "acquired"), strict=True):
        ax.set_ylabel("std over classes of instance count")
        ax.set_title(titles[kind], fontsize=10)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(f"Class balance (lower is more balanced) — {describe(groups)}", fontsize=11)
    fig.tight_layout()
    return save(fig, out)
