"""`torchrun --nproc_per_node 2 -m al_det infer|evaluate` on CPU over gloo gives what one
process gives: the same dump (images, detections, features up to float tolerance) and the
same metrics; and a second driver on a locked work dir is refused."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from al_det.cli import main
from al_det.dump import read_dump
from al_det.workdir import RunLock, Workdir

CONFIG = """\
seed: 1
cycles: 2
initial: 10
data:
  synthetic: {n_pool: 40, n_test: 10, image_size: 128, seed: 4}
model: {name: tiny_frcnn, min_size: 128, max_size: 128}
train: {epochs: 2, batch_size: 4, warmup_iters: 2, workers: 0}
infer: {batch_size: 3, workers: 0, score_thresh: 0.01, chunk_size: 5, feature_dtype: float32}
acquire: {strategy: enms_divproto, budget: 6}
"""


def al_det(*args: str, nproc: int = 1) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    if nproc == 1:
        cmd = [sys.executable, "-m", "al_det", *args]
    else:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone",
               "--nproc_per_node", str(nproc), "-m", "al_det", *args]
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("dist_infer")
    (root / "exp.yaml").write_text(CONFIG)
    CliRunner().invoke(main, ["init", "-c", str(root / "exp.yaml"), "-w", str(root / "wd")],
                       catch_exceptions=False)
    al_det("train", "-w", str(root / "wd"))
    return root / "wd"


@pytest.mark.dist
def test_two_process_dump_and_metrics_equal_one_process(trained: Path, tmp_path: Path) -> None:
    one, two = tmp_path / "one", tmp_path / "two"
    shutil.copytree(trained, one)
    shutil.copytree(trained, two)
    al_det("infer", "-w", str(one))
    al_det("evaluate", "-w", str(one))
    al_det("infer", "-w", str(two), nproc=2)
    al_det("evaluate", "-w", str(two), nproc=2)

    a, b = read_dump(one / "cycle_000" / "dump"), read_dump(two / "cycle_000" / "dump")
    assert a.image_ids == b.image_ids and len(a.image_ids) == 30
    assert np.array_equal(a.offsets, b.offsets) and np.array_equal(a.labels, b.labels)
    assert int(a.offsets[-1]) > 0
    np.testing.assert_allclose(a.scores, b.scores, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(a.boxes, b.boxes, rtol=1e-5, atol=1e-3)
    np.testing.assert_allclose(a.features, b.features, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(a.image_features, b.image_features, rtol=1e-4, atol=1e-5)
    assert not (two / "cycle_000" / "dump_shards").exists()

    ma = json.loads((one / "cycle_000" / "metrics.json").read_text())
    mb = json.loads((two / "cycle_000" / "metrics.json").read_text())
    assert ma["detections"] == mb["detections"] > 0
    assert ma["AP"] == pytest.approx(mb["AP"], abs=1e-6)


def test_second_driver_is_refused(trained: Path) -> None:
    config = trained.parent / "exp.yaml"
    with RunLock(Workdir(trained)):
        result = CliRunner().invoke(main, ["infer", "-w", str(trained)])
        again = CliRunner().invoke(main, ["init", "-c", str(config), "-w", str(trained)])
    assert result.exit_code == 2
    assert "another al-det process" in result.output and str(os.getpid()) in result.output
    assert again.exit_code == 2 and "another al-det process" in again.output
