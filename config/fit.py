"""Training options (pydantic) and the presets. The CLI maps flags onto these fields."""
from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class FitConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    model_id: str = Field("linesight-model", description="Name recorded in the bundle and every verdict")
    backbone: Literal["resnet18", "wide_resnet50_2"] = Field("resnet18", description="Feature extractor")
    weights: str = Field("imagenet", description="imagenet | none | self (learn from the good images) | path to a "
                                                 "torchvision-style .pth state dict")
    adapt: Literal["none", "self"] = Field("none", description="self: fine-tune the loaded weights self-supervised "
                                                             "on the good images (+ synthetic defects)")
    input_size: int = Field(224, ge=32, le=2048, description="Square input size in pixels (multiple of 8)")
    embedding_dim: int = Field(192, ge=2, description="Patch embedding size after projection")
    coreset_ratio: float = Field(0.01, gt=0, le=1, description="Fraction of training patches kept in the bank")
    coreset_projection_dim: int = Field(128, ge=0, description="Random projection used for coreset distances (0 = none)")
    coreset_chunk: int = Field(1024, ge=16, description="Greedy chunk size (>= patches gives exact greedy)")
    k: int = Field(1, ge=1, description="Neighbours averaged into a patch score")
    reweight: bool = Field(False, description="anomalib-style softmax reweighting of the image score")
    sigma: float = Field(4.0, ge=0, description="Gaussian blur of the anomaly map (input pixels)")
    holdout_fraction: float = Field(0.1, ge=0, lt=0.5, description="Good images kept out of the bank to set the default threshold")
    batch_size: int = Field(16, ge=1)
    seed: int = Field(0)
    selfsup_steps: int = Field(4000, ge=1, description="Self-supervised training: max optimiser steps")
    selfsup_batch: int = Field(8, ge=1, description="Self-supervised training: images per step")
    selfsup_lr: float = Field(1e-3, gt=0, description="Self-supervised training: AdamW learning rate")
    selfsup_crop: int | None = Field(None, ge=32, le=2048,
                                     description="Training crop (pixels, multiple of 16) cut from the image resized "
                                                 "to input_size; None = the whole image (more context, measured "
                                                 "better than 128 px crops on magnetic_tile)")
    selfsup_minutes: float = Field(13.0, gt=0, description="Self-supervised training: wall-clock cap in minutes")
    selfsup_val_every: int = Field(150, ge=1, description="Steps between validations (held-out good + synthetic)")
    selfsup_patience: int = Field(5, ge=1, description="Validations without improvement before early stopping")
    golden_images: int = Field(3, ge=0, le=16, description="Held-out good images stored in the bundle to verify it on load")


PRESETS: dict[str, dict] = {
    "fast": {"backbone": "resnet18", "input_size": 224, "embedding_dim": 192, "coreset_ratio": 0.01, "k": 1},
    "balanced": {"backbone": "wide_resnet50_2", "input_size": 224, "embedding_dim": 512, "coreset_ratio": 0.01,
                 "k": 1},
    "accurate": {"backbone": "wide_resnet50_2", "input_size": 320, "embedding_dim": 1024, "coreset_ratio": 0.1,
                 "k": 3, "reweight": True},
}


def preset(name: str, **overrides) -> FitConfig:
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; choose one of {sorted(PRESETS)}")
    return FitConfig(**{**PRESETS[name], **{k: v for k, v in overrides.items() if v is not None}})
