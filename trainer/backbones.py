"""ResNet backbones in plain torch with torchvision-compatible state-dict keys, and their weights.

torchvision does not run with the CPU torch used here, so the few classes PatchCore needs live here.
"""
from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from linesight.errors import LinesightError

log = logging.getLogger(__name__)

# Official torchvision (IMAGENET1K_V1) weights; the 8 hex digits in the name are the sha256 prefix
# that torch.hub checks (check_hash=True).
WEIGHT_URLS = {
    "resnet18": "https://download.pytorch.org/models/resnet18-f37072fd.pth",
    "wide_resnet50_2": "https://download.pytorch.org/models/wide_resnet50_2-95faca4d.pth",
}
NOT_PRETRAINED = "features not pretrained: accuracy will be poor"


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, inplanes: int, planes: int, stride: int = 1, downsample: nn.Module | None = None, width: int = 64):
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

    def __init__(self, inplanes: int, planes: int, stride: int = 1, downsample: nn.Module | None = None, width: int = 64):
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
class BackboneSpec:
    name: str
    channels: tuple[int, int]  # layer2, layer3


BACKBONES = {"resnet18": BackboneSpec("resnet18", (128, 256)),
             "wide_resnet50_2": BackboneSpec("wide_resnet50_2", (512, 1024))}


def build_backbone(name: str) -> ResNet:
    if name == "resnet18":
        return ResNet(BasicBlock, [2, 2, 2, 2])
    if name == "wide_resnet50_2":
        return ResNet(Bottleneck, [3, 4, 6, 3], width=128)
    raise LinesightError(f"unknown backbone {name!r}; choose one of {sorted(BACKBONES)}")


@dataclass
class WeightsResult:
    source: str  # imagenet | none | file
    pretrained: bool
    detail: str
    sha256: str | None


def load_weights(model: ResNet, name: str, weights: str) -> WeightsResult:
    """`imagenet` (torch.hub download, hash-checked, cached), a local .pth path, or `none` (loud warning)."""
    if weights == "none":
        log.warning("%s: backbone %s uses random initialisation", NOT_PRETRAINED.upper(), name)
        return WeightsResult("none", False, "random init (seeded)", None)
    if weights == "imagenet":
        url = WEIGHT_URLS[name]
        cache = Path(torch.hub.get_dir()) / "checkpoints" / url.rsplit("/", 1)[1]
        try:
            state = torch.hub.load_state_dict_from_url(url, map_location="cpu", check_hash=True, progress=False,
                                                       weights_only=True)
        except Exception as exc:  # URLError, socket errors, hash mismatch (RuntimeError)
            raise LinesightError(
                f"cannot get ImageNet weights for {name} from {url} ({exc}). On a machine that is offline, "
                f"download that file elsewhere and either copy it to {cache} or pass --weights /path/to/"
                f"{cache.name}; or use --weights self to learn features from your good images.") from exc
        _apply(model, state, url)
        return WeightsResult("imagenet", True, url, _file_sha(cache) if cache.exists() else None)
    path = Path(weights)
    if not path.is_file():
        raise LinesightError(f"--weights {weights!r}: not 'imagenet', 'none', 'self' nor an existing .pth file")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise LinesightError(f"weights file {path} cannot be read as a torch state dict: {exc}") from exc
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    _apply(model, state, str(path))
    return WeightsResult("file", True, str(path), _file_sha(path))


def _apply(model: ResNet, state: dict, where: str) -> None:
    if not isinstance(state, dict):
        raise LinesightError(f"weights {where}: expected a state dict, got {type(state).__name__}")
    try:
        result = model.load_state_dict(state, strict=False)
    except RuntimeError as exc:  # shape mismatches
        raise LinesightError(f"weights {where} do not fit this backbone: {str(exc).splitlines()[-1].strip()}") from exc
    missing = [k for k in result.missing_keys if not k.startswith(("layer4", "fc"))]
    if missing or len(result.unexpected_keys) > 0:
        raise LinesightError(f"weights {where} do not fit this backbone: missing {missing[:5]}, "
                             f"unexpected {list(result.unexpected_keys)[:5]}")


def _file_sha(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()
