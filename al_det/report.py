"""``al-det report``: the AP (or VOC07 mAP) curve of a work dir, as a PNG.

Reads ``WORKDIR/summary.csv``; writes ``WORKDIR/curve.png`` (or the given path) atomically.
matplotlib is optional (``pip install "al-det[plot]"``).
"""

from __future__ import annotations

from pathlib import Path

from al_det import atomic
from al_det.errors import AlDetError
from al_det.summary import read_summary
from al_det.workdir import Workdir


def plot_summary(workdir: Path, output: Path | None = None) -> Path:
    wd = Workdir(Path(workdir))
    if not wd.summary.exists():
        raise AlDetError(f"{wd.summary}: missing: evaluate at least one cycle first")
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise AlDetError('report needs matplotlib: pip install "al-det[plot]"') from None
    rows = read_summary(wd.summary)
    fig, ax = plt.subplots(figsize=(5, 3.5))
    for key in ("AP", "AP50", "mAP"):  # COCO columns, or VOC07's mAP; empty cells: undefined
        points = [(100 * float(r["labeled_fraction"]), 100 * float(r[key]))
                  for r in rows if r.get(key)]
        if points:
            ax.plot(*zip(*points, strict=True), marker="o", label=key)
    ax.set_xlabel("labeled images (% of pool)")
    ax.set_ylabel("%")
    ax.grid(alpha=0.3)
    ax.legend()
    out = Path(output) if output else wd.curve
    with atomic.atomic_open(out, "wb") as fh:
        fig.savefig(fh, format="png", dpi=120, bbox_inches="tight")
    plt.close(fig)
    return out
