"""The detections dump: round trip, and one rejection per rule of detections-dump.md."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from al_det.dump import read_dump, write_dump
from al_det.errors import DumpError
from al_det.workdir import Cycle

CATS = [{"id": 3, "name": "cat"}, {"id": 7, "name": "dog"}]
IMAGES = [{"id": 11, "file_name": "a.jpg", "width": 8, "height": 8},
          {"id": 22, "file_name": "b.jpg", "width": 8, "height": 8},
          {"id": 33, "file_name": "c.jpg", "width": 8, "height": 8}]


def arrays(dtype=np.float16):
    return dict(offsets=[0, 2, 2, 3], boxes=np.ones((3, 4)), scores=[0.9, 0.1, 0.5],
                labels=[3, 7, 3], features=np.arange(12).reshape(3, 4).astype(dtype))


def make(tmp_path, **over):
    kw = arrays()
    kw.update(over)
    return write_dump(tmp_path / "dump", IMAGES, CATS, **kw)


@pytest.mark.parametrize("dtype", [np.float16, np.float32])
def test_round_trip(tmp_path, dtype):
    path = make(tmp_path, features=arrays(dtype)["features"], image_features=np.zeros((3, 2)),
                extra_meta={"model": "frcnn"})
    d = read_dump(path)
    assert d.image_ids == [11, 22, 33] and d.categories == CATS and d.feature_dim == 4
    assert d.features.dtype == dtype and isinstance(d.features, np.memmap)
    assert d.offsets.tolist() == [0, 2, 2, 3] and d.labels.dtype == np.int64
    assert d.scores.dtype == np.float32 and d.image_features.shape == (3, 2)
    assert d.meta["model"] == "frcnn" and d.features_checked


def test_no_detections_at_all(tmp_path):
    path = write_dump(tmp_path / "d", IMAGES, CATS, [0, 0, 0, 0], np.zeros((0, 4)), [], [],
                      np.zeros((0, 5), np.float16))
    assert read_dump(path).features.shape == (0, 5)


def test_rewrite_replaces_atomically(tmp_path):
    make(tmp_path)
    make(tmp_path, scores=[0.2, 0.2, 0.2])
    assert read_dump(tmp_path / "dump").scores.tolist() == pytest.approx([0.2] * 3)
    assert [p.name for p in tmp_path.iterdir()] == ["dump"]


def test_interrupted_writer_leaves_no_dump(tmp_path):
    with pytest.raises(DumpError):
        make(tmp_path, features=np.zeros(3))  # fails inside the writer
    assert not (tmp_path / "dump").exists()


def _edit_meta(path, **kv):
    meta = json.loads((path / "meta.json").read_text())
    meta.update(kv)
    (path / "meta.json").write_text(json.dumps(meta))


@pytest.mark.parametrize("case, match", [
    ("missing_file", "labels.npy: missing"),
    ("missing_dir", "not found"),
    ("bad_format", "unknown format/version"),
    ("bad_version", "unknown format/version"),
    ("meta_not_json", "not valid JSON"),
    ("dup_image", "duplicate image id 22"),
    ("offsets_len", "offsets.npy: must be integer"),
    ("offsets_start", "not a valid CSR"),
    ("offsets_decreasing", "not a valid CSR"),
    ("scores_len", "scores.npy: expected shape"),
    ("features_dim", "features.npy: expected shape"),
    ("not_npy", "not a readable NumPy"),
])
def test_structure_rejected(tmp_path, case, match):
    path = make(tmp_path)
    if case == "missing_file":
        (path / "labels.npy").unlink()
    elif case == "missing_dir":
        path = tmp_path / "nope"
    elif case == "bad_format":
        _edit_meta(path, format="other")
    elif case == "bad_version":
        _edit_meta(path, version=2)
    elif case == "meta_not_json":
        (path / "meta.json").write_text("{")
    elif case == "dup_image":
        _edit_meta(path, images=IMAGES[:2] + [IMAGES[1]])
    elif case == "offsets_len":
        np.save(path / "offsets.npy", np.array([0, 3], np.int64))
    elif case == "offsets_start":
        np.save(path / "offsets.npy", np.array([1, 2, 2, 3], np.int64))
    elif case == "offsets_decreasing":
        np.save(path / "offsets.npy", np.array([0, 2, 1, 3], np.int64))
    elif case == "scores_len":
        np.save(path / "scores.npy", np.zeros(2, np.float32))
    elif case == "features_dim":
        _edit_meta(path, feature_dim=5)
    elif case == "not_npy":
        (path / "boxes.npy").write_bytes(b"garbage")
    with pytest.raises(DumpError, match=match):
        read_dump(path)


@pytest.mark.parametrize("field, value, match", [
    ("labels", [3, 5, 3], "row 1 has label 5"),
    ("scores", [0.9, 1.5, 0.5], "row 1 has score 1.5"),
    ("scores", [0.9, -0.1, 0.5], "row 1 has score"),
    ("scores", [0.9, 0.1, np.nan], "row 2 has score nan"),
    ("boxes", [[1, 1, 1, 1], [1, np.inf, 1, 1], [1, 1, 1, 1]], "boxes.npy: NaN or infinity"),
])
def test_values_rejected(tmp_path, field, value, match):
    with pytest.raises(DumpError, match=match):
        read_dump(make(tmp_path, **{field: value}))


@pytest.mark.parametrize("dtype", [np.float16, np.float32])
@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_feature_nan_rejected(tmp_path, dtype, bad):
    f = arrays(dtype)["features"]
    f[2, 1] = bad
    path = make(tmp_path, features=f)
    with pytest.raises(DumpError, match="features.npy: NaN or infinity in detection row 2"):
        read_dump(path)
    d = read_dump(path, check_features=False)  # deferred: acquisition's pass rejects it
    from al_det.acquire import select_images
    lab = {"images": [], "categories": CATS, "annotations": []}
    for strategy in ("enms_divproto", "entropy"):
        with pytest.raises(DumpError, match="row 2"):
            select_images(d, lab, 1, strategy, {})


def test_large_float16_values_are_finite(tmp_path):
    f = np.full((3, 4), 65504, np.float16)  # largest finite half
    dump = read_dump(make(tmp_path, features=f))
    assert dump.features.dtype == np.float16 and np.array_equal(dump.features, f)


def test_image_features_nan_rejected(tmp_path):
    with pytest.raises(DumpError, match="image_features.npy"):
        read_dump(make(tmp_path, image_features=np.full((3, 2), np.nan)))


def test_reading_does_not_import_torch():
    code = ("import sys, al_det.acquire, al_det.dump, al_det.strategies; "
            "assert 'torch' not in sys.modules, 'torch imported'")
    subprocess.run([sys.executable, "-c", code], check=True)


# ------------------------------------------------ dtypes, probs.npy, loss_pred.npy (spec table)

def probs3(dtype=np.float32):
    """Valid probs for the 3 detections of arrays(): background + the 2 categories."""
    return np.array([[0.1, 0.6, 0.3], [0.0, 0.0, 1.0], [0.5, 0.25, 0.25]], dtype)


@pytest.mark.parametrize("dtype", [np.float16, np.float32])
def test_round_trip_optional_arrays(tmp_path, dtype):
    path = make(tmp_path, probs=probs3(dtype), loss_pred=[0.5, 2.0, 1.0])
    d = read_dump(path)
    assert d.probs.dtype == dtype and d.probs.shape == (3, 3)
    assert d.loss_pred.dtype == np.float32 and d.loss_pred.tolist() == [0.5, 2.0, 1.0]
    assert read_dump(make(tmp_path)).probs is None and read_dump(path).image_features is None


@pytest.mark.parametrize("name, bad, want", [
    ("offsets", np.array([0, 2, 2, 3], np.int32), "int64"),
    ("boxes", np.ones((3, 4), np.float64), "float32"),
    ("scores", np.array([0.9, 0.1, 0.5], np.float64), "float32"),
    ("labels", np.array([3, 7, 3], np.int32), "int64"),
    ("features", np.zeros((3, 4), np.float64), "float16 or float32"),
    ("image_features", np.zeros((3, 2), np.float64), "float32"),
    ("probs", probs3(np.float64), "float16 or float32"),
    ("loss_pred", np.zeros(3, np.float64), "float32"),
])
def test_dtype_other_than_the_table_rejected_with_the_conversion(tmp_path, name, bad, want):
    path = make(tmp_path, probs=probs3(), loss_pred=np.zeros(3), image_features=np.zeros((3, 2)))
    np.save(path / f"{name}.npy", bad)
    to = want.split(" or ")[-1]
    msg = (f"{name}.npy is {bad.dtype}; save it as {want}: "
           f"np.save(path, {name}.astype(np.{to}))")
    with pytest.raises(DumpError) as err:
        read_dump(path)
    assert str(err.value) == f"{path / (name + '.npy')}: {msg}"
    np.save(path / f"{name}.npy", bad.astype(to))  # the conversion the message says works
    read_dump(path)


@pytest.mark.parametrize("probs, match", [
    (probs3()[:, :2], r"probs.npy: 2 columns, expected C\+1 = 3"),
    (probs3()[:2], r"probs.npy: expected \[M=3, C\+1=3\]"),
    (probs3()[:, 0], r"probs.npy: expected \[M=3, C\+1=3\]"),
    (probs3() * [[1], [1], [0.99]], "detection row 2 sums to 0.99, not 1"),
    (np.array([[0.1, 0.6, 0.3], [-0.01, 0.01, 1.0], [0.5, 0.25, 0.25]]),
     "detection row 1 has a negative probability"),
    (np.array([[0.1, 0.6, 0.3], [0.0, 0.0, 1.0], [0.5, np.nan, 0.5]]),
     "probs.npy: NaN or infinity in detection row 2"),
    (np.array([[0.1, 0.6, 0.3], [0.0, np.inf, 1.0], [0.5, 0.25, 0.25]]),
     "probs.npy: NaN or infinity in detection row 1"),
])
def test_probs_rejected(tmp_path, probs, match):
    with pytest.raises(DumpError, match=match):
        read_dump(make(tmp_path, probs=np.asarray(probs, np.float32)))


def test_probs_within_tolerance_and_float16_rounding_accepted(tmp_path):
    p = probs3() * [[1], [1], [1.0009]]  # sums to 1.0009: within 1e-3
    read_dump(make(tmp_path, probs=p.astype(np.float32)))
    rng = np.random.default_rng(0)
    q = rng.dirichlet(np.full(3, 0.3), 3)  # rounding to float16 keeps sums within 1e-3
    read_dump(make(tmp_path, probs=q.astype(np.float16)))


def test_probs_bad_row_named_across_chunks(tmp_path, monkeypatch):
    import al_det.dump as dump_mod
    monkeypatch.setattr(dump_mod, "CHUNK_BYTES", 24)  # two rows of float32 x 3 per chunk
    n = 40
    images = [{"id": i, "file_name": f"{i}.jpg", "width": 8, "height": 8} for i in range(n)]
    p = np.tile([[0.2, 0.4, 0.4]], (n, 1)).astype(np.float32)
    p[33, 1] = 0.5
    path = write_dump(tmp_path / "d", images, CATS, np.arange(n + 1), np.ones((n, 4)),
                      np.full(n, 0.5), np.full(n, 3), np.ones((n, 2), np.float16), probs=p)
    with pytest.raises(DumpError, match="detection row 33 sums to 1.1"):
        read_dump(path)


@pytest.mark.parametrize("loss_pred, match", [
    ([0.5, np.nan, 1.0], r"loss_pred.npy: NaN or infinity in image row 1"),
    ([0.5, 1.0, -np.inf], r"loss_pred.npy: NaN or infinity in image row 2"),
    ([0.5, 1.0], r"loss_pred.npy: expected float32 \[N=3\]"),
])
def test_loss_pred_rejected(tmp_path, loss_pred, match):
    with pytest.raises(DumpError, match=match):
        read_dump(make(tmp_path, loss_pred=loss_pred))


def test_image_features_nan_names_its_row(tmp_path, monkeypatch):
    import al_det.dump as dump_mod
    monkeypatch.setattr(dump_mod, "CHUNK_BYTES", 8)  # one row per chunk
    f = np.zeros((3, 2))
    f[2, 1] = np.nan
    with pytest.raises(DumpError, match=r"image_features.npy: NaN or infinity in image row 2;"):
        read_dump(make(tmp_path, image_features=f))


# --------------------------------------------------------------------------- infer's merge
def _chunks(tmp_path, sizes=(2, 1)):
    """Chunk dumps of IMAGES as infer writes them (chunk_NNNNN under dump_shards)."""
    cycle = Cycle(tmp_path)
    chunks, start = [], 0
    for c, n in enumerate(sizes):
        images = IMAGES[start:start + n]
        write_dump(cycle.chunk(c), images, CATS, offsets=list(range(n + 1)),
                   boxes=np.ones((n, 4)), scores=[0.5] * n, labels=[3] * n,
                   features=np.full((n, 4), c + 1, np.float32),
                   image_features=np.zeros((n, 2), np.float32))
        chunks.append(images)
        start += n
    return cycle, chunks


def test_merge_of_chunks_equals_their_concatenation(tmp_path):
    from al_det.infer import merge_chunks

    cycle, chunks = _chunks(tmp_path)
    pool = {"images": IMAGES, "categories": CATS}
    merge_chunks(cycle, chunks, pool, {"cycle": 0})
    dump = read_dump(tmp_path / "dump")
    assert dump.image_ids == [11, 22, 33] and dump.offsets.tolist() == [0, 1, 2, 3]
    assert np.asarray(dump.features)[:, 0].tolist() == [1, 1, 2]


def test_merge_names_a_missing_shard(tmp_path):
    import shutil

    from al_det.infer import merge_chunks

    cycle, chunks = _chunks(tmp_path)
    shutil.rmtree(cycle.chunk(1))
    with pytest.raises(DumpError, match=r"chunk_00001: shard missing or stale; rerun"):
        merge_chunks(cycle, chunks, {"images": IMAGES, "categories": CATS}, {})
    assert not (tmp_path / "dump").exists()


def test_merge_names_a_stale_shard(tmp_path):
    """A chunk written for other images (the pool changed, or another chunk size) is not
    reused as if it were this one."""
    from al_det.infer import merge_chunks

    cycle, _ = _chunks(tmp_path, sizes=(2, 1))
    now = [IMAGES[:1], IMAGES[1:]]  # chunk 0 now holds one image, not two
    with pytest.raises(DumpError, match=r"chunk_00000: shard missing or stale; rerun"):
        merge_chunks(cycle, now, {"images": IMAGES, "categories": CATS}, {})
    assert not (tmp_path / "dump").exists()
