"""Schema of a bundle's manifest.json. A bundle of another schema version is refused, not guessed at."""
from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from linesight.config.frame import FrameInfo

BUNDLE_SCHEMA = "linesight.bundle/1"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ModelInfo(_Strict):
    id: str = Field(description="Model id, e.g. the product or station name")
    version: int = Field(ge=1, description="Increases with every bundle written for this id")
    created_at: str = Field(description="UTC ISO-8601 time the bundle was written")


class WeightsInfo(_Strict):
    source: Literal["imagenet", "none", "file", "self"] = Field(description="Where the backbone weights came from")
    pretrained: bool = Field(description="False means random-init features: accuracy will be poor")
    detail: str = Field("", description="URL, file path or training recipe")
    sha256: str | None = Field(None, description="Hash of the weights file when one was used")
    package: str | None = Field(None, description="Installed weight package (dist==version) the file came from")
    training: dict | None = Field(None, description="Self-supervised training record: loss_curve, val_curve "
                                                    "[(step, held-out synthetic AUROC)], best_step, stopped, seconds")


class BackboneInfo(_Strict):
    name: str
    layers: list[str]
    weights: WeightsInfo


class FeatureInfo(_Strict):
    embedding_dim: int = Field(gt=0)
    grid: tuple[int, int] = Field(description="Patch grid (h, w) of the ONNX output")
    stride: int = Field(gt=0, description="Input pixels per patch")
    neighbourhood: int = Field(3, description="Local aggregation window (PatchCore: 3x3)")


class MemoryInfo(_Strict):
    n_patches: int = Field(description="Patches extracted from the training images")
    n_bank: int = Field(description="Rows kept in memory_bank.npy")
    coreset_ratio: float
    projection_dim: int
    chunk_size: int
    seed: int
    seconds: float


class ScoringInfo(_Strict):
    k: int = Field(1, ge=1, description="Patch score = mean distance to the k nearest bank rows")
    reweight: bool = Field(False, description="anomalib-style softmax reweighting of the image score")
    reweight_neighbors: int = Field(9, ge=1)
    sigma: float = Field(4.0, description="Gaussian blur of the anomaly map, in input pixels")
    index: Literal["flat", "ivf"] = Field("flat", description="flat: exact kNN; ivf: approximate (inverted lists "
                                                              "over the scale's stored centroids, nprobe searched)")
    nprobe: int = Field(8, ge=1, description="ivf: inverted lists searched per query")


#: Default false-reject target: 1 % of good parts scrapped or re-inspected is what a line typically budgets, and
#: 1 in 100 is still measurable on the ~200 good test images a calibration set holds (0 % would not be).
DEFAULT_MAX_FALSE_REJECT = 0.01
#: Default pixel target: 0.1 % of good-image pixels may light up (360 px of a 600x600 frame on average), so
#: regions measured on an NG part are the defect, not the texture around it.
DEFAULT_MAX_FALSE_PIXEL_AREA = 0.001


class Rate(_Strict):
    """count of n parts, with the Wilson 95 % interval: what a rate measured on only n parts can claim."""

    count: int = Field(ge=0)
    n: int = Field(ge=1)
    rate: float = Field(ge=0, le=1, description="count / n")
    ci95: tuple[float, float] = Field(description="Wilson score interval (95 %) of the rate")

    @property
    def ppm(self) -> float:
        return self.rate * 1e6


class CalibrationTarget(_Strict):
    """What the line can afford, as a quality engineer states it (fractions of the labeled parts or pixels)."""

    max_false_reject: float = Field(DEFAULT_MAX_FALSE_REJECT, ge=0, lt=1, description="Good parts the image "
                                    "threshold may reject; decides the threshold unless max_escape is set")
    max_escape: float | None = Field(None, ge=0, lt=1, description="Defective parts the image threshold may pass; "
                                     "when set it decides (highest threshold within it) and max_false_reject is "
                                     "checked")
    max_false_pixel_area: float = Field(DEFAULT_MAX_FALSE_PIXEL_AREA, ge=0, lt=1, description="Fraction of "
                                        "good-image pixels at or above the pixel threshold")


class CalibrationResult(_Strict):
    """The targets calibrate was given and what its thresholds achieve on the labeled set it scored."""

    target: CalibrationTarget
    false_reject: Rate = Field(description="Good parts at or above the image threshold")
    escape: Rate = Field(description="Defective parts below the image threshold")
    false_pixel_area: float = Field(description="Fraction of good-image pixels at or above the pixel threshold")
    met: bool = Field(description="The image threshold keeps within the false-reject (and escape) target")
    forced: bool = Field(False, description="Written with --force although a target was not met")


class Thresholds(_Strict):
    image: float = Field(description="Image score at or above which the part is NG")
    pixel: float = Field(description="Anomaly-map value at or above which a pixel belongs to a defect region")
    policy: str = Field(description="How `image` was chosen")
    source: str = Field(description="Which data the thresholds were chosen on")
    calibrated: bool = Field(False, description="Chosen by `linesight calibrate` on labeled data (not the fit's "
                                                "held-out good images)")
    candidates: dict[str, float] = Field(default_factory=dict)
    calibration: CalibrationResult | None = Field(None, description="Targets and the rates achieved on the "
                                                  "calibration set (None: not calibrated, or before targets)")


class DomainInfo(_Strict):
    """Where on the image defects count. Scores outside the domain are zero and cannot raise a verdict."""

    mode: Literal["none", "mask", "auto"] = Field("none", description="none: whole image; mask: a fixed ROI mask "
                                                  "(stretched to each image); auto: Otsu foreground per image")
    mask_file: str | None = Field(None, description="Bundle file holding the ROI mask (mode mask)")
    auto_polarity: Literal["bright", "dark"] = Field("bright", description="auto: the part is brighter (or darker) "
                                                                          "than the background")
    erode_px: int = Field(0, ge=0, description="Shrink the domain by this many input pixels (ignore part edges)")


class ScaleInfo(_Strict):
    """One view of the frame with its own memory bank (export/views.py draws the geometry)."""

    name: str = Field(description="Label in logs, timings and evidence, e.g. 'whole' or 'tiles@0.8'")
    mode: Literal["whole", "tiles"] = Field(description="whole: the frame fitted into one model input; tiles: "
                                                        "the frame resized to pixels_per_input and cut into tiles")
    pixels_per_input: float | None = Field(None, gt=0, description="tiles: frame pixels per model-input pixel "
                                                                   "(1 = native resolution, 0.5 = magnified 2x)")
    overlap: int = Field(64, ge=0, description="tiles: overlap between neighbouring tiles in input pixels "
                                               "(multiple of the stride)")
    bank_file: str = Field(description="Bundle file with this scale's memory bank")
    locations_file: str | None = Field(None, description="Bundle file: (training image, cell y, cell x) per bank row")
    ivf_file: str | None = Field(None, description="Bundle file: k-means centroids of the bank (scoring.index ivf)")
    n_patches: int = Field(0, ge=0, description="Training patches seen at this scale")
    n_bank: int = Field(ge=1)
    good_median: float | None = Field(None, description="Median patch score of held-out good images (fusion)")
    good_max: float | None = Field(None, description="Mean image score of held-out good images (fusion)")


class PlanInfo(_Strict):
    """Why these scales: the defect size range the engineer asked for, turned into views."""

    defect_size_px: tuple[float, float] | None = Field(None, description="Smallest and largest defect, frame px")
    px_per_mm: float | None = None
    frame_hw: tuple[int, int] = Field(description="Typical (median) training frame size")
    fusion: Literal["none", "max_normalised"] = Field("none", description="max_normalised: each scale's scores "
                                                      "become (s - good_median) / (good_max - good_median), clipped "
                                                      "at 0, then the max over scales; 1.0 = as abnormal as the worst "
                                                      "patch of a typical good image")
    reasoning: list[str] = Field(default_factory=list)


class GoldenImage(_Strict):
    file: str
    score: float


class OnnxInfo(_Strict):
    input: str
    output: str
    opset: int
    parity_max_abs_diff: float
    parity_tolerance: float


class DatasetInfo(_Strict):
    name: str
    fingerprint: str
    n_train: int
    n_holdout: int
    skipped: list[str] = Field(default_factory=list)
    augment: dict | None = Field(None, description="Fit-time augmentation of the good images (None = off)")
    n_bank_images: int | None = Field(None, description="Images the bank was built from (originals + copies)")


class Manifest(_Strict):
    schema_: str = Field(alias="schema")
    model: ModelInfo
    backbone: BackboneInfo
    preprocess: dict
    features: FeatureInfo
    memory: MemoryInfo
    scoring: ScoringInfo
    thresholds: Thresholds
    domain: DomainInfo = Field(default_factory=DomainInfo)
    scales: list[ScaleInfo] = Field(default_factory=list, description="Empty: one whole-frame scale whose bank is "
                                                                       "memory_bank.npy (bundles before multi-scale)")
    plan: PlanInfo | None = None
    frame: FrameInfo = Field(default_factory=FrameInfo, description="Photometric normalisation and alignment, "
                                                                      "applied to every frame before the views")
    golden: list[GoldenImage] = Field(default_factory=list)
    onnx: OnnxInfo
    dataset: DatasetInfo
    software: dict[str, str]
    warnings: list[str] = Field(default_factory=list)
    files: dict[str, str] = Field(default_factory=dict, description="sha256 of every file in the bundle")

    model_config = ConfigDict(extra="forbid", populate_by_name=True)
