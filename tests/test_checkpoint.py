"""The resumable checkpoint format, owned by checkpoint.py: round trip and refusals."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from al_det import checkpoint
from al_det.errors import WorkdirError


def _state(seed: int, iteration: int = 0, chash: str = "abc") -> checkpoint.TrainingState:
    torch.manual_seed(seed)
    net = torch.nn.Linear(3, 2)
    opt = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9)
    net(torch.ones(1, 3)).sum().backward()
    opt.step()  # momentum buffers exist: the optimizer state is not empty
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    return checkpoint.TrainingState(net, opt, scaler, iteration, 10, 1, chash, 12.5)


def test_round_trip_restores_weights_optimizer_rng_and_counters(tmp_path: Path) -> None:
    path = tmp_path / "last.pth"
    saved = _state(seed=1, iteration=4)
    torch.manual_seed(7)
    checkpoint.save_last(path, saved, [checkpoint.rng_state()])
    expected_draw = torch.rand(3)

    fresh = _state(seed=2)
    checkpoint.resume(path, fresh, rank=0)
    assert (fresh.iteration, fresh.elapsed) == (4, 12.5)
    assert torch.equal(fresh.net.weight, saved.net.weight)
    buf = fresh.optimizer.state_dict()["state"][0]["momentum_buffer"]
    assert torch.equal(buf, saved.optimizer.state_dict()["state"][0]["momentum_buffer"])
    assert torch.equal(torch.rand(3), expected_draw)  # the RNG continues where it was saved


def test_other_config_or_version_is_refused_naming_the_file(tmp_path: Path) -> None:
    path = tmp_path / "last.pth"
    checkpoint.save_last(path, _state(seed=1), [checkpoint.rng_state()])
    with pytest.raises(WorkdirError, match="another training config") as info:
        checkpoint.resume(path, _state(seed=1, chash="other"), rank=0)
    assert str(path) in str(info.value) and "delete it" in str(info.value)
    ckpt = torch.load(path, weights_only=True)
    torch.save(dict(ckpt, version=2), path)
    with pytest.raises(WorkdirError, match=r"not an al-det training checkpoint \(version 1\)"):
        checkpoint.resume(path, _state(seed=1), rank=0)
