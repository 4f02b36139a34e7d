"""Sweep files and plans, the shipped sweeps, and how a config is one of the paper's
protocols (no training: fast)."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from al_det.cli import main
from al_det.config import load_config, override
from al_det.errors import ConfigError
from al_det.report import paper
from al_det.sweep_plan import Arm, make_plan, read_plan, settle_plan

CONFIGS = Path(__file__).parents[1] / "configs"


def test_sweep_file_variants_grid_and_set(tmp_path: Path) -> None:
    (tmp_path / "s.yaml").write_text(
        "sweep:\n  base: ../configs/demo.yaml\n  seeds: [0, 2]\n  strategies: [random]\n"
        "  variants:\n    no-intra: {acquire.intra: false}\n"
        "  grid: {acquire.alpha: [0.25, 0.5], acquire.beta: [0.75]}\n"
        "  set: {cycles: 3}\n".replace("../configs", str(CONFIGS)))
    plan = make_plan(tmp_path / "s.yaml", None, None, ["train.epochs=1"])
    assert plan.seeds == (0, 2) and plan.sets == ("cycles=3", "train.epochs=1")
    assert [a.name for a in plan.arms] == ["random", "no-intra", "alpha=0.25,beta=0.75",
                                           "alpha=0.5,beta=0.75"]
    cfg = override(load_config(plan.config), plan.arms[1].sets)
    assert cfg.acquire.intra is False
    assert override(load_config(plan.config), plan.arms[2].sets).acquire.alpha == 0.25
    # flags replace the file's strategies and seeds
    plan = make_plan(tmp_path / "s.yaml", ["entropy"], [5], [])
    assert plan.seeds == (5,) and plan.arms[0] == Arm("entropy", ("acquire.strategy=entropy",))
    tasks = plan.tasks()
    assert tasks[0] == ("base", None, 5) and len(tasks) == 1 + 4


@pytest.mark.parametrize("text, message", [
    ("sweep:\n  base: demo.yaml\n  seed: [0]\n", "did you mean 'seeds'"),
    ("sweep:\n  seeds: [0]\n", "sweep.base is missing"),
    ("sweep:\n  base: demo.yaml\n  strategies: [entropi]\n", "did you mean 'entropy'"),
    ("sweep:\n  base: demo.yaml\n  variants: {_x: {acquire.intra: false}}\n", "arm name"),
    ("sweep:\n  base: demo.yaml\n  seeds: [0, 0]\n", "seeds appear twice"),
    ("sweep:\n  base: nowhere.yaml\n", "no such file"),
    ("sweep:\n  base: demo.yaml\ncycles: 3\n", "holds only the sweep"),
])
def test_bad_sweep_file_is_one_named_error(tmp_path: Path, text: str, message: str) -> None:
    (tmp_path / "demo.yaml").write_text((CONFIGS / "demo.yaml").read_text())
    (tmp_path / "s.yaml").write_text(text)
    with pytest.raises(ConfigError, match=message):
        make_plan(tmp_path / "s.yaml", None, None)


def test_plan_may_grow_but_not_change(tmp_path: Path) -> None:
    demo = CONFIGS / "demo.yaml"
    root = tmp_path / "root"
    settle_plan(root, make_plan(demo, ["random"], [0]))
    plan = settle_plan(root, make_plan(demo, ["entropy"], [1]))
    assert [a.name for a in plan.arms] == ["random", "entropy"] and plan.seeds == (0, 1)
    assert read_plan(root) == plan
    with pytest.raises(ConfigError, match="use a new ROOT"):
        settle_plan(root, make_plan(demo, ["random"], [0], ["train.epochs=1"]))
    with pytest.raises(ConfigError, match="not a sweep root"):
        settle_plan(tmp_path / "other", None)


def test_cli_list_tasks_and_flags_need_config(tmp_path: Path) -> None:
    root = tmp_path / "r"
    out = CliRunner().invoke(main, ["sweep", "-c", str(CONFIGS / "demo.yaml"), "-w", str(root),
                                    "--strategies", "random,entropy", "--seeds", "0,1",
                                    "--list"])
    assert out.exit_code == 0, out.output
    lines = out.output.splitlines()
    assert lines[0] == f"0 base {root}/_cycle0/seed_0" and len(lines) == 2 + 4
    assert lines[2] == f"2 member {root}/random/seed_0"
    bad = CliRunner().invoke(main, ["sweep", "-w", str(root), "--seeds", "3"])
    assert bad.exit_code == 2 and "need -c CONFIG" in bad.output


@pytest.mark.parametrize("name", ["table_e", "table_1", "table_a", "table_2", "table_3"])
def test_shipped_sweeps_load_and_match_the_paper(name: str) -> None:
    plan = make_plan(CONFIGS / "sweeps" / f"{name}.yaml", None, None)
    text = (CONFIGS / "sweeps" / f"{name}.yaml").read_text()
    assert "GPU-hours, ESTIMATED" in text
    base = load_config(plan.config, plan.sets)
    proto = paper.protocol_of(base)
    assert proto is not None
    for arm in plan.arms:
        found = paper.method_of(proto[1], override(base, arm.sets))
        assert found is not None, arm  # every arm of the paper's sweeps has its numbers
        if arm.name.startswith("alpha=0.5,beta=0.25"):
            assert found[0] == "alpha=0.5,beta=0.25 (Table 2)"
        if arm.name == "intra-only":
            assert found[1]["AP"][1] == 29.52


def test_protocols_of_the_shipped_configs() -> None:
    r50 = load_config(CONFIGS / "coco_frcnn.yaml")
    assert paper.protocol_of(r50)[0] == "coco_frcnn_r50"
    assert paper.protocol_of(load_config(CONFIGS / "coco_frcnn_r101.yaml"))[0] == \
        "coco_frcnn_r101"
    voc = load_config(CONFIGS / "voc_ssd.yaml")
    assert paper.protocol_of(voc)[0] == "voc_ssd"
    assert paper.protocol_of(load_config(CONFIGS / "demo.yaml")) is None
    assert paper.protocol_of(override(r50, ["acquire.budget=1000"])) is None
    # a strategy with non-paper parameters has no reference line
    proto = paper.protocol_of(r50)[1]
    assert paper.method_of(proto, override(r50, ["acquire.t_intra=0.9"])) is None
    pts = paper.reference_points(proto, proto["methods"]["random"], "AP", 118287)
    assert pts[0] == (pytest.approx(0.2 * 118287), 27.57, 0.18)
    vpts = paper.reference_points(paper.protocol_of(voc)[1],
                                  paper.protocol_of(voc)[1]["methods"]["enms_divproto"],
                                  "mAP", 16551)
    assert vpts == [(7000, 73.68, None)]
