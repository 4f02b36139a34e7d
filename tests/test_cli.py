"""The per-cycle commands end to end on a tiny real detector, as a user runs them."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import click
import numpy as np
import pytest
from click.testing import CliRunner

from al_det.cli import main

# enough training for the easy synthetic shapes to be learned: measured AP 0.276, AP50 0.516
LEARN = """\
seed: 3
cycles: 1
initial: 36
data:
  synthetic: {n_pool: 40, n_test: 12, image_size: 128, seed: 1}
model: {name: tiny_frcnn, min_size: 128, max_size: 128}
train: {epochs: 8, batch_size: 4, lr: 0.02, warmup_iters: 10, workers: 0, checkpoint_every: 1000}
infer: {batch_size: 8, workers: 0, score_thresh: 0.0}
acquire: {strategy: random, budget: 2}
"""
AP_FLOOR, AP50_FLOOR = 0.1, 0.25  # a broken loss, target or label mapping gives about 0

TINY = """\
name: tiny
seed: 3
cycles: 3
initial: 12
data:
  synthetic: {{n_pool: 40, n_test: 12, image_size: 128, seed: 1}}
model: {{name: tiny_frcnn, min_size: 128, max_size: 128}}
train: {{epochs: 1, batch_size: 4, warmup_iters: 2, workers: 0, checkpoint_every: 2}}
infer: {{batch_size: 8, workers: 0, score_thresh: 0.0}}
acquire: {{strategy: {strategy}, budget: 7}}
"""


def cli(*args: str) -> str:
    result = CliRunner().invoke(main, list(args), catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result.output


def write_config(tmp_path: Path, strategy: str = "enms_divproto") -> Path:
    path = tmp_path / "tiny.yaml"
    path.write_text(TINY.format(strategy=strategy))
    return path


def ids(coco: dict) -> list[int]:
    return [img["id"] for img in coco["images"]]


def load(path: Path) -> dict:
    return json.loads(path.read_text())


def test_help_and_file_mode_acquire_do_not_import_torch() -> None:
    code = (
        "import sys\nfrom al_det.cli import main\n"
        "try:\n    main(['--help'])\nexcept SystemExit:\n    pass\n"
        "try:\n    main(['acquire', '--help'])\nexcept SystemExit:\n    pass\n"
        "import al_det.acquire, al_det.stages, al_det.workdir\n"
        "print('torch' in sys.modules, 'torchvision' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip().splitlines()[-1] == "False False"


def test_bad_config_is_one_line_and_writes_nothing(tmp_path: Path) -> None:
    cfg = tmp_path / "bad.yaml"
    cfg.write_text("data:\n  pool: missing.json\ntrian: {}\n")
    result = CliRunner().invoke(main, ["init", "-c", str(cfg), "-w", str(tmp_path / "wd")])
    assert result.exit_code == 2
    assert result.output.count("\n") == 1 and "did you mean 'train'" in result.output
    assert not (tmp_path / "wd").exists()


@pytest.mark.parametrize("command", ["init", "run"])
def test_missing_pool_file_is_named(tmp_path: Path, command: str) -> None:
    cfg = tmp_path / "c.yaml"
    cfg.write_text("data:\n  pool: nowhere.json\n")
    result = CliRunner().invoke(main, [command, "-c", str(cfg), "-w", str(tmp_path / "wd")])
    assert result.exit_code == 2 and "nowhere.json" in result.output
    assert not (tmp_path / "wd").exists()


@pytest.mark.slow
def test_one_cycle_by_hand(tmp_path: Path) -> None:
    """init, train, evaluate, infer, acquire: invariants, AP, dump, next split."""
    wd = tmp_path / "wd"
    cli("init", "-c", str(write_config(tmp_path)), "-w", str(wd))
    pool = load(wd / "data" / "pool.json")
    c0 = wd / "cycle_000"
    labeled, unlabeled = load(c0 / "labeled.json"), load(c0 / "unlabeled.json")
    assert len(ids(labeled)) == 12 and unlabeled["annotations"] == []
    assert sorted(ids(labeled) + ids(unlabeled)) == sorted(ids(pool))

    cli("train", "-w", str(wd))
    assert (c0 / "model.pth").exists() and (c0 / "train" / "log.jsonl").exists()
    cli("evaluate", "-w", str(wd))
    metrics, detections = load(c0 / "metrics.json"), load(c0 / "detections.json")
    test = load(wd / "data" / "test.json")
    assert metrics["AP"] == pytest.approx(cocoeval_ap(wd / "data" / "test.json", detections))
    check_detections(detections, test)
    assert (wd / "summary.csv").read_text().splitlines()[0].startswith("cycle,labeled_images")
    assert metrics["metric"] == "coco"
    assert set(metrics["per_class"]) == {c["name"] for c in pool["categories"]}

    cli("infer", "-w", str(wd))
    check_dump(c0 / "dump", unlabeled)
    # acquire as its own process: it must not import torch (start-up time)
    code = ("import sys\nfrom al_det.cli import main\ntry:\n    main(sys.argv[1:])\n"
            "except SystemExit as e:\n    assert not e.code, e.code\n"
            "print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code, "acquire", "-w", str(wd)],
                         capture_output=True, text=True)
    assert out.returncode == 0 and out.stdout.strip().splitlines()[-1] == "False", out.stderr
    c1 = wd / "cycle_001"
    nxt_l, nxt_u = load(c1 / "labeled.json"), load(c1 / "unlabeled.json")
    selected = [img["id"] for img in load(c0 / "selection.json")["images"]]
    assert len(ids(nxt_l)) == 12 + 7 and ids(nxt_l)[12:] == selected
    assert not set(ids(nxt_l)) & set(ids(nxt_u)) and nxt_u["annotations"] == []
    assert sorted(ids(nxt_l) + ids(nxt_u)) == sorted(ids(pool))
    # the oracle copied exactly the pool's ground truth of the selected images
    gt = [a for a in pool["annotations"] if a["image_id"] in set(selected)]
    by_id = lambda anns: {a["id"]: a for a in anns}  # noqa: E731
    assert by_id(nxt_l["annotations"]) == {**by_id(labeled["annotations"]), **by_id(gt)}
    status = cli("status", "-w", str(wd))
    assert status.splitlines()[1].split()[:6] == ["0", "12", "done", "done", "done", "done"]


@pytest.mark.slow
def test_trained_model_learns_the_easy_fixture(tmp_path: Path) -> None:
    """AP recomputed from detections.json passes with AP 0 too: the model must also learn."""
    (tmp_path / "learn.yaml").write_text(LEARN)
    wd = tmp_path / "wd"
    cli("run", "-c", str(tmp_path / "learn.yaml"), "-w", str(wd))
    metrics = load(wd / "cycle_000" / "metrics.json")
    assert metrics["AP"] > AP_FLOOR and metrics["AP50"] > AP50_FLOOR, metrics
    check_detections(load(wd / "cycle_000" / "detections.json"), load(wd / "data" / "test.json"))


def cocoeval_ap(test_json: Path, detections: list[dict]) -> float:
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    gt = COCO(str(test_json))
    ev = COCOeval(gt, gt.loadRes(detections), "bbox")
    ev.evaluate()
    ev.accumulate()
    ev.summarize()
    return float(ev.stats[0])


def check_detections(detections: list[dict], test: dict) -> None:
    """COCO result records in the test file's terms: its image and category ids (which are not
    contiguous, so a model label passed through unmapped would show), boxes inside the image."""
    images = {img["id"]: img for img in test["images"]}
    cat_ids = {c["id"] for c in test["categories"]}
    assert detections and cat_ids != set(range(1, len(cat_ids) + 1))
    for d in detections:
        assert d["image_id"] in images and d["category_id"] in cat_ids, d
        x, y, w, h = d["bbox"]
        img = images[d["image_id"]]
        assert w > 0 and h > 0 and x >= -1e-3 and y >= -1e-3, d
        assert x + w <= img["width"] + 1e-3 and y + h <= img["height"] + 1e-3, d
        assert 0.0 <= d["score"] <= 1.0


def check_dump(path: Path, unlabeled: dict) -> None:
    from al_det.dump import read_dump

    dump = read_dump(path)
    assert dump.image_ids == ids(unlabeled)
    assert dump.features.dtype in (np.float16, np.float32)
    # tiny_frcnn keeps torchvision's standard TwoMLPHead: a 1024-d box-head representation
    assert dump.feature_dim == 1024
    assert dump.features.shape == (int(dump.offsets[-1]), 1024)
    feats = np.asarray(dump.features, dtype=np.float32)
    assert len(feats) > 1 and feats.std(axis=0).max() > 0  # the model's own, not constant


@pytest.mark.slow
def test_run_all_cycles_and_rerun_is_a_no_op(tmp_path: Path) -> None:
    wd = tmp_path / "wd"
    cfg = write_config(tmp_path, strategy="random")
    out = cli("run", "-c", str(cfg), "-w", str(wd))
    sizes = [len(ids(load(wd / f"cycle_{k:03d}" / "labeled.json"))) for k in range(3)]
    assert sizes == [12, 19, 26]
    # the table ends the output (a progress bar on stderr, mixed in by CliRunner, may end
    # without a newline just before its header)
    lines = out.rstrip("\n").splitlines()[-5:]
    assert lines[-1] == f"next: nothing: all 3 cycles are done (more: al-det run -w {wd} " \
                        "--set cycles=4)"
    lines = lines[:-1]
    table = [lines[0][lines[0].rindex("cycle"):].split()] + [ln.split() for ln in lines[1:]]
    assert table[0] == ["cycle", "labeled", "train", "evaluate", "infer", "acquire", "AP"]
    assert [row[:6] for row in table[1:]] == [
        ["0", "12", "done", "done", "done", "done"], ["1", "19", "done", "done", "done", "done"],
        ["2", "26", "done", "done", "-", "-"]]
    summary = (wd / "summary.csv").read_text().splitlines()[1:]
    assert [row[6] for row in table[1:]] == [f"{float(r.split(',')[3]):.4f}" for r in summary]
    assert len((wd / "summary.csv").read_text().splitlines()) == 1 + 3
    assert not (wd / "cycle_002" / "dump").exists()  # the last cycle trains and evaluates only
    before = (wd / "cycle_002" / "model.pth").stat().st_mtime_ns
    again = cli("run", "-c", str(cfg), "-w", str(wd))
    assert (wd / "cycle_002" / "model.pth").stat().st_mtime_ns == before
    assert "skipped as done: cycle 0 train, evaluate, infer, acquire; cycle 1 train, evaluate, " \
           "infer, acquire; cycle 2 train, evaluate" in again
    changed = CliRunner().invoke(main, ["run", "-c", str(cfg), "-w", str(wd), "--set",
                                        "train.epochs=2"])
    assert changed.exit_code == 2 and "train.epochs: 1 -> 2" in changed.output


def test_relative_workdir_paths_resolve(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write_config(tmp_path)
    monkeypatch.chdir(tmp_path)
    cli("init", "-c", "tiny.yaml", "-w", "runs/wd")
    from al_det.config import load_config

    frozen = load_config(tmp_path / "runs" / "wd" / "config.yaml")
    assert Path(frozen.data.pool) == tmp_path / "runs" / "wd" / "data" / "pool.json"
    assert (Path(frozen.data.pool_images) / "pool_000001.png").exists()
    assert cli("status", "-w", "runs/wd").splitlines()[1].split()[:2] == ["0", "12"]


def test_missing_image_folder_is_named(tmp_path: Path, demo_data: dict[str, Path]) -> None:
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"data:\n  pool: {demo_data['pool']}\n  pool_images: {tmp_path / 'nope'}\n")
    result = CliRunner().invoke(main, ["init", "-c", str(cfg), "-w", str(tmp_path / "wd")])
    assert result.exit_code == 2 and "data.pool_images=" in result.output
    assert "no such folder" in result.output and not (tmp_path / "wd").exists()


def test_changed_library_versions_refused_unless_forced(tmp_path: Path) -> None:
    wd = tmp_path / "wd"
    cli("init", "-c", str(write_config(tmp_path)), "-w", str(wd))
    versions = load(wd / "versions.json")
    (wd / "versions.json").write_text(json.dumps({**versions, "torch": "1.0.0"}))
    refused = CliRunner().invoke(main, ["acquire", "-w", str(wd)])
    assert refused.exit_code == 2
    assert "versions.json" in refused.output and "torch: 1.0.0 -> " in refused.output
    forced = CliRunner().invoke(main, ["acquire", "-w", str(wd), "--force"])
    assert "cycle_000/dump: not found" in forced.output  # past the check, stopped by the dump
    history = [json.loads(line) for line in (wd / "history.jsonl").read_text().splitlines()]
    assert history[0]["forced"] == "versions" and "torch: 1.0.0" in history[0]["changes"][0]


def test_every_command_has_an_example_and_shows_defaults() -> None:
    for name, command in main.commands.items():
        text = CliRunner().invoke(main, [name, "--help"]).output
        assert "al-det " in text.split("Options:")[0], name  # an example command line
        for param in command.params:
            default = param.get_default(click.Context(command))
            if isinstance(param, click.Option) and isinstance(default, (int, float, str)) \
                    and default is not False:
                assert f"[default: {param.default}]" in " ".join(text.split()), (name, param)
    strategies = CliRunner().invoke(main, ["acquire", "--help"]).output
    from al_det.strategies import STRATEGIES
    assert "|".join(STRATEGIES) in "".join(strategies.split())
