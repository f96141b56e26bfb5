"""Schema of a bundle's manifest.json. A bundle of another schema version is refused, not guessed at."""
from __future__ import annotations

from typing import Literal

from pydantic import ConfigDict, Field

from linesight.config.base import Strict
from linesight.config.frame import FrameInfo

BUNDLE_SCHEMA = "linesight.bundle/1"


class ModelInfo(Strict):
    id: str = Field(description="Model id, e.g. the product or station name")
    version: int = Field(ge=1, description="Increases with every bundle written for this id")
    created_at: str = Field(description="UTC ISO-8601 time the bundle was written")


class WeightsInfo(Strict):
    source: Literal["imagenet", "none", "file", "self"] = Field(description="Where the backbone weights came from")
    pretrained: bool = Field(description="False means random-init features: accuracy will be poor")
    detail: str = Field("", description="URL, file path or training recipe")
    sha256: str | None = Field(None, description="Hash of the weights file when one was used")
    package: str | None = Field(None, description="Installed weight package (dist==version) the file came from")
    training: dict | None = Field(None, description="Self-supervised training record: loss_curve, val_curve "
                                                    "[(step, held-out synthetic AUROC)], best_step, stopped, seconds")


class BackboneInfo(Strict):
    name: str
    layers: list[str]
    weights: WeightsInfo


class FeatureInfo(Strict):
    embedding_dim: int = Field(gt=0)
    grid: tuple[int, int] = Field(description="Patch grid (h, w) of the ONNX output")
    stride: int = Field(gt=0, description="Input pixels per patch")
    neighbourhood: int = Field(3, description="Local aggregation window (PatchCore: 3x3)")


class MemoryInfo(Strict):
    n_patches: int = Field(description="Patches extracted from the training images")
    n_bank: int = Field(description="Rows kept in memory_bank.npy")
    coreset_ratio: float
    projection_dim: int
    chunk_size: int
    seed: int
    seconds: float


class ScoringInfo(Strict):
    k: int = Field(1, ge=1, description="Patch score = mean distance to the k nearest bank rows")
    reweight: bool = Field(False, description="anomalib-style softmax reweighting of the image score")
    reweight_neighbors: int = Field(9, ge=1)
    sigma: float = Field(4.0, description="Gaussian blur of the anomaly map, in input pixels")
    index: Literal["flat", "ivf", "hnsw"] = Field("flat", description="flat: exact kNN; ivf: approximate (inverted "
                                                  "lists over the scale's stored centroids, nprobe searched); a "
                                                  "scale's own `index` (fit-time choice) overrides this")
    nprobe: int = Field(8, ge=1, description="ivf: inverted lists searched per query")


IndexKind = Literal["flat", "ivf", "hnsw"]


class IndexCheck(Strict):
    """One index setting against exact search on held-out patches at fit: what approximate search costs in scores."""

    setting: str = Field(description="e.g. 'ivf nlist 277 nprobe 4'")
    n_images: int = Field(ge=0, description="Check images: held-out good + synthetic-defect copies of them")
    n_queries: int = Field(ge=0, description="Patches searched")
    recall_at_1: float = Field(description="Fraction of patches whose nearest bank row is the exact one")
    patch_error_mean: float = Field(description="Mean relative patch-score error against exact search")
    patch_error_p99: float = Field(description="99th percentile of the relative patch-score error")
    image_error_max: float = Field(description="Largest relative image-score (max patch) error over the images")
    ms_per_1k: float = Field(description="Search time per 1000 patches at fit (this machine, informative)")
    exact_ms_per_1k: float = Field(description="Exact search time per 1000 patches, same run")
    passed: bool = Field(description="image_error_max and patch_error_mean within the bound")


class IndexInfo(Strict):
    """The kNN index a scale runs, why, and its measured accuracy against exact search."""

    kind: IndexKind
    requested: Literal["auto", "flat", "ivf", "hnsw"] = Field(description="What the fit configuration asked for")
    reason: str = Field(description="Why this kind and setting (rule, measurement or fallback)")
    nlist: int | None = Field(None, ge=1, description="ivf: inverted lists (rows of the scale's ivf_file)")
    nprobe: int | None = Field(None, ge=1, description="ivf: lists searched per query")
    hnsw_m: int | None = Field(None, ge=2, description="hnsw: graph links per row (faiss M)")
    ef_search: int | None = Field(None, ge=1, description="hnsw: candidate list size per query")
    entry_point: int | None = Field(None, ge=0, description="hnsw: the graph's entry row")
    bound: float = Field(description="Largest relative score error accepted (image score and mean patch score)")
    check: IndexCheck | None = Field(None, description="The chosen setting's check (None: exact search)")
    tried: list[IndexCheck] = Field(default_factory=list, description="Settings measured before it (failed)")


#: Default false-reject target: 1 % of good parts scrapped or re-inspected is what a line typically budgets, and
#: 1 in 100 is still measurable on the ~200 good test images a calibration set holds (0 % would not be).
DEFAULT_MAX_FALSE_REJECT = 0.01
#: Default pixel target: 0.1 % of good-image pixels may light up (360 px of a 600x600 frame on average), so
#: regions measured on an NG part are the defect, not the texture around it.
DEFAULT_MAX_FALSE_PIXEL_AREA = 0.001


class Rate(Strict):
    """count of n parts, with the Wilson 95 % interval: what a rate measured on only n parts can claim."""

    count: int = Field(ge=0)
    n: int = Field(ge=1)
    rate: float = Field(ge=0, le=1, description="count / n")
    ci95: tuple[float, float] = Field(description="Wilson score interval (95 %) of the rate")

    @property
    def ppm(self) -> float:
        return self.rate * 1e6


class CalibrationTarget(Strict):
    """What the line can afford, as a quality engineer states it (fractions of the labeled parts or pixels)."""

    max_false_reject: float = Field(DEFAULT_MAX_FALSE_REJECT, ge=0, lt=1, description="Good parts the image "
                                    "threshold may reject; decides the threshold unless max_escape is set")
    max_escape: float | None = Field(None, ge=0, lt=1, description="Defective parts the image threshold may pass; "
                                     "when set it decides (highest threshold within it) and max_false_reject is "
                                     "checked")
    max_false_pixel_area: float = Field(DEFAULT_MAX_FALSE_PIXEL_AREA, ge=0, lt=1, description="Fraction of "
                                        "good-image pixels at or above the pixel threshold")


class CalibrationResult(Strict):
    """The targets calibrate was given and what its thresholds achieve on the labeled set it scored."""

    target: CalibrationTarget
    false_reject: Rate = Field(description="Good parts at or above the image threshold")
    escape: Rate = Field(description="Defective parts below the image threshold")
    false_pixel_area: float = Field(description="Fraction of good-image pixels at or above the pixel threshold")
    met: bool = Field(description="The image threshold keeps within the false-reject (and escape) target")
    forced: bool = Field(False, description="Written with --force although a target was not met")


class Thresholds(Strict):
    image: float = Field(description="Image score at or above which the part is NG")
    pixel: float = Field(description="Anomaly-map value at or above which a pixel belongs to a defect region")
    policy: str = Field(description="How `image` was chosen")
    source: str = Field(description="Which data the thresholds were chosen on")
    calibrated: bool = Field(False, description="Chosen by `linesight calibrate` on labeled data (not the fit's "
                                                "held-out good images)")
    candidates: dict[str, float] = Field(default_factory=dict)
    calibration: CalibrationResult | None = Field(None, description="Targets and the rates achieved on the "
                                                  "calibration set (None: not calibrated, or before targets)")


class DomainInfo(Strict):
    """Where on the image defects count. Scores outside the domain are zero and cannot raise a verdict."""

    mode: Literal["none", "mask", "auto"] = Field("none", description="none: whole image; mask: a fixed ROI mask "
                                                  "(stretched to each image); auto: Otsu foreground per image")
    mask_file: str | None = Field(None, description="Bundle file holding the ROI mask (mode mask)")
    auto_polarity: Literal["bright", "dark"] = Field("bright", description="auto: the part is brighter (or darker) "
                                                                          "than the background")
    erode_px: int = Field(0, ge=0, description="Shrink the domain by this many input pixels (ignore part edges)")


class ScaleInfo(Strict):
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
    ivf_file: str | None = Field(None, description="Bundle file: k-means centroids of the bank (index ivf)")
    hnsw_file: str | None = Field(None, description="Bundle file: int32 HNSW graph of the bank, each row's level "
                                                    "then the neighbour lists (index hnsw)")
    index: IndexInfo | None = Field(None, description="This scale's kNN index (None: scoring.index, as before "
                                                      "the fit chose per bank)")
    n_patches: int = Field(0, ge=0, description="Training patches seen at this scale")
    n_bank: int = Field(ge=1)
    good_median: float | None = Field(None, description="Median patch score of held-out good images (fusion)")
    good_max: float | None = Field(None, description="Mean image score of held-out good images (fusion)")


class PlanInfo(Strict):
    """Why these scales: the defect size range the engineer asked for, turned into views."""

    defect_size_px: tuple[float, float] | None = Field(None, description="Smallest and largest defect, frame px")
    px_per_mm: float | None = None
    frame_hw: tuple[int, int] = Field(description="Typical (median) training frame size")
    fusion: Literal["none", "max_normalised"] = Field("none", description="max_normalised: each scale's scores "
                                                      "become (s - good_median) / (good_max - good_median), clipped "
                                                      "at 0, then the max over scales; 1.0 = as abnormal as the worst "
                                                      "patch of a typical good image")
    reasoning: list[str] = Field(default_factory=list)


class GoldenImage(Strict):
    file: str
    score: float


class Int8Info(Strict):
    """Static int8 quantization tried at fit and the figures that kept or refused it (float runs when refused)."""

    kept: bool = Field(description="backbone.onnx is the int8 graph")
    reason: str
    format: str = Field(description="Quantization scheme, e.g. QDQ, per-channel int8 weights, uint8 activations")
    calibration_images: int = Field(ge=1, description="Good training images the activation ranges came from")
    parity_rel_rms: float | None = Field(None, description="RMS(int8 - float features) / RMS(float features) on "
                                         "held-out good images")
    parity_tolerance: float
    labels: str = Field("", description="What the AUROC gate was measured on")
    auroc_float: float | None = None
    auroc_int8: float | None = None
    auroc_max_drop: float = Field(description="int8 kept only if auroc_int8 >= auroc_float - this")
    score_rel_error_median: float | None = Field(None, description="Median |int8 - float| / float image score, "
                                                 "held-out good images")
    score_correlation: float | None = Field(None, description="Pearson correlation of int8 and float image scores")
    features_ms_float: float | None = Field(None, description="Feature extraction per image at fit, float graph")
    features_ms_int8: float | None = Field(None, description="Same, int8 graph (informative)")


class OnnxInfo(Strict):
    input: str
    output: str
    opset: int
    parity_max_abs_diff: float = Field(description="torch vs float ONNX graph")
    parity_tolerance: float
    precision: Literal["float32", "int8"] = Field("float32", description="Which graph backbone.onnx holds")
    int8: Int8Info | None = Field(None, description="Set when int8 was asked for (kept or not)")


class DatasetInfo(Strict):
    name: str
    fingerprint: str
    n_train: int
    n_holdout: int
    skipped: list[str] = Field(default_factory=list)
    augment: dict | None = Field(None, description="Fit-time augmentation of the good images (None = off)")
    n_bank_images: int | None = Field(None, description="Images the bank was built from (originals + copies)")


class PreprocessInfo(Strict):
    """How a frame becomes the backbone's input (export.preprocess.PreprocessSpec runs it): size, aspect handling,
    resampling, colour order, scaling to [0, 1] by the dtype's maximum, then (x - mean) / std per channel."""

    input_size: tuple[int, int] = Field(description="(height, width) of the backbone input")
    resize: Literal["stretch", "letterbox"] = "stretch"
    interpolation: Literal["area-down/linear-up", "box-area-down/linear-up"] = Field(
        "area-down/linear-up", description="area-down/linear-up: one area resample; box-area-down/linear-up: when "
        "shrinking by 4x or more on both axes, first a k x k box average with k half the factor (edge pixels "
        "repeated to a multiple of k), then area to the input: the same pixels averaged, ~7x faster on a 5 MP "
        "frame")
    color: Literal["rgb"] = "rgb"
    scale: Literal["dtype-max"] = "dtype-max"
    mean: tuple[float, float, float]
    std: tuple[float, float, float]


class Manifest(Strict):
    schema_: str = Field(alias="schema")
    model: ModelInfo
    backbone: BackboneInfo
    preprocess: PreprocessInfo
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

    model_config = ConfigDict(populate_by_name=True)
