"""The training seam: per-image losses and feature maps of every detector family.

torchvision averages each loss term over the batch; the adapters' training forward must give
the stock batch terms exactly (same seed, same random draws) and per-image terms whose mean
is the batch term. The images share size and box geometry (labels differ), so every image has
the same sampled-RoI / foreground count and the averages are exact up to float rounding.
"""

from __future__ import annotations

import pytest
import torch

from al_det import models
from al_det.config import ModelConfig

K = 3
FAMILIES = {  # one model per family, and the stock loss terms it has
    "tiny_frcnn": {"loss_classifier", "loss_box_reg", "loss_objectness", "loss_rpn_box_reg"},
    "retinanet_resnet50_fpn": {"classification", "bbox_regression"},
    "fcos_resnet50_fpn": {"classification", "bbox_regression", "bbox_ctrness"},
    "ssd300_vgg16": {"classification", "bbox_regression"},
}
PER_IMAGE = {"tiny_frcnn": {"loss_classifier", "loss_box_reg"}}  # the box head's terms only


@pytest.fixture(autouse=True)
def one_thread() -> None:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # deterministic reductions, no oversubscription
    yield
    torch.set_num_threads(threads)


def _build(name: str) -> torch.nn.Module:
    torch.manual_seed(0)
    cfg = ModelConfig(name=name, min_size=128, max_size=128)
    return models.build_model(cfg, K)


def _batch() -> tuple[list[torch.Tensor], list[dict[str, torch.Tensor]]]:
    gen = torch.Generator().manual_seed(3)
    images = [torch.rand(3, 128, 128, generator=gen) for _ in range(2)]
    boxes = torch.tensor([[10.0, 12.0, 60.0, 70.0], [50.0, 40.0, 120.0, 100.0]])
    targets = [{"boxes": boxes.clone(), "labels": torch.tensor(labels)}
               for labels in ([1, 3], [2, 2])]
    return images, targets


@pytest.mark.slow
@pytest.mark.parametrize("name", list(FAMILIES))
def test_per_image_terms_average_to_stock_batch_terms(name: str) -> None:
    model = _build(name).train()
    images, targets = _batch()
    torch.manual_seed(11)
    stock = model(images, targets)
    torch.manual_seed(11)
    out = models.forward_train(model, images, targets)
    assert set(stock) == FAMILIES[name] == set(out.losses)
    for term in stock:  # the replayed forward is the stock one, bit for bit
        assert torch.equal(stock[term].detach(), out.losses[term].detach()), term
    assert set(out.per_image) == PER_IMAGE.get(name, FAMILIES[name])
    for term, values in out.per_image.items():
        assert values.shape == (2,) and torch.isfinite(values).all()
        torch.testing.assert_close(values.mean(), stock[term], rtol=1e-5, atol=1e-7)
        assert values[0] != values[1], f"{term}: both images got the same term"
    torch.manual_seed(11)
    total = models.per_image_losses(model, images, targets)
    expected = sum(out.per_image[t] for t in sorted(out.per_image))
    assert torch.equal(total.detach(), expected.detach())


@pytest.mark.slow
@pytest.mark.parametrize("name", ["retinanet_resnet50_fpn", "fcos_resnet50_fpn",
                                  "ssd300_vgg16"])
def test_single_stage_terms_are_each_image_alone(name: str) -> None:
    """In eval mode (BN running stats: no mixing across the batch, no random draw) an image's
    terms from a batch of two equal those of a batch of that image alone."""
    model = _build(name).eval()
    images, targets = _batch()
    with torch.no_grad():
        pair = models.forward_train(model, images, targets).per_image
        for i in range(2):
            alone = models.forward_train(model, images[i:i + 1], targets[i:i + 1]).per_image
            for term in pair:
                torch.testing.assert_close(pair[term][i], alone[term][0], rtol=1e-4, atol=1e-6)


def test_per_image_losses_have_gradients() -> None:
    model = _build("tiny_frcnn").train()
    images, targets = _batch()
    losses = models.per_image_losses(model, images, targets)
    assert losses.shape == (2,)
    losses.sum().backward()
    grad = model.roi_heads.box_predictor.cls_score.weight.grad
    assert grad is not None and grad.abs().sum() > 0


@pytest.mark.parametrize(("name", "levels"), [
    ("tiny_frcnn", ["0", "1", "2"]),  # its FPN has no extra pooled level
    pytest.param("retinanet_resnet50_fpn", ["0", "1", "2", "p6", "p7"], marks=pytest.mark.slow),
    pytest.param("ssd300_vgg16", ["0", "1", "2", "3", "4", "5"], marks=pytest.mark.slow),
])
def test_feature_maps_name_the_levels(name: str, levels: list[str]) -> None:
    """FPN levels for FPN models, SSD's six source maps; the maps the training forward uses."""
    model = _build(name).eval()
    images, targets = _batch()
    with torch.no_grad():
        maps = models.feature_maps(model, images)
        trained = models.forward_train(model, images, targets).maps
    assert list(maps) == levels == list(trained)
    assert all(m.shape[0] == 2 and torch.equal(m, trained[k]) for k, m in maps.items())
    sides = [m.shape[-1] for m in maps.values()]
    assert sides == sorted(sides, reverse=True)  # finest first
