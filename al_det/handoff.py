"""The hand-off of a labelling round: what the annotators get beside ``to_label.json``.

Reads nothing from disk itself: it is given the selected image records, the cycle's
detections dump (:class:`al_det.dump.Dump`, only boxes / scores / labels are read) and the
categories. Writes into ``cycle_K/``, each file atomically, all before ``to_label.json`` (which
marks the acquisition done, so a crash rewrites them all):

* ``preannotations.json``: COCO of the selected images with the model's detections scoring at
  least the threshold, each with its ``score`` (CVAT: upload as COCO 1.0 annotations);
* ``labelstudio_tasks.json``: Label Studio tasks, one per image, ``data.image`` the URL prefix
  plus the file name, the same detections as ``predictions`` (pre-annotations);
* ``labelstudio_config.xml``: the Label Studio labelling config those tasks are made for;
* ``to_label.txt``: the selected images' paths (images folder + file name), one a line.

Torch-free, like all of acquisition.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from al_det import atomic, labelstudio
from al_det.dump import Dump
from al_det.errors import DumpError
from al_det.workdir import Cycle

# Label Studio serves files under LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT at this URL
DEFAULT_URL_PREFIX = "/data/local-files/?d="


def write_handoff(cycle: Cycle, selected_images: Sequence[dict], dump: Dump,
                  categories: Sequence[dict], images_root: Path | str, thresh: float,
                  url_prefix: str = DEFAULT_URL_PREFIX,
                  model_version: str = "al-det") -> dict[str, int]:
    """Write the hand-off files of ``selected_images`` into the cycle's folder.

    Returns {"images": n, "boxes": pre-annotation boxes}.
    """
    names = {c["id"]: c["name"] for c in categories}
    rows = {iid: n for n, iid in enumerate(dump.image_ids)}
    per_image = [detections_of(dump, rows, im, names, thresh) for im in selected_images]
    anns = [{"id": 0, "image_id": im["id"], "category_id": d["category_id"], "bbox": d["bbox"],
             "area": d["bbox"][2] * d["bbox"][3], "iscrowd": 0, "segmentation": [],
             "score": d["score"]}
            for im, dets in zip(selected_images, per_image, strict=True) for d in dets]
    for n, ann in enumerate(anns):
        ann["id"] = n + 1
    coco = {"info": {"description": f"al-det pre-annotations ({model_version}), score >= "
                                    f"{thresh}"},
            "images": list(selected_images), "annotations": anns, "categories": list(categories)}
    tasks = [labelstudio.prediction_task(im, url_prefix + im["file_name"], dets, model_version)
             for im, dets in zip(selected_images, per_image, strict=True)]
    root = Path(images_root)
    atomic.write_json(cycle.preannotations, coco)
    atomic.write_json(cycle.ls_tasks, tasks, indent=1)
    atomic.write_text(cycle.ls_config, labelstudio.labelling_config(names.values()))
    atomic.write_text(cycle.to_label_txt,
                      "".join(f"{root / im['file_name']}\n" for im in selected_images))
    return {"images": len(selected_images), "boxes": len(anns)}


def detections_of(dump: Dump, rows: dict, image: dict, names: dict[int, str],
                  thresh: float) -> list[dict]:
    """The dump's detections of ``image`` scoring >= ``thresh``, best first, as
    [{"bbox", "category_id", "name", "score"}] with plain Python numbers. ``rows`` maps image
    ids to dump rows."""
    row = rows.get(image["id"])
    if row is None:
        raise DumpError(f"{dump.path}: no detections row for image id {image['id']} "
                        f"({image['file_name']}); rerun `al-det infer`")
    a, b = int(dump.offsets[row]), int(dump.offsets[row + 1])
    scores = [float(s) for s in dump.scores[a:b]]
    boxes, labels = dump.boxes[a:b], [int(v) for v in dump.labels[a:b]]
    keep = sorted((i for i in range(b - a) if scores[i] >= thresh), key=lambda i: -scores[i])
    unknown = sorted({labels[i] for i in keep} - set(names))
    if unknown:
        raise DumpError(f"{dump.path}: labels {unknown} are not the pool's category ids "
                        f"{sorted(names)}; rerun `al-det infer` with this work dir's model")
    return [{"bbox": [float(v) for v in boxes[i]], "category_id": labels[i],
             "name": names[labels[i]], "score": scores[i]} for i in keep]
