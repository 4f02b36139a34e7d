"""The hand-off of a labelling round without training: a dump written as infer would, then
`al-det acquire` (labelling mode) -> to_label.json + pre-annotations + Label Studio tasks +
to_label.txt, `al-det export` (links, copies), and Label Studio's JSON export of those tasks
imported by `al-det label`, boxes compared with the truth."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import tool_exports as tx
from click.testing import CliRunner

from al_det.cli import main
from al_det.dump import write_dump
from al_det.handoff import write_handoff
from al_det.workdir import Cycle

THRESH = 0.3


def cli(*args: str) -> str:
    result = CliRunner().invoke(main, list(args), catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result.output


def fake_dump(path: Path, unlabeled: dict, pool: dict, seed: int = 0) -> None:
    """Each unlabeled image: its true boxes shifted a little, scores in [0, 1), one weak box."""
    rng = np.random.default_rng(seed)
    offsets, boxes, scores, labels = [0], [], [], []
    for im in unlabeled["images"]:
        gt = [a for a in pool["annotations"] if a["image_id"] == im["id"]]
        for a in gt:
            boxes.append(np.array(a["bbox"]) + rng.uniform(-1, 1, 4) * [1, 1, 0, 0])
            scores.append(rng.uniform(0, 1))
            labels.append(a["category_id"])
        boxes.append([1.0, 2.0, 10.0, 12.0])
        scores.append(0.01)
        labels.append(pool["categories"][0]["id"])
        offsets.append(len(scores))
    feats = rng.normal(size=(len(scores), 8)).astype(np.float16)
    write_dump(path, unlabeled["images"], pool["categories"], offsets, boxes, scores, labels,
               feats)


@pytest.fixture()
def workdir(tmp_path: Path, demo_data: dict[str, Path]) -> tuple[Path, dict]:
    pool = json.loads(demo_data["pool"].read_text())
    first = [im["id"] for im in pool["images"][:10]]
    (tmp_path / "pool.json").write_text(json.dumps({**pool, "annotations": []}))
    (tmp_path / "mine.json").write_text(json.dumps(tx.cvat_coco(pool, first)))
    (tmp_path / "exp.yaml").write_text(f"""\
mode: labelling
data: {{pool: pool.json, labeled: mine.json, pool_images: {demo_data["images"]}}}
acquire: {{strategy: entropy, budget: 6}}
label: {{preannotation_thresh: {THRESH}}}
""")
    wd = tmp_path / "wd"
    cli("init", "-c", str(tmp_path / "exp.yaml"), "-w", str(wd))
    unlabeled = json.loads((wd / "cycle_000" / "unlabeled.json").read_text())
    fake_dump(wd / "cycle_000" / "dump", unlabeled, pool)
    return wd, pool


def test_acquire_writes_the_handoff(workdir: tuple[Path, dict],
                                    demo_data: dict[str, Path]) -> None:
    wd, pool = workdir
    cli("acquire", "-w", str(wd))
    c0 = wd / "cycle_000"
    to_label = json.loads((c0 / "to_label.json").read_text())
    chosen = to_label["images"]
    assert len(chosen) == 6
    pre = json.loads((c0 / "preannotations.json").read_text())
    assert pre["images"] == chosen and pre["categories"] == pool["categories"]
    assert [a["id"] for a in pre["annotations"]] == list(range(1, len(pre["annotations"]) + 1))
    dump = np.load(c0 / "dump" / "scores.npy"), np.load(c0 / "dump" / "boxes.npy")
    meta = json.loads((c0 / "dump" / "meta.json").read_text())
    offsets = np.load(c0 / "dump" / "offsets.npy")
    row = {im["id"]: n for n, im in enumerate(meta["images"])}
    for im in chosen:
        a, b = offsets[row[im["id"]]], offsets[row[im["id"]] + 1]
        want = sorted((float(s), [float(v) for v in box])
                      for s, box in zip(dump[0][a:b], dump[1][a:b], strict=True) if s >= THRESH)
        got = sorted((x["score"], x["bbox"]) for x in pre["annotations"]
                     if x["image_id"] == im["id"])
        assert got == want
    assert pre["annotations"] and all(a["score"] >= THRESH for a in pre["annotations"])

    tasks = json.loads((c0 / "labelstudio_tasks.json").read_text())
    assert [t["data"]["image"] for t in tasks] == [
        "/data/local-files/?d=" + im["file_name"] for im in chosen]
    names = {c["id"]: c["name"] for c in pool["categories"]}
    for task, im in zip(tasks, chosen, strict=True):
        (pred,) = task["predictions"]
        assert pred["model_version"].startswith("experiment cycle 0")
        mine = [a for a in pre["annotations"] if a["image_id"] == im["id"]]
        assert len(pred["result"]) == len(mine)
        for r, a in zip(pred["result"], sorted(mine, key=lambda a: -a["score"]), strict=True):
            v, w, h = r["value"], r["original_width"], r["original_height"]
            assert (w, h) == (im["width"], im["height"]) and r["type"] == "rectanglelabels"
            assert [v["x"] * w / 100, v["y"] * h / 100, v["width"] * w / 100,
                    v["height"] * h / 100] == pytest.approx(a["bbox"], abs=1e-9)
            assert v["rectanglelabels"] == [names[a["category_id"]]] and r["score"] == a["score"]
    config = (c0 / "labelstudio_config.xml").read_text()
    assert all(f'<Label value="{n}"/>' in config for n in names.values())
    lines = (c0 / "to_label.txt").read_text().splitlines()
    assert lines == [str(demo_data["images"] / im["file_name"]) for im in chosen]
    assert all(Path(p).is_file() for p in lines)


def test_export_links_or_copies(workdir: tuple[Path, dict], tmp_path: Path,
                                demo_data: dict[str, Path]) -> None:
    wd, _ = workdir
    out = CliRunner().invoke(main, ["export", "-w", str(wd), "--to", str(tmp_path / "up")])
    assert out.exit_code == 2 and "to_label.json: missing" in out.output
    cli("acquire", "-w", str(wd))
    chosen = json.loads((wd / "cycle_000" / "to_label.json").read_text())["images"]
    said = cli("export", "-w", str(wd), "--to", str(tmp_path / "up"))
    assert f"6 images to label in {tmp_path / 'up'} (6 hard links)" in said
    for im in chosen:
        assert os.path.samefile(tmp_path / "up" / im["file_name"],
                                demo_data["images"] / im["file_name"])
    assert "(6 already there)" in cli("export", "-w", str(wd), "--to", str(tmp_path / "up"))
    said = cli("export", "-w", str(wd), "--cycle", "0", "--to", str(tmp_path / "cp"), "--copy")
    assert "(6 copies)" in said
    for im in chosen:
        dst, src = tmp_path / "cp" / im["file_name"], demo_data["images"] / im["file_name"]
        assert not os.path.samefile(dst, src) and dst.read_bytes() == src.read_bytes()
    (tmp_path / "cp" / chosen[0]["file_name"]).write_bytes(b"other")
    out = CliRunner().invoke(main, ["export", "-w", str(wd), "--to", str(tmp_path / "cp"),
                                    "--copy"])
    assert out.exit_code == 2 and "exists and is not" in out.output


def test_label_studio_json_of_the_tasks_round_trips(workdir: tuple[Path, dict],
                                                    tmp_path: Path) -> None:
    """The annotator corrects the pre-annotations to the truth; the JSON export comes back."""
    wd, pool = workdir
    cli("acquire", "-w", str(wd))
    tasks = json.loads((wd / "cycle_000" / "labelstudio_tasks.json").read_text())
    chosen = [im["id"] for im in json.loads(
        (wd / "cycle_000" / "to_label.json").read_text())["images"]]
    truth = tx.labelstudio_json(pool, chosen, tx.ls_local_files)
    exported = [{**t, "id": 50 + n, "data": task["data"], "predictions": task["predictions"]}
                for n, (t, task) in enumerate(zip(truth, tasks, strict=True))]
    path = tmp_path / "project-1-at-2024-05-01-10-00-abcdef12.json"
    path.write_text(json.dumps(exported))
    said = cli("label", "-w", str(wd), "--annotations", str(path))
    boxes = sum(len(v) for v in tx.truth_of(pool, chosen).values())
    assert f"cycle 1: imported 6 images ({boxes} boxes" in said and "Label Studio JSON" in said
    nxt = json.loads((wd / "cycle_001" / "labeled.json").read_text())
    got = tx.truth_of(nxt, chosen)
    want = tx.truth_of(pool, chosen)
    assert {i: [(c, pytest.approx(b)) for c, b in v] for i, v in got.items()} == want


def test_write_handoff_threshold_and_prefix(tmp_path: Path) -> None:
    images = [{"id": 5, "file_name": "a/b.png", "width": 40, "height": 20},
              {"id": 9, "file_name": "c.png", "width": 10, "height": 10}]
    cats = [{"id": 2, "name": "cat"}, {"id": 4, "name": "dog"}]
    write_dump(tmp_path / "dump", images[::-1], cats, [0, 0, 2],
               [[0, 0, 4, 2], [1, 1, 2, 2]], [0.5, 0.49], [4, 2], np.zeros((2, 3)))
    from al_det.dump import read_dump

    counts = write_handoff(Cycle(tmp_path), images, read_dump(tmp_path / "dump"), cats, "/imgs",
                           0.5, url_prefix="http://host:8000/", model_version="m1")
    assert counts == {"images": 2, "boxes": 1}
    pre = json.loads((tmp_path / "preannotations.json").read_text())
    assert [(a["image_id"], a["category_id"], a["score"]) for a in pre["annotations"]] == [
        (5, 4, 0.5)]  # 0.49 is below the threshold
    tasks = json.loads((tmp_path / "labelstudio_tasks.json").read_text())
    assert [t["data"]["image"] for t in tasks] == ["http://host:8000/a/b.png",
                                                   "http://host:8000/c.png"]
    (region,) = tasks[0]["predictions"][0]["result"]
    assert region["value"] == {"x": 0.0, "y": 0.0, "width": 10.0, "height": 10.0,
                               "rotation": 0, "rectanglelabels": ["dog"]}
    assert tasks[1]["predictions"][0] == {"model_version": "m1", "score": 0.0, "result": []}
    assert (tmp_path / "to_label.txt").read_text() == "/imgs/a/b.png\n/imgs/c.png\n"
