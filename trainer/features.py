"""PatchCore feature aggregation as a torch module, so it exports into the ONNX graph with the backbone."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def channel_pool_matrix(c_in: int, c_out: int) -> torch.Tensor:
    """Adaptive average pooling over channels as a (c_out, c_in) matrix (PatchCore's projection)."""
    m = torch.zeros(c_out, c_in)
    for i in range(c_out):
        lo, hi = (i * c_in) // c_out, -((-(i + 1) * c_in) // c_out)
        m[i, lo:hi] = 1.0 / (hi - lo)
    return m


class PatchFeatures(nn.Module):
    """stride-8 + stride-16 maps (ResNet layer2 + layer3, or two EfficientNet-Lite blocks) -> 3x3 neighbourhood
    mean -> layer3 upsampled to the layer2 grid -> projection.

    Each layer gets half of the embedding (as in the paper, where both are pooled to the same size first).
    """

    def __init__(self, backbone: nn.Module, channels: tuple[int, int], embedding_dim: int):
        super().__init__()
        self.backbone = backbone
        c2, c3 = channels
        if embedding_dim > c2 + c3 or embedding_dim < 2:
            raise ValueError(f"embedding size {embedding_dim} must be between 2 and {c2 + c3} for this backbone")
        self.embedding_dim = embedding_dim
        if embedding_dim == c2 + c3:
            self.register_buffer("projection", torch.empty(0), persistent=False)
        else:
            half = embedding_dim // 2
            proj = torch.zeros(embedding_dim, c2 + c3)
            proj[:half, :c2] = channel_pool_matrix(c2, half)
            proj[half:, c2:] = channel_pool_matrix(c3, embedding_dim - half)
            self.register_buffer("projection", proj[:, :, None, None], persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        l2, l3 = self.backbone.pyramid(x)
        l2 = F.avg_pool2d(l2, 3, 1, 1, count_include_pad=False)
        l3 = F.avg_pool2d(l3, 3, 1, 1, count_include_pad=False)
        l3 = F.interpolate(l3, size=l2.shape[-2:], mode="bilinear", align_corners=False)
        feats = torch.cat([l2, l3], dim=1)
        if self.projection.numel():
            feats = F.conv2d(feats, self.projection)
        return feats
