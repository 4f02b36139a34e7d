"""The CUDA paths: AMP training, nccl process groups, GPU inference (skipped without a GPU).

On a CPU-only machine every test here is skipped by the ``needs_cuda`` marker (conftest); on a
GPU machine they run the same small fixtures as the CPU tests.
"""

from __future__ import annotations

import json
import math
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from test_train import make_cfg, make_workdir

from al_det import dist, infer, train
from al_det.config import ExperimentConfig
from al_det.dump import read_dump

pytestmark = pytest.mark.needs_cuda


def _on(cfg: ExperimentConfig, device: str, **train_changes: object) -> ExperimentConfig:
    import dataclasses

    return dataclasses.replace(cfg, device=device,
                               train=dataclasses.replace(cfg.train, **train_changes))


def test_amp_training_scales_losses_and_resumes(tmp_path: Path, demo_data: dict) -> None:
    cfg = _on(make_cfg(demo_data, epochs=2, batch_size=2, checkpoint_every=1), "cuda", amp=True)
    wd = make_workdir(tmp_path / "wd", demo_data, n_images=4)
    seen: list[dict] = []

    def look(i: int) -> None:
        if i == 1:
            seen.append(torch.load(wd.cycle(0).last_ckpt, weights_only=True))

    try:
        train.run_train(wd, 0, cfg, on_iteration=look)
    finally:
        dist.cleanup()
    scaler = seen[0]["scaler"]
    assert scaler and scaler["scale"] > 0  # the GradScaler was on and its state saved
    model = torch.load(wd.cycle(0).model, weights_only=True)["model"]
    assert all(torch.isfinite(v).all() for v in model.values() if v.is_floating_point())


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="nccl with 2 ranks needs 2 GPUs")
@pytest.mark.dist
def test_nccl_two_ranks_all_reduce(tmp_path: Path) -> None:
    script = tmp_path / "nccl.py"
    script.write_text(textwrap.dedent("""
        import torch
        from al_det import dist
        info = dist.init_distributed("auto")
        assert torch.distributed.get_backend() == "nccl", torch.distributed.get_backend()
        assert info.device == torch.device("cuda", info.local_rank)
        total = dist.all_reduce_sum(torch.ones(1, device=info.device) * (info.rank + 1))
        assert total.item() == 3.0, total
        assert dist.all_gather_object(info.rank) == [0, 1]
        dist.barrier()
        print("ok", info.rank, flush=True)
        dist.cleanup()
    """))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node",
           "2", str(script)]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    assert sorted(out.stdout.split("\n")[:2]) == ["ok 0", "ok 1"]


def test_gpu_inference_matches_cpu(tmp_path: Path, demo_data: dict) -> None:
    cfg = make_cfg(demo_data, epochs=1, batch_size=2)
    cpu = make_workdir(tmp_path / "cpu", demo_data, n_images=4)
    train.run_train(cpu, 0, cfg)
    dist.cleanup()
    pool = json.loads(Path(demo_data["pool"]).read_text())
    labeled = {im["id"] for im in json.loads(cpu.cycle(0).labeled.read_text())["images"]}
    unlabeled = dict(pool, images=[im for im in pool["images"] if im["id"] not in labeled][:8],
                     annotations=[])
    cpu.cycle(0).unlabeled.write_text(json.dumps(unlabeled))
    shutil.copytree(cpu.root, tmp_path / "gpu")
    gpu = type(cpu)(tmp_path / "gpu")
    for wd, device in ((cpu, "cpu"), (gpu, "cuda")):
        c = _on(cfg, device)
        dist.init_distributed(c.device)
        try:
            infer.run_infer(wd, 0, c)
        finally:
            dist.cleanup()
    a, b = read_dump(cpu.cycle(0).dump), read_dump(gpu.cycle(0).dump)
    assert a.image_ids == b.image_ids and len(a.image_ids) == 8
    # the same detections; scores and features up to GPU arithmetic
    top = [int(a.offsets[i]) for i in range(8) if a.offsets[i + 1] > a.offsets[i]]
    assert top and math.isclose(float(a.offsets[-1]), float(b.offsets[-1]), rel_tol=0.2)
    np.testing.assert_allclose(a.scores[top], b.scores[top], rtol=1e-2, atol=1e-3)
    np.testing.assert_allclose(a.image_features, b.image_features, rtol=1e-2, atol=1e-3)
