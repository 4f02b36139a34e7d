"""Training on a tiny real detector: schedule, outputs, exact resume, NaN and corruption errors."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import pytest
import torch
from workdirs import make_workdir

from al_det import atomic, checkpoint, train
from al_det.config import DataConfig, ExperimentConfig, ModelConfig, TrainConfig
from al_det.errors import AlDetError, CocoError, ConfigError, WorkdirError
from al_det.workdir import Workdir


@pytest.fixture(autouse=True)
def one_thread() -> None:
    """One intra-op thread: deterministic sums, and no oversubscription of a shared CPU."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)




def make_cfg(demo: dict[str, Path], **train: object) -> ExperimentConfig:
    t = {"epochs": 2, "batch_size": 2, "lr": 0.01, "warmup_iters": 2, "workers": 0,
         "checkpoint_every": 100, "hflip": 0.5, **train}
    return ExperimentConfig(
        seed=3, device="cpu",
        data=DataConfig(pool=str(demo["pool"]), pool_images=str(demo["images"])),
        model=ModelConfig(name="tiny_frcnn", min_size=64, max_size=64),
        train=TrainConfig(**t),
    )


def read_log(wd: Workdir) -> list[dict]:
    return [json.loads(line) for line in wd.cycle(0).train_log.read_text().splitlines()]


def test_lr_schedule_hand_checked() -> None:
    t = TrainConfig(lr=0.02, warmup_iters=3, warmup_factor=0.1, lr_steps=(0.5, 0.75),
                    lr_gamma=0.1)
    got = [train.lr_at(i, 8, t) for i in range(8)]
    # warmup 0.1 -> 1 over 3 iterations, then x0.1 at round(0.5*8)=4 and round(0.75*8)=6
    want = [0.002, 0.008, 0.014, 0.02, 0.002, 0.002, 0.0002, 0.0002]
    assert got == pytest.approx(want, rel=1e-12)
    paper = TrainConfig(lr=0.02, warmup_iters=0)  # steps at 2/3 and 8/9 of training
    assert [train.lr_at(i, 9000, paper) for i in (5999, 6000, 7999, 8000)] == pytest.approx(
        [0.02, 0.002, 0.002, 0.0002])
    capped = TrainConfig(lr=1.0, warmup_iters=500, warmup_factor=0.0, lr_steps=())
    assert train.lr_at(5, 10, capped) == pytest.approx(0.5)  # warmup capped at total


def test_min_iters_rounds_up_to_whole_epochs() -> None:
    demo = TrainConfig(epochs=14, min_iters=200)
    # the demo's cycles: 40, 70, 100 and 130 images in batches of 8
    assert [train.schedule_length(demo, n) for n in (5, 9, 13, 17)] == [200, 207, 208, 238]
    assert train.schedule_length(TrainConfig(epochs=3), 7) == 21  # min_iters 0: epochs alone
    assert train.schedule_length(TrainConfig(epochs=3, min_iters=21), 7) == 21


def test_min_iters_trains_that_long(tmp_path: Path, demo_data: dict) -> None:
    wd = make_workdir(tmp_path / "wd", demo_data, n_images=3)
    cfg = make_cfg(demo_data, epochs=1, batch_size=2, min_iters=5)  # 2 per epoch: 3 epochs
    seen: list[int] = []
    train.run_train(wd, 0, cfg, on_iteration=seen.append)
    assert seen == [1, 2, 3, 4, 5, 6]
    assert read_log(wd)[-1]["epoch"] == 3


def test_train_config_checked_against_world_size() -> None:
    with pytest.raises(ConfigError, match="divisible by the 4 processes"):
        train.check_train_config(TrainConfig(batch_size=6), 4)
    with pytest.raises(ConfigError, match="lr_steps"):
        train.check_train_config(TrainConfig(lr_steps=(1.5,)), 1)
    train.check_train_config(TrainConfig(batch_size=8), 4)


def test_trains_and_writes_model_and_log(tmp_path: Path, demo_data: dict,
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(train, "LOG_EVERY", 2)
    wd = make_workdir(tmp_path / "wd", demo_data, n_images=3)
    cfg = make_cfg(demo_data, epochs=2, batch_size=2)  # 2 iterations per epoch, 4 in all
    seen = []
    path = train.run_train(wd, 0, cfg, on_iteration=seen.append)
    cycle = wd.cycle(0)
    assert path == cycle.model and seen == [1, 2, 3, 4]
    assert not cycle.last_ckpt.exists()  # the stage is done: model.pth alone remains
    saved = torch.load(path, weights_only=True)
    assert saved["name"] == "tiny_frcnn" and saved["num_classes"] == 6
    assert [c["id"] for c in saved["categories"]] == [3, 7, 11, 20, 42, 57]
    lines = read_log(wd)
    assert [ln["iter"] for ln in lines] == [2, 4]
    assert [ln["epoch"] for ln in lines] == [1, 2]
    assert lines[-1]["lr"] == pytest.approx(train.lr_at(3, 4, cfg.train))
    assert {"loss", "loss_classifier", "loss_box_reg", "time", "eta_s"} <= lines[-1].keys()
    model = checkpoint.load_trained(path, cfg, 6, "cpu")
    assert not model.training
    with torch.inference_mode():
        out = model([torch.rand(3, 128, 128)])
    assert set(out[0]) >= {"boxes", "scores", "labels"}
    assert train.run_train(wd, 0, cfg) == path  # done: not retrained
    assert len(read_log(wd)) == 2


def _state(path: Path) -> dict[str, torch.Tensor]:
    return torch.load(path, weights_only=True)["model"]


def test_sigterm_then_resume_equals_uninterrupted(tmp_path: Path, demo_data: dict) -> None:
    torch.use_deterministic_algorithms(True)
    try:
        cfg = make_cfg(demo_data, epochs=2, batch_size=2, checkpoint_every=100)
        full = make_workdir(tmp_path / "full", demo_data)
        train.run_train(full, 0, cfg)

        wd = make_workdir(tmp_path / "cut", demo_data)

        def preempt(i: int) -> None:
            if i == 1:  # mid-epoch: the rerun must restart inside epoch 0
                os.kill(os.getpid(), signal.SIGTERM)

        def original(signum: int, frame: object) -> None:  # ours, to see it come back
            raise AssertionError("the test's own SIGTERM handler ran")

        before = signal.signal(signal.SIGTERM, original)
        try:
            with pytest.raises(train.TrainingInterrupted) as info:
                train.run_train(wd, 0, cfg, on_iteration=preempt)
            restored = signal.getsignal(signal.SIGTERM)
        finally:
            signal.signal(signal.SIGTERM, before)
        assert info.value.exit_code == 143
        cycle = wd.cycle(0)
        assert torch.load(cycle.last_ckpt, weights_only=True)["iteration"] == 1
        assert (cycle.train_dir / "interrupted").exists() and not cycle.model.exists()
        assert restored is original  # the handler in place before training is back

        other = make_cfg(demo_data, epochs=2, batch_size=2, lr=0.5)
        with pytest.raises(WorkdirError, match="another training config"):
            train.run_train(wd, 0, other)

        seen = []
        train.run_train(wd, 0, cfg, on_iteration=seen.append)
        assert seen == [2, 3, 4]
        assert not (cycle.train_dir / "interrupted").exists()
    finally:
        torch.use_deterministic_algorithms(False)
    a, b = _state(full.cycle(0).model), _state(cycle.model)
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a), "resumed weights differ"
    assert [ln["iter"] for ln in read_log(wd) if "loss" in ln] == [4]


def test_nan_loss_names_images_and_keeps_checkpoint(tmp_path: Path, demo_data: dict,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    from al_det import models

    batches: list[list[int]] = []
    real_build = models.build_model

    def poisoned(*args: object, **kwargs: object) -> torch.nn.Module:
        net = real_build(*args, **kwargs)

        def hook(module: object, inputs: tuple, output: dict) -> dict:
            batches.append([t["image_id"] for t in inputs[1]])
            if len(batches) == 2:  # the second batch's loss blows up
                return {k: v * float("nan") for k, v in output.items()}
            return output

        net.register_forward_hook(hook)
        return net

    monkeypatch.setattr(models, "build_model", poisoned)
    wd = make_workdir(tmp_path / "wd", demo_data, n_images=4)
    cfg = make_cfg(demo_data, epochs=1, batch_size=2, checkpoint_every=1)
    with pytest.raises(AlDetError, match="non-finite loss") as info:
        train.run_train(wd, 0, cfg)
    msg = str(info.value)
    assert all(f"(image id {i})" in msg for i in batches[1])
    assert not any(f"(image id {i})" in msg for i in batches[0])
    assert torch.load(wd.cycle(0).last_ckpt, weights_only=True)["iteration"] == 1
    assert not wd.cycle(0).model.exists()


def test_corrupted_checkpoint_is_named_never_retrained(tmp_path: Path, demo_data: dict) -> None:
    wd = make_workdir(tmp_path / "wd", demo_data)
    cfg = make_cfg(demo_data)
    ckpt = wd.cycle(0).last_ckpt
    ckpt.parent.mkdir(parents=True)
    ckpt.write_bytes(b"PK\x03\x04 not really a checkpoint")
    with pytest.raises(WorkdirError, match="corrupted or unreadable") as info:
        train.run_train(wd, 0, cfg)
    assert str(ckpt) in str(info.value) and "delete it" in str(info.value)
    assert not wd.cycle(0).model.exists()

    model = tmp_path / "model.pth"
    model.write_bytes(b"\x00" * 100)
    with pytest.raises(WorkdirError, match=str(model)):
        checkpoint.load_trained(model, cfg, 6, "cpu")


def test_missing_image_error_names_file_and_id(tmp_path: Path, demo_data: dict) -> None:
    wd = make_workdir(tmp_path / "wd", demo_data, n_images=2)
    labeled = json.loads(wd.cycle(0).labeled.read_text())
    labeled["images"][1]["file_name"] = "gone.png"
    atomic.write_json(wd.cycle(0).labeled, labeled)
    cfg = make_cfg(demo_data, epochs=1, workers=1)  # the error crosses a worker process
    with pytest.raises(CocoError) as info:
        train.run_train(wd, 0, cfg)
    msg = str(info.value)
    assert "gone.png" in msg and f"image id {labeled['images'][1]['id']}" in msg
    assert "Traceback" not in msg
