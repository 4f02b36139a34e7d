"""`al-det acquire` in file mode, as a user of another detector runs it."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from click.testing import CliRunner

from al_det.cli import main
from al_det.dump import write_dump

CATS = [{"id": 4, "name": "cat"}, {"id": 9, "name": "dog"}]


def make_inputs(tmp_path: Path) -> tuple[Path, Path]:
    """Images 1..4 in the dump; image 1 is labeled. Scores give entropies 4 > 3 > 2."""
    images = [{"id": i, "file_name": f"{i}.jpg", "width": 10, "height": 10} for i in (1, 2, 3, 4)]
    scores = np.array([0.9, 0.5, 0.1, 0.5, 0.5, 0.5], np.float32)
    offsets = np.array([0, 1, 3, 4, 6], np.int64)  # image 4 has two detections
    features = np.random.default_rng(0).standard_normal((6, 8)).astype(np.float16)
    write_dump(tmp_path / "dump", images, CATS, offsets, np.ones((6, 4), np.float32), scores,
               np.array([4, 4, 9, 4, 9, 4], np.int64), features)
    labeled = tmp_path / "labeled.json"
    labeled.write_text(json.dumps({"images": images[:1], "categories": CATS, "annotations": []}))
    return tmp_path / "dump", labeled


def test_file_mode_writes_selection_and_report(tmp_path: Path) -> None:
    dets, labeled = make_inputs(tmp_path)
    out = tmp_path / "next.json"
    args = ["acquire", "--dets", str(dets), "--labeled", str(labeled), "--budget", "2",
            "--strategy", "entropy", "--output", str(out)]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    chosen = json.loads(out.read_text())
    # entropies: image 4 = 2 H(0.5), image 2 = H(0.5) + H(0.1), image 3 = H(0.5)
    assert [im["id"] for im in chosen["images"]] == [4, 2] and chosen["annotations"] == []
    report = json.loads((tmp_path / "next.selection.json").read_text())
    assert report["strategy"] == "entropy"
    assert abs(report["images"][0]["key"] - 2 * np.log(2)) < 1e-9
    assert [im["reason"] for im in report["images"]] == ["main", "main"]


def test_file_mode_switches_and_sets(tmp_path: Path) -> None:
    dets, labeled = make_inputs(tmp_path)
    out = tmp_path / "next.json"
    args = ["acquire", "--dets", str(dets), "--labeled", str(labeled), "--budget", "3",
            "--strategy", "enms_divproto", "--output", str(out), "--no-intra", "--no-inter",
            "--set", "acquire.t_enms=0.9"]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    params = json.loads((tmp_path / "next.selection.json").read_text())["params"]
    assert params["intra"] is False and params["inter"] is False and params["t_enms"] == 0.9


def test_file_mode_errors_are_one_line_and_write_nothing(tmp_path: Path) -> None:
    dets, labeled = make_inputs(tmp_path)
    out = tmp_path / "next.json"
    base = ["acquire", "--dets", str(dets), "--labeled", str(labeled), "--output", str(out)]
    cases = [
        (base + ["--strategy", "entropy"], "missing --budget"),
        (base + ["--budget", "9", "--strategy", "entropy"], "budget"),
        (base + ["--budget", "1", "--strategy", "enm"], "did you mean"),
        (base + ["--budget", "1", "--strategy", "enms", "--set", "acquire.t_enm=0.2"],
         "did you mean"),
    ]
    for args, message in cases:
        result = CliRunner().invoke(main, args)
        assert result.exit_code == 2, (args, result.output)
        assert message in result.output and result.output.count("\n") == 1, result.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dump", "labeled.json"]


def test_output_under_a_regular_file_is_one_line(tmp_path: Path) -> None:
    dets, labeled = make_inputs(tmp_path)
    (tmp_path / "X").write_text("not a folder")
    out = tmp_path / "X" / "next.json"
    result = CliRunner().invoke(main, ["acquire", "--dets", str(dets), "--labeled", str(labeled),
                                       "--budget", "1", "--strategy", "entropy",
                                       "--output", str(out)])
    assert result.exit_code == 2 and result.output.count("\n") == 1, result.output
    assert f"{tmp_path / 'X'} is a file, not a folder" in result.output
    assert (tmp_path / "X").read_text() == "not a folder"


def test_python_api_select_is_what_the_command_selects(tmp_path: Path) -> None:
    import al_det

    dets, labeled = make_inputs(tmp_path)
    sel = al_det.select(dets, labeled, "entropy", 2)
    assert list(sel.image_ids) == [4, 2] and sel.reasons == ("main", "main")
    same = al_det.select(al_det.read_dump(dets), json.loads(labeled.read_text()), "entropy", 2)
    assert same.image_ids == sel.image_ids and same.keys == sel.keys
    out = tmp_path / "next.json"
    CliRunner().invoke(main, ["acquire", "--dets", str(dets), "--labeled", str(labeled),
                              "--budget", "2", "--strategy", "entropy", "--output", str(out)])
    assert [im["id"] for im in json.loads(out.read_text())["images"]] == list(sel.image_ids)
    assert [im["file_name"] for im in sel.images] == ["4.jpg", "2.jpg"]
