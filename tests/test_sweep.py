"""`al-det sweep`: a work dir per (strategy, seed), cycle 0 once per seed, resumable after kills;
and `al-det report` on such a sweep."""

from __future__ import annotations

import csv
import json
import os
import random
import signal
import struct
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from al_det.cli import main

TINY = """\
name: tiny
seed: 3
cycles: 2
initial: 12
data:
  synthetic: {n_pool: 40, n_test: 12, image_size: 128, seed: 1}
model: {name: tiny_frcnn, min_size: 128, max_size: 128}
train: {epochs: 1, batch_size: 4, warmup_iters: 2, workers: 0, checkpoint_every: 2}
infer: {batch_size: 8, workers: 0, score_thresh: 0.0, chunk_size: 8}
acquire: {strategy: enms_divproto, budget: 7}
"""
STRATEGIES = ("random", "entropy", "enms_divproto")
SEEDS = (0, 1)
ARGS = ["--strategies", ",".join(STRATEGIES), "--seeds", ",".join(map(str, SEEDS))]


def cli(*args: str) -> str:
    result = CliRunner().invoke(main, list(args), catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result.output


def members(root: Path) -> list[Path]:
    return [root / s / f"seed_{n}" for n in SEEDS for s in STRATEGIES]


def fingerprint(wd: Path) -> dict:
    """What decides a work dir's result: splits, selections, metrics, summary (no timings)."""
    out = {}
    for p in sorted(wd.rglob("*")):
        rel = p.relative_to(wd)
        if p.is_file() and (p.name in ("labeled.json", "unlabeled.json", "selection.json",
                                       "summary.csv", "config.yaml")):
            out[str(rel)] = p.read_bytes()
        elif p.name == "metrics.json":  # less the test file's path, which names the root
            out[str(rel)] = {k: v for k, v in json.loads(p.read_text()).items() if k != "test"}
    return out


@pytest.fixture(scope="module")
def config(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("cfg") / "tiny.yaml"
    path.write_text(TINY)
    return path


@pytest.fixture(scope="module")
def sweep_root(tmp_path_factory: pytest.TempPathFactory, config: Path) -> Path:
    """An uninterrupted sweep of 3 strategies x 2 seeds, 2 cycles."""
    root = tmp_path_factory.mktemp("sweep") / "root"
    cli("sweep", "-c", str(config), "-w", str(root), *ARGS)
    return root


def test_sweep_layout_and_cycle0_once_per_seed(sweep_root: Path) -> None:
    for seed in SEEDS:
        base = sweep_root / "_cycle0" / f"seed_{seed}"
        model = base / "cycle_000" / "model.pth"
        dump = base / "cycle_000" / "dump" / "features.npy"
        for s in STRATEGIES:
            wd = sweep_root / s / f"seed_{seed}"
            # shared by construction: the very same files
            assert os.path.samefile(wd / "cycle_000" / "model.pth", model)
            assert os.path.samefile(wd / "cycle_000" / "dump" / "features.npy", dump)
            assert (wd / "cycle_001" / "metrics.json").exists()
            sel = json.loads((wd / "cycle_000" / "selection.json").read_text())
            assert sel["strategy"] == s and len(sel["images"]) == 7
    # training of cycle 0 ran once per seed: one unshared train record per seed
    recs = [json.loads(line) for p in sweep_root.rglob("timings.jsonl")
            for line in p.read_text().splitlines()]
    own = [r for r in recs if r["cycle"] == 0 and r["stage"] == "train" and "shared_from" not in r]
    assert len(own) == len(SEEDS)
    assert len([r for r in recs if r["cycle"] == 1 and r["stage"] == "train"]) == 6
    # same seed: same initial split and cycle 0; different seeds: different ones
    a, b = (sweep_root / "random" / f"seed_{n}" / "cycle_000" / "labeled.json" for n in SEEDS)
    assert a.read_bytes() != b.read_bytes()
    # the selections differ between strategies (the comparison is not vacuous)
    sels = {s: (sweep_root / s / "seed_0" / "cycle_000" / "selection.json").read_text()
            for s in STRATEGIES}
    assert len({json.dumps(json.loads(v)["images"]) for v in sels.values()}) == 3


def test_member_config_differs_from_base_only_in_acquire(sweep_root: Path) -> None:
    from al_det.config import diff_configs, load_config

    base = load_config(sweep_root / "_cycle0" / "seed_1" / "config.yaml")
    for s in STRATEGIES:
        cfg = load_config(sweep_root / s / "seed_1" / "config.yaml")
        assert all(d.startswith("acquire.") for d in diff_configs(base, cfg))
        assert cfg.seed == 1 and cfg.acquire.strategy == s


def test_status_of_sweep_root_shows_the_grid(sweep_root: Path) -> None:
    out = cli("status", "-w", str(sweep_root))
    assert "3 arms x 2 seeds" in out
    for wd in members(sweep_root):
        line = next(x for x in out.splitlines() if x.startswith(str(wd.relative_to(sweep_root))))
        assert "6/6" in line and "done" in line
    assert "all done" in out


def test_rerun_is_a_no_op_and_member_is_a_plain_workdir(sweep_root: Path) -> None:
    before = {str(w): fingerprint(w) for w in members(sweep_root)}
    out = cli("sweep", "-w", str(sweep_root))  # the plan from sweep.json
    assert "all done" in out
    assert {str(w): fingerprint(w) for w in members(sweep_root)} == before
    assert "nothing: all 2 cycles are done" in cli("status", "-w", str(sweep_root / "entropy" /
                                                                      "seed_0"))


def _wait_then_kill(proc: subprocess.Popen, path: Path) -> None:
    """SIGKILL the sweep once ``path`` exists (or let it end)."""
    while not path.exists() and proc.poll() is None:
        time.sleep(0.02)
    if proc.poll() is None:
        os.kill(proc.pid, signal.SIGKILL)
    proc.wait()


@pytest.mark.slow
def test_sweep_killed_twice_ends_like_uninterrupted(sweep_root: Path, config: Path,
                                                   tmp_path: Path) -> None:
    root = tmp_path / "killed"
    # kill points: files that appear at different moments of the sweep, two drawn with a
    # fixed seed (reproducible), in the order the sweep writes them
    events = [root / "_cycle0" / "seed_0" / "cycle_000" / "dump_shards" / "chunk_00001",
              root / "_cycle0" / "seed_0" / "cycle_000" / "metrics.json",
              root / "entropy" / "seed_0" / "cycle_001" / "labeled.json",
              root / "random" / "seed_1" / "config.yaml",
              root / "_cycle0" / "seed_1" / "cycle_000" / "train" / "log.jsonl",
              root / "enms_divproto" / "seed_0" / "cycle_001" / "model.pth"]
    order = {p: i for i, p in enumerate(events)}
    kills = sorted(random.Random(10).sample(events, 2), key=order.get)
    cmd = [sys.executable, "-m", "al_det", "sweep", "-c", str(config), "-w", str(root), *ARGS]
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[1])}
    for point in kills:
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)
        _wait_then_kill(proc, point)
        assert proc.returncode == -signal.SIGKILL, f"the sweep ended before {point}"
    done = subprocess.run(cmd, env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    for ref, got in zip(members(sweep_root), members(root), strict=True):
        a, b = fingerprint(ref), fingerprint(got)
        assert a.keys() == b.keys(), got
        # the frozen configs name their own data folders; everything else is byte-equal
        for name in a:
            if name != "config.yaml":
                assert a[name] == b[name], f"{got / name} differs"
        assert os.path.samefile(got / "cycle_000" / "model.pth",
                                root / "_cycle0" / got.name / "cycle_000" / "model.pth")
    assert not list(root.rglob(".tmp-*"))


# --------------------------------------------------------------------------- the report
def _png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", path
    return struct.unpack(">II", data[16:24])


def test_report_on_sweep(sweep_root: Path, tmp_path: Path) -> None:
    out = tmp_path / "rep"
    cli("report", str(sweep_root), "-o", str(out))
    md = (out / "report.md").read_text()
    for fig in ("curves.png", "balance.png", "tsne.png", *(f"sheet_{s}.png" for s in STRATEGIES)):
        assert f"({fig})" in md, fig
        w, h = _png_size(out / fig)
        assert w >= 500 and h >= 250 and (out / fig).stat().st_size > 10_000, fig
    assert "synthetic demo (40 pool images) · tiny_frcnn · budget 7/cycle · seeds [0, 1]" in md
    # the table's means and stds, recomputed from each work dir's metrics.json
    rows = list(csv.DictReader((out / "results.csv").open()))
    assert {(r["arm"], int(r["cycle"])) for r in rows} == \
        {(s, k) for s in STRATEGIES for k in (0, 1)}
    by = {(r["arm"], int(r["cycle"])): r for r in rows}
    for s in STRATEGIES:
        for k in (0, 1):
            vals = [100 * json.loads((sweep_root / s / f"seed_{n}" / f"cycle_{k:03d}" /
                                      "metrics.json").read_text())["AP"] for n in SEEDS]
            row = by[(s, k)]
            assert float(row["mean"]) == pytest.approx(np.mean(vals), abs=1e-4)
            assert float(row["std"]) == pytest.approx(np.std(vals, ddof=1), abs=1e-4)
            assert int(row["n"]) == 2
            line = next(x for x in md.splitlines() if x.startswith(f"| {s} |"))
            assert f"{np.mean(vals):.2f} ± {np.std(vals, ddof=1):.2f}" in line
            if s != "random":
                ref = np.mean([100 * json.loads((sweep_root / "random" / f"seed_{n}" /
                                                 f"cycle_{k:03d}" / "metrics.json"
                                                 ).read_text())["AP"] for n in SEEDS])
                assert float(row["diff_to_random"]) == pytest.approx(np.mean(vals) - ref,
                                                                     abs=1e-4)
    # class balance: counts of the final labeled split, per class
    counts = list(csv.DictReader((out / "class_counts.csv").open()))
    lab = json.loads((sweep_root / "entropy" / "seed_0" / "cycle_001" / "labeled.json")
                     .read_text())
    lab1 = json.loads((sweep_root / "entropy" / "seed_1" / "cycle_001" / "labeled.json")
                      .read_text())
    cid = {c["name"]: c["id"] for c in lab["categories"]}
    for r in (r for r in counts if r["arm"] == "entropy" and r["cycle"] == "1"):
        n = [sum(a["category_id"] == cid[r["class"]] for a in d["annotations"])
             for d in (lab, lab1)]
        assert float(r["mean_count"]) == pytest.approx(np.mean(n))
    # stage times: every stage of the tiny sweep is there
    stages = {r["stage"] for r in csv.DictReader((out / "timings.csv").open())}
    assert stages == {"train", "evaluate", "infer", "acquire"}
    assert "Not one of the paper's protocols" in md


def test_report_without_sklearn_skips_tsne(sweep_root: Path, tmp_path: Path,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "sklearn", None)
    cli("report", str(sweep_root / "random" / "seed_0"), "-o", str(tmp_path))
    md = (tmp_path / "report.md").read_text()
    assert "t-SNE left out: scikit-learn is not installed" in md
    assert not (tmp_path / "tsne.png").exists() and (tmp_path / "curves.png").exists()
