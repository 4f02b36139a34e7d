"""Benchmark acquisition on a synthetic detections dump of a given size.

Writes (once; reused when it exists) a synthetic dump under ``--out``, streamed in chunks so
that a COCO-scale pool (94,630 images x 50 detections x 1024 float16, ~9.7 GB) is never held in
memory, plus a labeled COCO file (a quarter of the pool's size). The optional arrays come with
the strategies that read them: ``loss_pred.npy`` for ``learning_loss``; when ``cdal`` is asked,
the run's dump is ``dump-lab``, which holds the same number of candidates and the labeled
images too (their detections are cdal's initial centres), with ``probs.npy`` over the classes
(float16, softmax of logits peaked at each detection's label). It has the compiled kernels
built (or loaded from numba's disk cache) once, untimed: a one-off on the first use after
installing, shown apart. Then, each in a fresh subprocess so that peak memory is per
measurement, it times one plain sequential read of features.npy and every strategy asked for,
through the library entry point of ``al-det acquire`` (dump reading and validation included),
printing wall time, images/s and peak RSS (``ru_maxrss``, as ``/usr/bin/time -v`` reports it).
``--cold`` evicts the dump from the page cache before each measurement (posix_fadvise
DONTNEED), to time reads from disk.

    python scripts/bench_acquire.py --images 94630 --out /work/bench/coco20 --budget 5914
    python scripts/bench_acquire.py --images 94630 --out /work/bench/coco20 --budget 5914 \
        --strategies cdal,learning_loss
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

FILES = ("offsets", "boxes", "scores", "labels", "features")


def _write_npy_header(fh, dtype, shape) -> None:
    np.lib.format.write_array_header_1_0(
        fh, {"descr": np.lib.format.dtype_to_descr(np.dtype(dtype)), "fortran_order": False,
             "shape": tuple(shape)})


LAB_DUMP = {"cdal"}  # strategies whose initial centres are the labeled images: in the dump


def dump_dir(out: Path, strategy: str, strategies: list[str]) -> Path:
    """The dump a strategy is timed on: ``coreset-dump`` for coreset; else ``dump-lab`` (the
    candidates and the labeled images, with probs.npy) when cdal is among ``strategies``, so
    that one dump serves the whole run, and ``dump`` (the candidates only) otherwise."""
    if strategy == "coreset":
        return out / "coreset-dump"
    return out / ("dump-lab" if LAB_DUMP & set(strategies) else "dump")


def generate(args) -> None:
    """Write the synthetic dump the asked strategies need (reused when it exists), the
    labeled file, and the optional arrays: probs.npy for cdal, loss_pred.npy for
    learning_loss."""
    out = Path(args.out)
    strategies = args.strategies.split(",")
    n_lab = max(1, args.images // 4)
    if not (out / "labeled.json").exists():
        _labeled(out, n_lab, args.classes)
    if "coreset" in strategies:
        _write_dump(out / "dump", args, with_labeled=0)
        _image_features(out / "dump", args.images)
        _coreset_dump(out)
    dump = dump_dir(out, "", strategies)
    _write_dump(dump, args, with_labeled=n_lab if dump.name == "dump-lab" else 0)
    if dump.name == "dump-lab":
        _probs(dump, args.classes)
    if "learning_loss" in strategies:
        _loss_pred(dump)


def _labeled(out: Path, n_lab: int, ncls: int) -> None:
    rng = np.random.default_rng(5)
    cat_ids = np.arange(1, ncls + 1) * 2 - 1
    freq = 1.0 / np.arange(1, ncls + 1)
    freq /= freq.sum()
    lab_imgs = [{"id": i + 1, "file_name": f"l{i}.jpg", "width": 640, "height": 480}
                for i in range(n_lab)]
    anns = [{"id": k + 1, "image_id": int(rng.integers(1, len(lab_imgs) + 1)),
             "category_id": int(rng.choice(cat_ids, p=freq)), "iscrowd": 0, "area": 1.0,
             "bbox": [0, 0, 1, 1]} for k in range(len(lab_imgs) * 3)]
    cats = [{"id": int(i), "name": f"class{i}"} for i in cat_ids]
    out.mkdir(parents=True, exist_ok=True)
    (out / "labeled.json").write_text(json.dumps({"images": lab_imgs, "categories": cats,
                                                  "annotations": anns}))


def _write_dump(dump: Path, args, with_labeled: int) -> None:
    """The candidates (ids 10**6 + i), then ``with_labeled`` labeled images (ids 1..), with
    detections; features in chunks of images."""
    if (dump / "meta.json").exists():
        print(f"reusing {dump}")
        return
    tmp = dump.with_name(".tmp-" + dump.name)
    tmp.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    n, dim, ncls = args.images + with_labeled, args.dim, args.classes
    counts = np.minimum(rng.poisson(args.dets_per_image, n), 100)
    offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
    m = int(offsets[-1])
    np.save(tmp / "offsets.npy", offsets)
    cat_ids = np.arange(1, ncls + 1) * 2 - 1  # non-contiguous ids
    freq = 1.0 / np.arange(1, ncls + 1)  # Zipf-like class frequencies
    freq /= freq.sum()
    centres = rng.standard_normal((ncls, dim)).astype(np.float32)
    noise = rng.standard_normal((4096, dim)).astype(np.float32)
    fhs = {k: open(tmp / f"{k}.npy", "wb") for k in ("boxes", "scores", "labels", "features")}
    _write_npy_header(fhs["boxes"], np.float32, (m, 4))
    _write_npy_header(fhs["scores"], np.float32, (m,))
    _write_npy_header(fhs["labels"], np.int64, (m,))
    _write_npy_header(fhs["features"], args.dtype, (m, dim))
    step = 2000
    for a in range(0, n, step):
        b = min(n, a + step)
        c = counts[a:b]
        k_img = np.minimum(1 + rng.poisson(2.0, b - a), 8)  # ~3 classes per image
        img_cls = rng.choice(ncls, size=(b - a, 8), p=freq)
        det_img = np.repeat(np.arange(b - a), c)
        pick = (rng.random(len(det_img)) * k_img[det_img]).astype(np.int64)
        cls = img_cls[det_img, pick]
        # instances: class centre + a shared per-image part + detection noise, so cosine
        # similarities spread over about 0.2-0.95 (ENMS and DivProto both bite)
        shared = noise[rng.integers(0, 4096, b - a)][det_img] * 0.7
        feat = centres[cls] + shared + noise[rng.integers(0, 4096, len(cls))] * \
            rng.uniform(0.3, 1.5, len(cls)).astype(np.float32)[:, None]
        fhs["features"].write(feat.astype(args.dtype).tobytes())
        fhs["labels"].write(cat_ids[cls].astype(np.int64).tobytes())
        fhs["scores"].write(rng.beta(0.7, 1.5, len(cls)).astype(np.float32).tobytes())
        xy = rng.random((len(cls), 4)).astype(np.float32) * 300 + 1
        fhs["boxes"].write(xy.tobytes())
    for fh in fhs.values():
        fh.close()
    images = [{"id": 10**6 + i, "file_name": f"{i:08d}.jpg", "width": 640, "height": 480}
              for i in range(args.images)]
    images += [{"id": i + 1, "file_name": f"l{i}.jpg", "width": 640, "height": 480}
               for i in range(with_labeled)]
    cats = [{"id": int(i), "name": f"class{i}"} for i in cat_ids]
    meta = {"format": "al-det/detections", "version": 1, "feature_dim": dim,
            "categories": cats, "images": images}
    (tmp / "meta.json").write_text(json.dumps(meta))
    os.replace(tmp, dump)


def _probs(dump: Path, ncls: int) -> None:
    """probs.npy (float16, [M, C+1]) if the dump lacks it: per detection the softmax of
    random logits peaked at its label, streamed in chunks of labels.npy."""
    path = dump / "probs.npy"
    if path.exists():
        return
    labels = np.load(dump / "labels.npy", mmap_mode="r")
    cat_ids = np.arange(1, ncls + 1) * 2 - 1
    col = np.zeros(int(cat_ids.max()) + 1, np.int64)
    col[cat_ids] = np.arange(1, ncls + 1)
    tmp = dump / ".tmp-probs.npy"
    with open(tmp, "wb") as fh:
        _write_npy_header(fh, np.float16, (len(labels), ncls + 1))
        for k, a in enumerate(range(0, len(labels), 1 << 18)):
            rng = np.random.default_rng(10 + k)
            lab = col[np.asarray(labels[a:a + (1 << 18)])]
            logits = rng.standard_normal((len(lab), ncls + 1), np.float32)
            logits[np.arange(len(lab)), lab] += rng.uniform(1.0, 6.0, len(lab))
            logits[:, 0] += 1.0
            e = np.exp(logits - logits.max(axis=1, keepdims=True))
            fh.write((e / e.sum(axis=1, keepdims=True)).astype(np.float16).tobytes())
    os.replace(tmp, path)


def _loss_pred(dump: Path) -> None:
    """loss_pred.npy (float32, [N]) if the dump lacks it."""
    path = dump / "loss_pred.npy"
    if not path.exists():
        n = len(np.load(dump / "offsets.npy")) - 1
        np.save(dump / ".tmp-loss_pred.npy",
                np.random.default_rng(4).gamma(2.0, 1.0, n).astype(np.float32))
        os.replace(dump / ".tmp-loss_pred.npy", path)


def _coreset_dump(out: Path) -> None:
    """Core-set needs the labeled images in the dump (as initial centres) and reads only
    ``image_features``: a dump of the same candidates plus the labeled images, with their
    image features and no detections, so core-set runs at the same scale."""
    path = out / "coreset-dump"
    if (path / "meta.json").exists():
        return
    from al_det.dump import write_dump  # this child only; the timing parent stays small

    meta = json.loads((out / "dump" / "meta.json").read_text())
    lab = json.loads((out / "labeled.json").read_text())
    images = lab["images"] + meta["images"]
    feats = np.random.default_rng(2).standard_normal((len(lab["images"]), 256), np.float32)
    img_feats = np.concatenate([feats, np.load(out / "dump" / "image_features.npy")])
    write_dump(path, images, meta["categories"], np.zeros(len(images) + 1), np.zeros((0, 4)),
               np.zeros(0), np.zeros(0), np.zeros((0, meta["feature_dim"]), np.float16),
               image_features=img_feats)


def _image_features(dump: Path, n: int, dim: int = 256) -> None:
    """One image-level feature per image (what core-set uses), if the dump lacks them."""
    path = dump / "image_features.npy"
    if not path.exists():
        feats = np.random.default_rng(1).standard_normal((n, dim), dtype=np.float32)
        np.save(dump / ".tmp-image_features.npy", feats)
        os.replace(dump / ".tmp-image_features.npy", path)


def _evict(path: Path) -> None:
    for f in path.iterdir():
        fd = os.open(f, os.O_RDONLY)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        os.close(fd)


def _peak_rss_mib() -> tuple[float, float]:
    """(VmHWM of this process image, ru_maxrss). ru_maxrss survives exec on Linux, so the
    child is started from a small parent (see main) and both figures are shown."""
    hwm = 0.0
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmHWM:"):
                hwm = int(line.split()[1]) / 1024
    return hwm, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def run_one(args) -> None:
    """Child: one measurement, printed as JSON on the last line."""
    dump = dump_dir(Path(args.out), "", args.strategies.split(","))
    t0 = time.perf_counter()
    if args.run_one == "plain-read":
        buf = bytearray(64 << 20)
        with open(dump / "features.npy", "rb", buffering=0) as fh:
            while fh.readinto(buf):
                pass
        extra = {}
    else:
        from al_det.acquire import run_acquire_standalone
        dump = dump_dir(Path(args.out), args.run_one, args.strategies.split(","))
        sel = run_acquire_standalone(dump, Path(args.out) / "labeled.json", args.budget,
                                     args.run_one, Path(args.out) / f"sel-{args.run_one}.json",
                                     {})
        extra = {"main": sel.reasons.count("main"), "fill": sel.reasons.count("fill")}
    wall = time.perf_counter() - t0
    hwm, maxrss = _peak_rss_mib()
    ru = resource.getrusage(resource.RUSAGE_SELF)
    print(json.dumps({"what": args.run_one, "wall_s": round(wall, 2),
                      "cpu_s": round(ru.ru_utime + ru.ru_stime, 2),
                      "peak_rss_mib": round(hwm, 1), "ru_maxrss_mib": round(maxrss, 1),
                      **extra}))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--images", type=int, default=94630)
    ap.add_argument("--dets-per-image", type=float, default=50.0)
    ap.add_argument("--dim", type=int, default=1024)
    ap.add_argument("--dtype", choices=["float16", "float32"], default="float16")
    ap.add_argument("--classes", type=int, default=80)
    ap.add_argument("--budget", type=int, default=5914)
    ap.add_argument("--out", required=True)
    ap.add_argument("--strategies", default="enms_divproto")
    ap.add_argument("--cold", action="store_true", help="evict the dump from the page cache")
    ap.add_argument("--run-one", help=argparse.SUPPRESS)
    ap.add_argument("--generate-only", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.run_one:
        return run_one(args)
    if args.generate_only:
        return generate(args)
    # generate (or complete) the dump in a child process: keeps this parent's RSS small
    gen = [a for a in sys.argv if a != "--cold"]
    subprocess.run([sys.executable, __file__, "--generate-only"] + gen[1:], check=True)
    for what in args.strategies.split(","):
        dump = dump_dir(Path(args.out), what, args.strategies.split(","))
        size = (dump / "features.npy").stat().st_size / 2**30
        n_img = len(np.load(dump / "offsets.npy")) - 1
        print(f"{what}: dump {dump}: {n_img} images, features.npy {size:.2f} GiB")
    # the first use after installing compiles the kernels (then cached on disk): not timed
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-c", "from al_det.kernels import compile_all; "
                    "compile_all()"], check=True)
    print(f"kernels compiled or loaded from the cache in {time.perf_counter() - t0:.1f} s")
    plain = None
    for what in ["plain-read"] + args.strategies.split(","):
        if args.cold:
            _evict(dump_dir(Path(args.out), what, args.strategies.split(",")))
        cmd = [sys.executable, __file__, "--run-one", what, "--out", args.out,
               "--budget", str(args.budget), "--strategies", args.strategies]
        res = subprocess.run(cmd, capture_output=True, text=True)
        if res.returncode:
            lines = (res.stderr.strip() or res.stdout.strip() or "failed").splitlines()
            print(json.dumps({"what": what, "error": lines[-1]}))
            continue
        r = json.loads(res.stdout.strip().splitlines()[-1])
        r["images_per_s"] = round(args.images / r["wall_s"])
        plain = r["wall_s"] if what == "plain-read" else plain
        if plain:
            r["x_plain_read"] = round(r["wall_s"] / plain, 2)  # the target: at most 3
        print(json.dumps(r))


if __name__ == "__main__":
    main()
