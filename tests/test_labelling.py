"""A real labelling round: unannotated pool + the user's labels, train, infer, acquire ->
to_label.json and the hand-off, export of the images, import of a labelling tool's export
that renumbers images and categories and leaves images without boxes out."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import tool_exports as tx
from click.testing import CliRunner

from al_det.cli import main


def cli(*args: str) -> CliRunner:
    result = CliRunner().invoke(main, list(args), catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result


def renumbered(coco: dict, image_ids: list[int], id_base: int, cat_base: int) -> dict:
    """What CVAT / Label Studio export: their own image, category and annotation ids."""
    keep = set(image_ids)
    images = [im for im in coco["images"] if im["id"] in keep]
    new_img = {im["id"]: id_base + n for n, im in enumerate(images)}
    cats = list(reversed(coco["categories"]))
    new_cat = {c["id"]: cat_base + n for n, c in enumerate(cats)}
    anns = [a for a in coco["annotations"] if a["image_id"] in keep]
    return {
        "images": [{**im, "id": new_img[im["id"]]} for im in images],
        "categories": [{**c, "id": new_cat[c["id"]]} for c in cats],
        "annotations": [{**a, "id": 1 + n, "image_id": new_img[a["image_id"]],
                         "category_id": new_cat[a["category_id"]]} for n, a in enumerate(anns)],
    }


@pytest.mark.slow
def test_labelling_round(tmp_path: Path, demo_data: dict[str, Path]) -> None:
    pool = json.loads(demo_data["pool"].read_text())
    first = [im["id"] for im in pool["images"][:10]]
    (tmp_path / "pool.json").write_text(json.dumps({**pool, "annotations": []}))
    (tmp_path / "mine.json").write_text(json.dumps(renumbered(pool, first, 9000, 100)))
    (tmp_path / "exp.yaml").write_text(f"""\
mode: labelling
cycles: 2
data:
  pool: pool.json
  labeled: mine.json
  pool_images: {demo_data["images"]}
  test: {demo_data["test"]}
model: {{name: tiny_frcnn, min_size: 128, max_size: 128}}
train: {{epochs: 1, batch_size: 4, warmup_iters: 1, workers: 0}}
infer: {{workers: 0, score_thresh: 0.0}}
acquire: {{strategy: entropy, budget: 5}}
label: {{preannotation_thresh: 0.0}}
""")
    wd = tmp_path / "wd"
    cli("init", "-c", str(tmp_path / "exp.yaml"), "-w", str(wd))
    labeled = json.loads((wd / "cycle_000" / "labeled.json").read_text())
    assert [im["id"] for im in labeled["images"]] == first  # matched back to the pool's ids
    gt = [(a["image_id"], a["category_id"], a["bbox"]) for a in pool["annotations"]
          if a["image_id"] in set(first)]
    assert sorted((a["image_id"], a["category_id"], a["bbox"])
                  for a in labeled["annotations"]) == sorted(gt)

    cli("run", "-c", str(tmp_path / "exp.yaml"), "-w", str(wd))
    to_label = json.loads((wd / "cycle_000" / "to_label.json").read_text())
    assert len(to_label["images"]) == 5 and to_label["annotations"] == []
    assert not (wd / "cycle_001").exists()  # waits for the labels

    c0 = wd / "cycle_000"
    pre = json.loads((c0 / "preannotations.json").read_text())
    assert pre["images"] == to_label["images"] and pre["annotations"]  # thresh 0: all boxes
    dump_meta = json.loads((c0 / "dump" / "meta.json").read_text())
    assert len(dump_meta["images"]) == len(pool["images"]) - 10
    tasks = json.loads((c0 / "labelstudio_tasks.json").read_text())
    assert sum(len(t["predictions"][0]["result"]) for t in tasks) == len(pre["annotations"])
    assert len((c0 / "to_label.txt").read_text().splitlines()) == 5
    said = cli("export", "-w", str(wd), "--to", str(tmp_path / "upload")).output
    assert "5 images to label" in said and "hard links" in said
    assert sorted(p.name for p in (tmp_path / "upload").iterdir()) == sorted(
        im["file_name"] for im in to_label["images"])

    chosen = [im["id"] for im in to_label["images"]]
    export = tmp_path / "export.json"
    export.write_text(json.dumps(renumbered(pool, chosen[:4], 500, 7)))
    short = CliRunner().invoke(main, ["label", "-w", str(wd), "--annotations", str(export)])
    assert short.exit_code == 2
    assert "no annotations for 1 of 5 selected images" in short.output
    assert not (wd / "cycle_001").exists()

    # Label Studio's COCO export: upload-prefixed names, ids from 0, images without a box
    # left out (one is made box-less here), so --missing-as-empty is needed
    gt = {**pool, "annotations": [a for a in pool["annotations"] if a["image_id"] != chosen[0]]}
    export.write_text(json.dumps(tx.labelstudio_coco(gt, chosen, tx.ls_data_upload)))
    short = CliRunner().invoke(main, ["label", "-w", str(wd), "--annotations", str(export)])
    assert short.exit_code == 2 and "--missing-as-empty" in short.output
    said = cli("label", "-w", str(wd), "--annotations", str(export), "--missing-as-empty")
    assert "1 of them absent from the export" in said.output
    nxt = json.loads((wd / "cycle_001" / "labeled.json").read_text())
    assert [im["id"] for im in nxt["images"]] == first + chosen
    want = tx.truth_of(gt, first + chosen)
    got = tx.truth_of(nxt, first + chosen)
    assert got == {i: [(c, pytest.approx(b, abs=1e-9)) for c, b in v] for i, v in want.items()}
    assert not got[chosen[0]]
    rest = json.loads((wd / "cycle_001" / "unlabeled.json").read_text())
    assert len(rest["images"]) == len(pool["images"]) - 15
