"""The detector adapter: every model builds offline, features ride on the stock detections."""

from __future__ import annotations

import pytest
import torch
import torchvision
from torchvision.models._api import WeightsEnum

from al_det import models
from al_det.config import CHOICES, ModelConfig
from al_det.errors import AlDetError, ConfigError
from al_det.model_names import MODEL_NAMES

K = 3  # foreground classes
FAST = ["tiny_frcnn", "fasterrcnn_mobilenet_v3_large_fpn"]
SLOW = ["fasterrcnn_resnet50_fpn", "fasterrcnn_resnet101_fpn", "retinanet_resnet50_fpn",
        "fcos_resnet50_fpn", "ssd300_vgg16"]


def _build(name: str, size: int = 64, score_thresh: float = 0.0, **kw: object) -> torch.nn.Module:
    torch.manual_seed(0)
    cfg = ModelConfig(name=name, min_size=size, max_size=size, **kw)
    return models.build_model(cfg, K, score_thresh=score_thresh, detections_per_img=30).eval()


def _images() -> list[torch.Tensor]:
    # Two sizes: the batch is padded and each image resized by its own ratio.
    gen = torch.Generator().manual_seed(1)
    return [torch.rand(3, 80, 96, generator=gen), torch.rand(3, 70, 60, generator=gen)]


def _check_against_stock(model: torch.nn.Module) -> list[dict[str, torch.Tensor]]:
    images = _images()
    with torch.no_grad():
        stock = model(images)
    out = models.predict_with_features(model, images)
    d, d2 = models.feature_dim(model), models.image_feature_dim(model)
    for ref, got, img in zip(stock, out, images, strict=True):
        assert len(got["boxes"]) > 0
        for key in ("boxes", "scores", "labels"):
            assert torch.equal(ref[key], got[key]), key
        assert got["labels"].min() >= 1 and got["labels"].max() <= K
        h, w = img.shape[-2:]
        assert got["boxes"][:, 2].max() <= w + 1e-3 and got["boxes"][:, 3].max() <= h + 1e-3
        feats = got["features"]
        assert feats.dtype == torch.float32 and feats.shape == (len(got["boxes"]), d)
        assert torch.isfinite(feats).all()
        assert (feats - feats[0]).abs().max() > 0, "features constant across detections"
        assert got["image_feature"].shape == (d2,) and got["image_feature"].dtype == torch.float32
        assert torch.isfinite(got["image_feature"]).all()
    assert not torch.equal(out[0]["image_feature"], out[1]["image_feature"])
    return out


def test_registry_matches_config_choices() -> None:
    assert tuple(models.ADAPTERS) == MODEL_NAMES == CHOICES["model.name"]


def test_model_not_built_by_al_det_is_refused() -> None:
    stock = torchvision.models.detection.fasterrcnn_mobilenet_v3_large_fpn(
        weights=None, weights_backbone=None, num_classes=K + 1)
    with pytest.raises(AlDetError, match="build_model"):
        models.feature_dim(stock)


@pytest.mark.parametrize("name", FAST)
def test_fast_models_match_stock_detections(name: str) -> None:
    model = _build(name)
    _check_against_stock(model)
    assert models.feature_dim(model) == 1024
    assert not model.training


@pytest.mark.slow
@pytest.mark.parametrize("name", SLOW)
def test_large_models_match_stock_detections(name: str) -> None:
    model = _build(name)
    if name == "fasterrcnn_resnet101_fpn":
        _calibrate_batchnorm(model)
    _check_against_stock(model)
    expected = {"fasterrcnn_resnet50_fpn": (1024, 256), "fasterrcnn_resnet101_fpn": (1024, 256),
                "retinanet_resnet50_fpn": (256, 256),
                "fcos_resnet50_fpn": (256, 256), "ssd300_vgg16": (1536, 1536)}[name]
    assert (models.feature_dim(model), models.image_feature_dim(model)) == expected
    models.set_inference_params(model, 0.25, 7)
    target = getattr(model, "roi_heads", model)  # Faster R-CNN keeps them on its RoI heads
    assert (target.score_thresh, target.detections_per_img) == (0.25, 7)


def _calibrate_batchnorm(model: torch.nn.Module) -> None:
    """Set BN running stats to one batch's: ResNet-101's 33 random-init bottlenecks otherwise
    grow activations to ~1e4 in eval mode, and the RPN keeps no proposal at all."""
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.momentum = 1.0
    model.train()
    with torch.no_grad():
        model.backbone(model.transform(_images())[0].tensors)
    model.eval()


def test_r101_is_resnet101_and_takes_imagenet_backbone_weights(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """ResNet101_Weights fetched for the backbone, frozen BN as torchvision does, 23 blocks in
    layer3 (ResNet-50 has 6)."""
    calls = []
    torch.manual_seed(0)
    state = torchvision.models.resnet101().state_dict()

    def fake_fetch(self: WeightsEnum, *a: object, **kw: object) -> dict:
        calls.append(self)
        return state

    monkeypatch.setattr(WeightsEnum, "get_state_dict", fake_fetch)
    model = _build("fasterrcnn_resnet101_fpn", weights_backbone="IMAGENET1K_V1")
    assert calls == [torchvision.models.ResNet101_Weights.IMAGENET1K_V1]
    body = model.backbone.body
    assert len(body.layer3) == 23 and isinstance(body.bn1, torchvision.ops.FrozenBatchNorm2d)
    assert torch.equal(body.layer3[22].conv1.weight, state["layer3.22.conv1.weight"])
    assert not body.layer1[0].conv1.weight.requires_grad  # 3 trainable layers by default
    assert body.layer2[0].conv1.weight.requires_grad


def test_frcnn_feature_is_box_head_output_of_the_box() -> None:
    """With box regression zeroed, each final box is its proposal: re-pooling it gives the
    feature. Every proposal also yields one box per class, which must share that feature."""
    model = _build("tiny_frcnn", size=128)
    models.set_inference_params(model, 0.0, 1000)  # keep every class-box of each proposal
    predictor = model.roi_heads.box_predictor.bbox_pred
    torch.nn.init.zeros_(predictor.weight)
    torch.nn.init.zeros_(predictor.bias)
    image = torch.rand(3, 128, 128, generator=torch.Generator().manual_seed(2))
    (out,) = models.predict_with_features(model, [image])  # 128 px: the resize ratio is 1
    with torch.no_grad():
        (stock,) = model([image])
        image_list, _ = model.transform([image])
        maps = model.backbone(image_list.tensors)
        heads = model.roi_heads
        pooled = heads.box_roi_pool(maps, [out["boxes"]], image_list.image_sizes)
        expected = heads.box_head(pooled)
    assert torch.equal(stock["boxes"], out["boxes"])
    torch.testing.assert_close(out["features"], expected, rtol=1e-4, atol=1e-4)
    same_box = (out["boxes"][:, None] == out["boxes"][None]).all(-1)
    assert (same_box.sum(1) > 1).any(), "expected several class-boxes from one proposal"
    same_feature = (out["features"][:, None] == out["features"][None]).all(-1)
    assert torch.equal(same_box, same_feature)


def test_no_detections_gives_empty_features() -> None:
    model = _build("tiny_frcnn", score_thresh=0.99)
    (out,) = models.predict_with_features(model, _images()[:1])
    assert out["boxes"].shape == (0, 4) and out["features"].shape == (0, 1024)


def test_predict_restores_training_mode() -> None:
    model = _build("tiny_frcnn").train()
    models.predict_with_features(model, _images())
    assert model.training


@pytest.mark.parametrize("name", FAST)
def test_set_inference_params(name: str) -> None:
    model = _build(name)
    models.set_inference_params(model, 0.0, 2)
    assert all(len(o["boxes"]) == 2 for o in models.predict_with_features(model, _images()))
    models.set_inference_params(model, 1.0, 2)
    assert all(len(o["boxes"]) == 0 for o in models.predict_with_features(model, _images()))


def test_tiny_frcnn_uses_configured_sizes() -> None:
    model = _build("tiny_frcnn", size=128)
    assert model.transform.min_size == (128,) and model.transform.max_size == 128
    (out,) = models.predict_with_features(model, [torch.rand(3, 128, 128)])
    assert models.image_feature_dim(model) == out["image_feature"].shape[0]


def test_coco_weights_get_a_new_class_head(monkeypatch: pytest.MonkeyPatch) -> None:
    """Detector weights load the 91-class COCO model, then swap the class head for K + 1."""
    torch.manual_seed(0)
    coco = models.build_model(ModelConfig(name="fasterrcnn_mobilenet_v3_large_fpn"), 90)
    state = coco.state_dict()
    monkeypatch.setattr(WeightsEnum, "get_state_dict", lambda self, *a, **kw: state)
    model = _build("fasterrcnn_mobilenet_v3_large_fpn", weights="DEFAULT")
    assert model.roi_heads.box_predictor.cls_score.out_features == K + 1
    body = "backbone.body.0.0.weight"
    assert torch.equal(model.state_dict()[body], state[body])
    _check_against_stock(model)


def test_trained_model_loads_without_fetching_weights(monkeypatch: pytest.MonkeyPatch) -> None:
    """A model trained from ImageNet weights (frozen BN) reloads with load_weights=False."""
    calls = []
    torch.manual_seed(0)
    backbone_state = torchvision.models.mobilenet_v3_large().state_dict()  # "ImageNet" weights

    def fake_fetch(self: WeightsEnum, *a: object, **kw: object) -> dict:
        calls.append(self)
        return backbone_state

    monkeypatch.setattr(WeightsEnum, "get_state_dict", fake_fetch)
    cfg = ModelConfig(name="fasterrcnn_mobilenet_v3_large_fpn", weights_backbone="IMAGENET1K_V1",
                      min_size=64, max_size=64)
    trained = models.build_model(cfg, K)
    assert len(calls) == 1
    again = models.build_model(cfg, K, load_weights=False)
    assert len(calls) == 1  # nothing fetched
    again.load_state_dict(trained.state_dict())  # strict: the same architecture
    trained.eval(), again.eval()
    image = [torch.rand(3, 64, 64)]
    with torch.no_grad():
        a, b = trained.backbone(image[0][None]), again.backbone(image[0][None])
    assert all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize(
    ("kw", "match"),
    [
        ({"name": "tiny_frcnn", "weights": "DEFAULT"}, "no pretrained weights"),
        ({"name": "fasterrcnn_resnet50_fpn", "weights": "IMAGENET1K_V1"}, "COCO_V1"),
        ({"name": "retinanet_resnet50_fpn", "weights_backbone": "NOPE"}, "IMAGENET1K_V1"),
        ({"name": "yolo"}, "unknown"),
        ({"name": "fasterrcnn_resnet101_fpn", "weights": "DEFAULT"}, "model.weights='DEFAULT'"),
        ({"name": "fasterrcnn_resnet101_fpn", "weights_backbone": "COCO_V1"},
         "ResNet101_Weights"),
    ],
)
def test_bad_model_config_is_a_config_error(kw: dict, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        models.build_model(ModelConfig(**kw), K)
