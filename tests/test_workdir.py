"""The work dir guards its frozen experiment: hand edits, command-line changes, budgets,
bad splits and what to run next, each refused in one line with nothing written.

The acquisitions here run on a detections dump written by hand for cycle 0's unlabeled
images (no model is trained: these tests are about the work dir, not the detector).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from al_det.cli import main
from al_det.dump import write_dump
from al_det.workdir import Workdir

CONFIG = """\
name: tiny
seed: 3
cycles: 3
initial: 12
data:
  synthetic: {n_pool: 40, n_test: 12, image_size: 128, seed: 1}
model: {name: tiny_frcnn, min_size: 128, max_size: 128}
train: {epochs: 1, batch_size: 4, warmup_iters: 2, workers: 0}
acquire: {strategy: entropy, budget: 7}
"""


def invoke(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(main, list(args))
    return result.exit_code, result.output


def init(tmp_path: Path, text: str = CONFIG) -> Path:
    cfg = tmp_path / "c.yaml"
    cfg.write_text(text)
    code, out = invoke("init", "-c", str(cfg), "-w", str(tmp_path / "wd"))
    assert code == 0, out
    return tmp_path / "wd"


def hand_dump(wd: Path, k: int = 0) -> None:
    """A dump of cycle k's unlabeled images: image n has n % 3 + 1 detections."""
    unl = json.loads((wd / f"cycle_{k:03d}" / "unlabeled.json").read_text())
    counts = [n % 3 + 1 for n in range(len(unl["images"]))]
    m = sum(counts)
    rng = np.random.default_rng(0)
    cat_ids = [c["id"] for c in unl["categories"]]
    write_dump(wd / f"cycle_{k:03d}" / "dump", unl["images"], unl["categories"],
               np.concatenate([[0], np.cumsum(counts)]), np.ones((m, 4), np.float32),
               rng.uniform(0.05, 0.95, m).astype(np.float32),
               np.array([cat_ids[i % len(cat_ids)] for i in range(m)]),
               rng.standard_normal((m, 8)).astype(np.float16))


def snapshot(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file() and p.name != ".lock"}


def one_line_error(code: int, out: str, *needles: str) -> None:
    assert code == 2, out
    assert out.count("\n") == 1 and out.startswith("al-det: error: "), out
    for needle in needles:
        assert needle in out, (needle, out)


def test_hand_edited_config_is_refused_by_every_command(tmp_path: Path) -> None:
    wd = init(tmp_path)
    hand_dump(wd)
    cfg = wd / "config.yaml"
    cfg.write_text(cfg.read_text().replace("lr: 0.02", "lr: 0.5"))
    before = snapshot(wd)
    for command in ("train", "evaluate", "infer", "acquire", "status"):
        code, out = invoke(command, "-w", str(wd))
        if command == "status":  # reads, changes nothing: no refusal needed
            assert code == 0, out
            continue
        one_line_error(code, out, "config.yaml", "train.lr: 0.02 -> 0.5", "--force")
    code, out = invoke("label", "-w", str(wd), "--annotations", str(tmp_path / "x.json"))
    one_line_error(code, out, "train.lr: 0.02 -> 0.5")
    assert snapshot(wd) == before


def test_acquire_set_changes_the_experiment_only_when_forced(tmp_path: Path) -> None:
    wd = init(tmp_path)
    hand_dump(wd)
    before = snapshot(wd)
    for extra in (["--set", "acquire.budget=2"], ["--strategy", "random"], ["--no-intra"]):
        code, out = invoke("acquire", "-w", str(wd), *extra)
        one_line_error(code, out, "config.yaml", "acquire.", "--force")
    assert snapshot(wd) == before
    code, out = invoke("acquire", "-w", str(wd), "--set", "acquire.budget=2", "--force")
    assert code == 0, out
    assert out.splitlines()[-1] == "selected 2 images with entropy"
    history = [json.loads(x) for x in (wd / "history.jsonl").read_text().splitlines()]
    assert [h["forced"] for h in history] == ["config"]
    assert history[0]["changes"] == ["acquire.budget: 7.0 -> 2.0"]
    assert "budget: 2.0" in (wd / "config.yaml").read_text()
    assert len(json.loads((wd / "cycle_001/labeled.json").read_text())["images"]) == 14


def test_more_cycles_need_no_force_and_are_recorded(tmp_path: Path) -> None:
    wd = init(tmp_path)
    hand_dump(wd)
    code, out = invoke("acquire", "-w", str(wd), "--set", "cycles=4")
    assert code == 0, out
    history = [json.loads(x) for x in (wd / "history.jsonl").read_text().splitlines()]
    assert history == [{**history[0], "forced": "extended", "changes": ["cycles: 3 -> 4"]}]
    code, out = invoke("acquire", "-w", str(wd), "--cycle", "0", "--set", "cycles=2")
    one_line_error(code, out, "cycles: 4 -> 2")  # fewer cycles is a real change


def test_acquire_after_the_last_acquisition_says_what_comes_next(tmp_path: Path) -> None:
    wd = init(tmp_path)
    hand_dump(wd)
    assert invoke("acquire", "-w", str(wd))[0] == 0
    code, out = invoke("acquire", "-w", str(wd))
    one_line_error(code, out, "cycle 0's acquisition is done", "latest cycle, 1",
                   "al-det train -w", "al-det infer -w")
    code, out = invoke("acquire", "-w", str(wd), "--cycle", "0")
    assert code == 0, out  # done: nothing to do, not an error


def test_bad_splits_are_refused_before_anything_is_written(tmp_path: Path) -> None:
    wd = init(tmp_path)
    hand_dump(wd)
    c0 = wd / "cycle_000"
    labeled = json.loads((c0 / "labeled.json").read_text())
    unlabeled = json.loads((c0 / "unlabeled.json").read_text())
    overlap = {**labeled, "images": labeled["images"] + unlabeled["images"][:1]}
    (c0 / "labeled.json").write_text(json.dumps(overlap))
    before = snapshot(wd)
    code, out = invoke("acquire", "-w", str(wd))
    one_line_error(code, out, str(c0 / "labeled.json"), str(c0 / "unlabeled.json"),
                   str(unlabeled["images"][0]["id"]), "both labeled and unlabeled")
    assert snapshot(wd) == before and not (c0 / "selection.json").exists()
    short = {**unlabeled, "images": unlabeled["images"][1:]}  # union no longer the pool
    (c0 / "labeled.json").write_text(json.dumps(labeled))
    (c0 / "unlabeled.json").write_text(json.dumps(short))
    code, out = invoke("acquire", "-w", str(wd))
    one_line_error(code, out, "unlabeled.json", "in neither split")
    assert not (c0 / "selection.json").exists()


@pytest.mark.parametrize("acquire, message", [
    ("{strategy: entropy, budget: 500}", "asks for 500 images but the pool has only 40"),
    ("{strategy: entropy, budget: 0.5}", "2 acquisitions of 20 images"),  # 12 + 40 > 40
    ("{strategy: entropy, budget: 15}", "need 42 images, but the pool has 40"),
])
def test_impossible_budgets_are_refused_at_init(tmp_path: Path, acquire: str,
                                                message: str) -> None:
    cfg = tmp_path / "c.yaml"
    cfg.write_text(CONFIG.replace("{strategy: entropy, budget: 7}", acquire))
    code, out = invoke("init", "-c", str(cfg), "-w", str(tmp_path / "wd"))
    one_line_error(code, out, message, "acquire.budget")
    assert not (tmp_path / "wd").exists()


def test_stage_state_has_one_definition(tmp_path: Path) -> None:
    wd = Workdir(init(tmp_path))
    assert not wd.stage_done(0, "acquire")
    hand_dump(wd.root)
    assert wd.stage_done(0, "infer") and not wd.stage_done(0, "train")
    assert invoke("acquire", "-w", str(wd.root))[0] == 0
    assert wd.stage_done(0, "acquire") and not wd.stage_done(0, "acquire", "labelling")
    with pytest.raises(Exception, match="unknown stage 'trian'"):
        wd.stage_done(0, "trian")


def test_a_stage_whose_final_file_is_damaged_says_so(tmp_path: Path) -> None:
    wd = init(tmp_path)
    model = wd / "cycle_000" / "model.pth"
    code, out = invoke("infer", "-w", str(wd))  # no model yet: missing, not "corrupted"
    one_line_error(code, out, f"{model}: not found: this cycle is not trained yet",
                   "al-det train")
    model.write_bytes(b"PK\x03\x04 truncated")
    code, out = invoke("train", "-w", str(wd))
    one_line_error(code, out, f"{model}: corrupted or unreadable", "delete it to retrain")
    assert model.read_bytes() == b"PK\x03\x04 truncated"
    model.unlink()
    hand_dump(wd)
    scores = wd / "cycle_000" / "dump" / "scores.npy"
    scores.write_bytes(scores.read_bytes()[:-8])
    code, out = invoke("infer", "-w", str(wd))
    one_line_error(code, out, "scores.npy", "the cycle's dump is damaged: delete")


@pytest.mark.parametrize("keep", ["last", "all"])
def test_keep_features_last_deletes_older_feature_arrays_once_acquired(tmp_path: Path,
                                                                        keep: str) -> None:
    wd = init(tmp_path, CONFIG.replace("acquire:", f"infer: {{keep_features: {keep}}}\nacquire:"))
    hand_dump(wd)
    assert invoke("acquire", "-w", str(wd))[0] == 0
    d0 = wd / "cycle_000" / "dump"
    assert (d0 / "features.npy").exists()  # the latest acquired cycle keeps its features
    hand_dump(wd, 1)
    assert invoke("acquire", "-w", str(wd))[0] == 0
    kept = sorted(p.name for p in d0.iterdir())
    if keep == "all":
        assert "features.npy" in kept and "PRUNED" not in kept
        return
    assert kept == ["PRUNED", "boxes.npy", "labels.npy", "meta.json", "offsets.npy",
                    "scores.npy"]
    assert (wd / "cycle_001" / "dump" / "features.npy").exists()
    code, out = invoke("acquire", "-w", str(wd), "--cycle", "0")
    assert code == 0, out  # done long ago: nothing to redo, nothing to read
    from al_det.dump import read_dump
    from al_det.errors import DumpError
    with pytest.raises(DumpError, match="deleted after the cycle's acquisition"):
        read_dump(d0)
