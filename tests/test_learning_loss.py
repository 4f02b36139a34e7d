"""Learning Loss's loss-prediction module (training, DDP seam, resume) and the optional
inference outputs ``loss_pred`` and ``probs`` (docs/acquisition.md, docs/detections-dump.md)."""

from __future__ import annotations

import dataclasses
import json
import os
import signal
from pathlib import Path

import numpy as np
import pytest
import torch
from workdirs import make_workdir

from al_det import checkpoint, models, train
from al_det.coco import CategoryMap
from al_det.config import (
    DataConfig,
    ExperimentConfig,
    LossPredictionConfig,
    ModelConfig,
    TrainConfig,
    from_dict,
)
from al_det.errors import ConfigError
from al_det.models import lossnet

K = 3
ON = LossPredictionConfig(enabled=True)


@pytest.fixture(autouse=True)
def one_thread() -> None:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # deterministic reductions, no oversubscription
    yield
    torch.set_num_threads(threads)


def _build(name: str = "tiny_frcnn", size: int = 128, lp: LossPredictionConfig = ON,
           score_thresh: float = 0.05) -> torch.nn.Module:
    torch.manual_seed(0)
    cfg = ModelConfig(name=name, min_size=size, max_size=size, loss_prediction=lp)
    return models.build_model(cfg, K, score_thresh=score_thresh, detections_per_img=30)


def _batch(n: int = 2) -> tuple[list[torch.Tensor], list[dict[str, torch.Tensor]]]:
    gen = torch.Generator().manual_seed(3)
    images = [torch.rand(3, 128, 128, generator=gen) for _ in range(n)]
    boxes = torch.tensor([[10.0, 12.0, 60.0, 70.0], [50.0, 40.0, 120.0, 100.0]])
    targets = [{"boxes": boxes.clone(), "labels": torch.tensor([1 + i % K, 1 + (i + 1) % K])}
               for i in range(n)]
    return images, targets


# ------------------------------------------------------------------------- the ranking loss
def test_ranking_loss_on_a_hand_made_batch() -> None:
    # B = 4: pairs (0, 3) and (1, 2).
    # (0, 3): l 2.0 > 1.0 -> sign +1; l_hat 0.5 - 0.2 = 0.3 -> max(0, 1 - 0.3) = 0.7
    # (1, 2): l 0.5 < 3.0 -> sign -1; l_hat 0.1 - 0.9 = -0.8 -> max(0, 1 - 0.8) = 0.2
    l_hat = torch.tensor([0.5, 0.1, 0.9, 0.2], requires_grad=True)
    target = torch.tensor([2.0, 0.5, 3.0, 1.0], requires_grad=True)
    loss = lossnet.ranking_loss(l_hat, target, margin=1.0)
    assert loss.item() == pytest.approx((0.7 + 0.2) / 2)
    loss.backward()
    # d/d l_hat: pair (0, 3) sign +1 -> -1/2 on l_hat_0, +1/2 on l_hat_3; pair (1, 2) sign -1
    # -> +1/2 on l_hat_1, -1/2 on l_hat_2
    assert l_hat.grad.tolist() == pytest.approx([-0.5, 0.5, -0.5, 0.5])
    assert target.grad is None  # the targets are detached
    # a pair ranked right by more than the margin costs nothing; equal l counts as sign -1
    assert lossnet.ranking_loss(torch.tensor([3.0, 0.0]), torch.tensor([1.0, 0.0]),
                                1.0).item() == 0.0
    assert lossnet.ranking_loss(torch.tensor([0.0, 0.0]), torch.tensor([1.0, 1.0]),
                                0.5).item() == pytest.approx(0.5)
    # an odd (last) batch leaves its middle image out: B = 3 pairs (0, 2) only
    odd = lossnet.ranking_loss(torch.tensor([0.0, 7.0, 0.25]), torch.tensor([1.0, 9.0, 2.0]), 1.0)
    assert odd.item() == pytest.approx(1.0 - 0.25)  # sign -1: max(0, 1 + (0 - 0.25))
    one = torch.tensor([0.3], requires_grad=True)
    single = lossnet.ranking_loss(one, torch.tensor([1.0]), 1.0)
    assert single.item() == 0.0 and single.requires_grad  # no pair, still in the graph


def test_target_is_classification_plus_regression_of_each_image() -> None:
    per_image = {"classification": torch.tensor([1.0, 2.0]),
                 "bbox_regression": torch.tensor([0.5, 0.25]),
                 "bbox_ctrness": torch.tensor([10.0, 20.0])}  # FCOS: not part of the target
    assert lossnet.target_losses(per_image).tolist() == [1.5, 2.25]
    rcnn = {"loss_classifier": torch.tensor([0.1, 0.2]), "loss_box_reg": torch.tensor([1., 2.])}
    assert lossnet.target_losses(rcnn).tolist() == pytest.approx([1.1, 2.2])


# ------------------------------------------------------------------------------ the module
def test_head_reads_the_fpn_levels_and_is_part_of_the_detector() -> None:
    model = _build()
    head = model.loss_prediction
    assert head.levels == ("0", "1", "2")  # tiny_frcnn's FPN levels
    assert [fc.in_features for fc in head.fcs] == [32, 32, 32]
    assert [fc.out_features for fc in head.fcs] == [128, 128, 128]
    assert (head.out.in_features, head.out.out_features) == (3 * 128, 1)
    keys = model.state_dict().keys()
    assert {"loss_prediction.out.weight", "loss_prediction.fcs.0.weight"} <= keys
    # built after the detector: the detector's initial weights are those of the module off
    off = _build(lp=LossPredictionConfig()).state_dict()
    assert not any(k.startswith("loss_prediction") for k in off)
    assert all(torch.equal(off[k], model.state_dict()[k]) for k in off)
    # l_hat: GAP -> Linear -> ReLU per map, concatenated, Linear (by hand)
    images, _ = _batch()
    model.eval()
    with torch.no_grad():
        maps = models.feature_maps(model, images)
        pooled = [torch.relu(fc(maps[k].mean(dim=(2, 3))))
                  for k, fc in zip("012", head.fcs, strict=True)]
        want = head.out(torch.cat(pooled, 1))[:, 0]
        torch.testing.assert_close(head(maps), want)
        out = models.predict_with_features(model, images)
    got = torch.stack([o["loss_pred"] for o in out])
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)


def test_trainer_adds_the_ranking_loss_to_the_stock_losses() -> None:
    model = _build().train()
    images, targets = _batch(4)
    trainer = lossnet.LossPredictionTrainer(model, weight=0.5, margin=1.0)
    torch.manual_seed(11)
    stock = {k: v.detach() for k, v in model(images, targets).items()}
    torch.manual_seed(11)
    out = trainer(images, targets)
    assert set(out) == set(stock) | {"loss_ll"}
    for term in stock:  # the detector's terms are the stock batch terms, bit for bit
        assert torch.equal(out[term].detach(), stock[term]), term
    torch.manual_seed(11)
    fwd = models.forward_train(model, images, targets)
    l_ = fwd.per_image["loss_classifier"] + fwd.per_image["loss_box_reg"]
    # the per-image targets average back to torchvision's batch terms (equal RoI counts)
    torch.testing.assert_close(l_.mean(), stock["loss_classifier"] + stock["loss_box_reg"],
                               rtol=1e-5, atol=1e-7)
    l_hat = model.loss_prediction(fwd.maps)
    want = 0.5 * lossnet.ranking_loss(l_hat, l_, 1.0)
    torch.testing.assert_close(out["loss_ll"], want)


def _grads(model: torch.nn.Module, loss: torch.Tensor) -> tuple[float, float]:
    model.zero_grad(set_to_none=True)
    loss.backward(retain_graph=True)
    backbone = sum(p.grad.abs().sum().item() for p in model.backbone.parameters()
                   if p.grad is not None)
    head = sum(p.grad.abs().sum().item() for p in model.loss_prediction.parameters())
    return backbone, head


def test_detach_cuts_the_ranking_loss_from_the_backbone() -> None:
    model = _build().train()
    images, targets = _batch(2)
    trainer = lossnet.LossPredictionTrainer(model, weight=1.0, margin=1.0)
    before = trainer(images, targets, detach=False)["loss_ll"]
    assert before.item() > 0  # the hinge is active: the gradient is the test's subject
    backbone, head = _grads(model, before)
    assert backbone > 0 and head > 0
    after = trainer(images, targets, detach=True)
    backbone, head = _grads(model, after["loss_ll"])
    assert backbone == 0 and head > 0
    # the detector's own loss still trains the backbone after the detach point
    backbone, _ = _grads(model, sum(v for k, v in after.items()))
    assert backbone > 0


def test_odd_batch_per_process_is_refused() -> None:
    with pytest.raises(ConfigError, match=r"train.batch_size=6 gives 3 images per process"):
        train.check_train_config(TrainConfig(batch_size=6), 2, loss_prediction=True)
    with pytest.raises(ConfigError, match=r"train.batch_size=3 .*even"):
        train.check_train_config(TrainConfig(batch_size=3), 1, loss_prediction=True)
    train.check_train_config(TrainConfig(batch_size=3), 1)  # module off: no pairing
    train.check_train_config(TrainConfig(batch_size=4), 2, loss_prediction=True)
    train.check_train_config(TrainConfig(batch_size=6), 1, loss_prediction=True)


def test_config_keys_and_hash() -> None:
    base = {"data": {"pool": "p.json"}}
    cfg = from_dict(ExperimentConfig, base, "t")
    assert cfg.model.loss_prediction == LossPredictionConfig(False, 1.0, 1.0, 0.6)
    assert cfg.infer.probs is False
    with pytest.raises(ConfigError, match="model.loss_prediction.enabled: true"):
        from_dict(ExperimentConfig, {**base, "acquire": {"strategy": "learning_loss"}}, "t")
    on = from_dict(ExperimentConfig, {**base, "acquire": {"strategy": "learning_loss"},
                                      "model": {"loss_prediction": {"enabled": True,
                                                                    "weight": 0.5}}}, "t")
    assert on.model.loss_prediction.weight == 0.5
    with pytest.raises(ConfigError, match="detach_after"):
        from_dict(ExperimentConfig, {**base, "model": {"loss_prediction": {"detach_after": 2}}},
                  "t")
    with pytest.raises(ConfigError, match="lambda"):  # a did-you-mean names the key
        from_dict(ExperimentConfig, {**base, "model": {"loss_prediction": {"lambda": 2}}}, "t")
    # off, the module changes no existing hash (values from before the keys existed)
    assert checkpoint.config_hash(cfg, 1, [1, 2, 3]) == "c2cf60081985bd74"
    tweaked = dataclasses.replace(cfg, model=dataclasses.replace(
        cfg.model, loss_prediction=LossPredictionConfig(margin=3.0)))
    assert checkpoint.config_hash(tweaked, 1, [1, 2, 3]) == "c2cf60081985bd74"
    assert checkpoint.config_hash(on, 1, [1, 2, 3]) != checkpoint.config_hash(cfg, 1, [1, 2, 3])


# ------------------------------------------------------------------ training, resume, detach


def _cfg(demo: dict[str, Path], **lp: object) -> ExperimentConfig:
    return ExperimentConfig(
        seed=3, device="cpu",
        data=DataConfig(pool=str(demo["pool"]), pool_images=str(demo["images"])),
        model=ModelConfig(name="tiny_frcnn", min_size=64, max_size=64,
                          loss_prediction=LossPredictionConfig(enabled=True, **lp)),
        train=TrainConfig(epochs=2, batch_size=2, lr=0.01, warmup_iters=2, workers=0,
                          checkpoint_every=100),
    )


def test_detach_point_in_the_training_loop(tmp_path: Path, demo_data: dict,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    flags: list[bool] = []
    real = lossnet.LossPredictionTrainer.forward

    def spy(self, images, targets, detach=False):  # noqa: ANN001, ANN202
        flags.append(detach)
        return real(self, images, targets, detach)

    monkeypatch.setattr(lossnet.LossPredictionTrainer, "forward", spy)
    wd = make_workdir(tmp_path / "wd", demo_data, 4)  # 4 images, batch 2, 2 epochs: 4 iterations
    path = train.run_train(wd, 0, _cfg(demo_data, detach_after=0.6))
    assert flags == [False, False, True, True]  # detached from round(0.6 * 4) = 2 on
    log = [json.loads(x) for x in wd.cycle(0).train_log.read_text().splitlines()]
    assert "loss_ll" in log[-1]
    model = checkpoint.load_trained(path, _cfg(demo_data), K + 3, "cpu")  # 6 categories
    assert model.loss_prediction is not None
    plain = dataclasses.replace(_cfg(demo_data), model=ModelConfig(
        name="tiny_frcnn", min_size=64, max_size=64))
    with pytest.raises(Exception, match="does not fit"):  # a head the config does not build
        checkpoint.load_trained(path, plain, 6, "cpu")


def test_sigterm_then_resume_equals_uninterrupted_with_the_head(tmp_path: Path,
                                                                demo_data: dict) -> None:
    torch.use_deterministic_algorithms(True)
    try:
        cfg = _cfg(demo_data, detach_after=0.5)
        full = make_workdir(tmp_path / "full", demo_data, 4)
        train.run_train(full, 0, cfg)
        wd = make_workdir(tmp_path / "cut", demo_data, 4)

        def preempt(i: int) -> None:
            if i == 3:  # after the detach point (iteration 2): resume must keep detaching
                os.kill(os.getpid(), signal.SIGTERM)

        with pytest.raises(train.TrainingInterrupted):
            train.run_train(wd, 0, cfg, on_iteration=preempt)
        ckpt = torch.load(wd.cycle(0).last_ckpt, weights_only=True)
        assert ckpt["iteration"] == 3
        assert any(k.startswith("loss_prediction.") for k in ckpt["model"])
        seen: list[int] = []
        train.run_train(wd, 0, cfg, on_iteration=seen.append)
        assert seen == [4]
    finally:
        torch.use_deterministic_algorithms(False)
    a = torch.load(full.cycle(0).model, weights_only=True)["model"]
    b = torch.load(wd.cycle(0).model, weights_only=True)["model"]
    assert a.keys() == b.keys() and any(k.startswith("loss_prediction.") for k in a)
    assert all(torch.equal(a[k], b[k]) for k in a), "resumed weights differ"


# --------------------------------------------------------------------------------- probs
FAMILIES = ["tiny_frcnn", "fasterrcnn_mobilenet_v3_large_fpn",
            pytest.param("retinanet_resnet50_fpn", marks=pytest.mark.slow),
            pytest.param("fcos_resnet50_fpn", marks=pytest.mark.slow),
            pytest.param("ssd300_vgg16", marks=pytest.mark.slow)]


@pytest.mark.parametrize("name", FAMILIES)
def test_probs_ride_on_the_stock_detections(name: str) -> None:
    model = _build(name, size=64, lp=LossPredictionConfig(), score_thresh=0.0).eval()
    gen = torch.Generator().manual_seed(1)
    images = [torch.rand(3, 80, 96, generator=gen), torch.rand(3, 70, 60, generator=gen)]
    with torch.no_grad():
        stock = model(images)
    off = models.predict_with_features(model, images)
    on = models.predict_with_features(model, images, probs=True)
    for ref, a, b in zip(stock, off, on, strict=True):
        assert "probs" not in a and "loss_pred" not in a and len(b["boxes"]) > 0
        for key in ("boxes", "scores", "labels"):
            assert torch.equal(ref[key], b[key]), key
        for key in ("boxes", "scores", "labels", "features", "image_feature"):
            assert torch.equal(a[key], b[key]), key
        p, labels, scores = b["probs"], b["labels"], b["scores"]
        assert p.dtype == torch.float32 and p.shape == (len(labels), K + 1)
        assert (p >= 0).all()
        torch.testing.assert_close(p.sum(1), torch.ones(len(p)), rtol=0, atol=1e-5)
        top = int(scores.argmax())  # never suppressed: its class leads its own row
        assert int(p[top, 1:].argmax()) + 1 == int(labels[top])
        rows = torch.arange(len(p))
        if name in ("retinanet_resnet50_fpn",):  # score = s_label = p_label / (p_0 + max p_fg)
            z = p[:, 0] + p[:, 1:].max(1).values
            torch.testing.assert_close(p[rows, labels] / z, scores, rtol=1e-5, atol=1e-7)
        elif name != "fcos_resnet50_fpn":  # softmax: the score is the row's label entry
            assert torch.equal(p[rows, labels], scores)


def test_probs_columns_follow_the_dump_categories() -> None:
    from al_det.infer import probs_columns

    cmap = CategoryMap([{"id": 7, "name": "b"}, {"id": 3, "name": "a"}, {"id": 11, "name": "c"}])
    # labels follow the ids: 3 -> 1, 7 -> 2, 11 -> 3; the dump lists 11, 3, 7
    dump_cats = [{"id": 11, "name": "c"}, {"id": 3, "name": "a"}, {"id": 7, "name": "b"}]
    columns = probs_columns(dump_cats, cmap)
    assert columns.tolist() == [0, 3, 1, 2]
    model_row = np.array([[0.1, 0.2, 0.3, 0.4]])  # background, label 1 (id 3), 2 (7), 3 (11)
    assert model_row[:, columns].tolist() == [[0.1, 0.4, 0.2, 0.3]]


# ------------------------------------------------------------------------- the whole loop
TINY = """\
name: tiny
seed: 3
cycles: 2
initial: 12
data:
  synthetic: {{n_pool: 40, n_test: 4, image_size: 128, seed: 1}}
model: {{name: tiny_frcnn, min_size: 128, max_size: 128, loss_prediction: {{enabled: {ll}}}}}
train: {{epochs: 1, batch_size: 4, warmup_iters: 2, workers: 0}}
infer: {{batch_size: 8, workers: 0, score_thresh: 0.0, chunk_size: 16}}
acquire: {{strategy: {strategy}, budget: 7}}
"""


@pytest.mark.slow
@pytest.mark.parametrize("strategy", ["cdal", "coreset", "learning_loss"])
def test_run_two_cycles(tmp_path: Path, strategy: str) -> None:
    from click.testing import CliRunner

    from al_det.cli import main
    from al_det.dump import read_dump

    config = tmp_path / "tiny.yaml"
    config.write_text(TINY.format(strategy=strategy, ll=str(strategy == "learning_loss").lower()))
    wd = tmp_path / "wd"
    result = CliRunner().invoke(main, ["run", "-c", str(config), "-w", str(wd)],
                                catch_exceptions=False)
    assert result.exit_code == 0, result.output
    c0 = wd / "cycle_000"
    unlabeled = json.loads((c0 / "unlabeled.json").read_text())["images"]
    labeled = json.loads((c0 / "labeled.json").read_text())["images"]
    dump = read_dump(c0 / "dump")
    if strategy == "learning_loss":  # the candidates only, and each one's predicted loss
        assert dump.image_ids == [im["id"] for im in unlabeled]
        assert dump.loss_pred is not None and dump.probs is None
        assert np.unique(dump.loss_pred).size == len(unlabeled)
    else:  # the labeled images after the candidates: the initial centres
        assert dump.image_ids == [im["id"] for im in unlabeled + labeled]
        assert (dump.probs is not None) == (strategy == "cdal") and dump.loss_pred is None
    if dump.probs is not None:
        assert dump.probs.dtype == np.float16 and dump.probs.shape == (len(dump.labels), 7)
    selection = json.loads((c0 / "selection.json").read_text())
    assert selection["strategy"] == strategy and len(selection["images"]) == 7
    picked = {im["id"] for im in selection["images"]}
    assert picked <= {im["id"] for im in unlabeled}
    nxt = json.loads((wd / "cycle_001" / "labeled.json").read_text())["images"]
    assert {im["id"] for im in nxt} == picked | {im["id"] for im in labeled}
    assert (wd / "cycle_001" / "model.pth").exists()


# ------------------------------------------------------------------------------------- DDP
DDP_SCRIPT = """
import sys
from pathlib import Path
import torch
from al_det import dist, train
from al_det.config import (DataConfig, ExperimentConfig, LossPredictionConfig, ModelConfig,
                           TrainConfig)
from al_det.workdir import Workdir

wd, pool, images = sys.argv[1:4]
cfg = ExperimentConfig(
    seed=3, device="cpu", data=DataConfig(pool=pool, pool_images=images),
    model=ModelConfig(name="tiny_frcnn", min_size=64, max_size=64,
                      loss_prediction=LossPredictionConfig(enabled=True, detach_after=0.5)),
    train=TrainConfig(epochs=2, batch_size=4, lr=0.01, warmup_iters=1, workers=0,
                      checkpoint_every=100))
info = dist.init_distributed(cfg.device)
assert info.world_size == 2, info
real = train._save_final


def save_each_rank(run):  # every rank's own weights: equal only if DDP synced the gradients
    assert isinstance(run.model, torch.nn.parallel.DistributedDataParallel)
    torch.save(run.net.state_dict(), Path(wd) / f"rank{info.rank}.pth")
    return real(run)


train._save_final = save_each_rank
try:
    train.run_train(Workdir(Path(wd)), 0, cfg)
finally:
    dist.cleanup()
"""


@pytest.mark.dist
def test_ddp_syncs_the_head(tmp_path: Path, demo_data: dict) -> None:
    import socket
    import subprocess
    import sys

    wd = make_workdir(tmp_path / "wd", demo_data, n_images=8)  # 2 iterations of 2 images per rank
    script = tmp_path / "ddp_script.py"
    script.write_text(DDP_SCRIPT)
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("SLURM_", "RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_"))}
    env.update(OMP_NUM_THREADS="1", PYTHONPATH=str(Path(__file__).resolve().parents[1]))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
           "--master_addr", "127.0.0.1", "--master_port", str(port), str(script),
           str(wd.root), str(demo_data["pool"]), str(demo_data["images"])]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    a = torch.load(wd.root / "rank0.pth", weights_only=True)
    b = torch.load(wd.root / "rank1.pth", weights_only=True)
    head = [k for k in a if k.startswith("loss_prediction.")]
    assert head and a.keys() == b.keys()
    # parameters, not batch-norm statistics (each rank's own batches since the last broadcast)
    stats = ("running_mean", "running_var", "num_batches_tracked")
    differ = [k for k in a if not torch.equal(a[k], b[k])]
    assert all(k.endswith(stats) for k in differ), differ
    initial = _build(size=64).state_dict()  # the head trained: it moved from its init
    assert not all(torch.equal(a[k], initial[k]) for k in head)
    saved = torch.load(wd.cycle(0).model, weights_only=True)["model"]
    assert all(torch.equal(saved[k], a[k]) for k in a)
    log = [json.loads(x) for x in wd.cycle(0).train_log.read_text().splitlines()]
    assert "loss_ll" in log[-1]
