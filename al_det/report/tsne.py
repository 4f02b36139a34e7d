"""The t-SNE figure of a report: image prototypes of one cycle's candidates, the selected
ones highlighted (the paper's Fig. 4).

Reads the cycle's ``dump/`` (per-detection features; an image's prototype is the mean of its
detections' features) and ``selection.json`` of the first run of each group; writes one PNG
atomically. Groups whose runs share the dump (a sweep's cycle 0) share one embedding, so
their panels compare selections on the same map. Needs scikit-learn (the ``plot`` extra);
without it :func:`tsne_figure` returns None and says why.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from al_det.report.collect import Group, Run
from al_det.report.plots import colours, pyplot, save

MAX_POINTS = 2500  # candidates embedded at most (the selected ones always)


def selection_of(run: Run, k: int) -> list[dict] | None:
    path = run.wd.cycle(k).selection
    return json.loads(path.read_text())["images"] if path.exists() else None


def has_features(run: Run, k: int) -> bool:
    d = run.wd.cycle(k).dump
    return (d / "meta.json").exists() and (d / "features.npy").exists()


def prototypes(dump_dir: Path, keep: set, seed: int = 0) -> tuple[list, np.ndarray]:
    """(image ids, per-image mean features) of up to MAX_POINTS candidates with detections:
    every id in ``keep``, the others sampled with ``seed``."""
    from al_det.dump import read_dump

    dump = read_dump(dump_dir, check_features=False)
    ids = dump.image_ids
    counts = np.diff(dump.offsets)
    rows = [r for r in range(len(ids)) if counts[r] > 0]
    must = [r for r in rows if ids[r] in keep]
    rest = [r for r in rows if ids[r] not in keep]
    rng = np.random.default_rng(seed)
    room = max(0, MAX_POINTS - len(must))
    if len(rest) > room:
        rest = sorted(rng.choice(rest, size=room, replace=False).tolist())
    chosen = sorted(must + rest)
    feats = np.stack([np.asarray(dump.features[dump.offsets[r]:dump.offsets[r + 1]],
                                 dtype=np.float32).mean(axis=0) for r in chosen])
    return [ids[r] for r in chosen], feats


def embed(feats: np.ndarray, seed: int = 0) -> np.ndarray:
    from sklearn.decomposition import PCA
    from sklearn.manifold import TSNE

    x = feats / np.maximum(np.linalg.norm(feats, axis=1, keepdims=True), 1e-12)
    if x.shape[1] > 50 and len(x) > 50:
        x = PCA(n_components=50, random_state=seed).fit_transform(x)
    perplexity = float(min(30.0, max(2.0, (len(x) - 1) / 3)))
    return TSNE(n_components=2, perplexity=perplexity, init="pca", random_state=seed,
                learning_rate="auto").fit_transform(x)


def _dump_key(run: Run, k: int) -> tuple[int, int]:
    st = os.stat(run.wd.cycle(k).dump / "features.npy")
    return st.st_dev, st.st_ino  # hard-linked dumps (a sweep's cycle 0) are one


def tsne_figure(groups: list[Group], k: int, out: Path) -> tuple[Path | None, str]:
    """The figure, or None and the reason it was left out."""
    try:
        import sklearn  # noqa: F401
    except ImportError:
        return None, 't-SNE left out: scikit-learn is not installed (pip install "al-det[plot]")'
    panels = []
    for g in groups:
        run = next((r for r in g.runs if has_features(r, k) and selection_of(r, k)), None)
        if run is not None:
            panels.append((g, run))
    if not panels:
        return None, f"t-SNE left out: no work dir has cycle {k}'s dump with features and " \
                     "its selection"
    by_dump: dict[tuple, list] = {}
    for g, run in panels:
        by_dump.setdefault(_dump_key(run, k), []).append((g, run))
    maps = {}
    for key, members in by_dump.items():
        keep = {s["id"] for _, r in members for s in selection_of(r, k)}
        ids, feats = prototypes(members[0][1].wd.cycle(k).dump, keep)
        maps[key] = (ids, embed(feats))
    return _draw(groups, panels, maps, k, out), ""


def _draw(groups: list[Group], panels: list, maps: dict, k: int, out: Path) -> Path:
    plt = pyplot()
    colour = colours(groups)
    n = len(panels)
    cols = min(n, 3)
    rows = (n + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(4.6 * cols, 4.4 * rows), squeeze=False)
    for ax, (g, run) in zip(axes.flat, panels, strict=False):
        ids, xy = maps[_dump_key(run, k)]
        sel = {s["id"]: s["reason"] for s in selection_of(run, k)}
        main = np.array([sel.get(i) == "main" for i in ids])
        fill = np.array([sel.get(i) == "fill" for i in ids])
        ax.scatter(xy[:, 0], xy[:, 1], s=6, c="lightgrey", label="not selected")
        if main.any():
            ax.scatter(xy[main, 0], xy[main, 1], s=22, color=colour[g.label], edgecolor="k",
                       lw=0.4, label=f"selected ({int(main.sum())})")
        if fill.any():
            ax.scatter(xy[fill, 0], xy[fill, 1], s=22, facecolor="none",
                       edgecolor=colour[g.label], lw=1.2, label=f"fill-up ({int(fill.sum())})")
        missing = len(sel) - int(main.sum()) - int(fill.sum())
        note = f"; {missing} selected without detections" if missing else ""
        ax.set_title(f"{g.label} (seed {run.cfg.seed}){note}", fontsize=10)
        ax.set_xticks([]), ax.set_yticks([])
        ax.legend(fontsize=7, loc="best")
    for ax in list(axes.flat)[n:]:
        ax.axis("off")
    fig.suptitle(f"t-SNE of image prototypes (mean detection feature) of cycle {k}'s "
                 f"candidates; {len(next(iter(maps.values()))[0])} points", fontsize=11)
    fig.tight_layout()
    return save(fig, out)
