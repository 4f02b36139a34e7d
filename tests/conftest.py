"""Shared fixtures: no network (in this process and in every Python process a test starts),
a tiny synthetic COCO dataset, repo paths."""

from __future__ import annotations

import os
import socket
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
NETGUARD = Path(__file__).resolve().parent / "netguard"

# Child processes (al-det, torchrun and its workers) import netguard/sitecustomize.py at start-up
# and install the same guard; set here, at import, so that every test's environment has it.
os.environ["AL_DET_TEST_NO_NETWORK"] = "1"
os.environ["PYTHONPATH"] = os.pathsep.join(
    p for p in (str(NETGUARD), os.environ.get("PYTHONPATH", "")) if p)
sys.path.insert(0, str(NETGUARD))
import sitecustomize as netguard  # noqa: E402 - the module the children run

if getattr(netguard, "install", None) is None:  # another sitecustomize shadowed ours
    raise RuntimeError(f"{NETGUARD}/sitecustomize.py is shadowed by {netguard.__file__}")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """``needs_cuda`` tests are skipped where no GPU is visible."""
    cuda_items = [item for item in items if "needs_cuda" in item.keywords]
    if not cuda_items:
        return  # no torch import for a session without them
    import torch

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in cuda_items:
        item.add_marker(skip)


@pytest.fixture(autouse=True)
def no_network(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fail any download: weights and data never come from the network in tests."""
    monkeypatch.setattr(socket.socket, "connect", netguard._guarded_connect)
    monkeypatch.setattr(socket.socket, "connect_ex", netguard._guarded_connect_ex)


@pytest.fixture(scope="session")
def demo_data(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A small synthetic detection dataset (COCO JSON + PNGs, non-contiguous category ids)."""
    from al_det.synthetic import generate

    return generate(tmp_path_factory.mktemp("demo"), n_pool=40, n_test=12, image_size=128, seed=1)
