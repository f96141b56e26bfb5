"""Frame preparation (lighting compensation, alignment) and fit-time augmentation options.

`FrameInfo` is stored in the bundle manifest (field `frame`) so the daemon prepares every frame exactly as
training did; `AugmentConfig` only shapes the training set (FitConfig field `augment`). Every default is off.
"""
from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from linesight.config.base import Strict


class PhotometricInfo(Strict):
    """Lighting compensation applied to every frame (training and inference) before alignment and features."""

    mode: Literal["none", "gain_offset", "clahe"] = Field(
        "none", description="none: leave intensities alone; gain_offset: map each frame's robust mean/std of "
                            "intensity onto the training reference (global lamp drift, exposure changes); "
                            "clahe: local contrast equalisation of luminance (uneven lighting; changes texture "
                            "contrast, so train and infer with it)")
    clahe_clip: float = Field(2.0, gt=0, le=40, description="CLAHE clip limit: higher = stronger local contrast "
                                                             "(and more amplified noise); 2-3 is a usual start")
    clahe_tile: int = Field(8, ge=1, le=64, description="CLAHE tiles per image side: smaller tiles follow "
                                                         "lighting gradients more closely")
    ref_mean: float | None = Field(None, ge=0, le=1, description="Filled at fit (gain_offset): median intensity of "
                                                                 "the training images, as a fraction of full scale")
    ref_std: float | None = Field(None, gt=0, le=1, description="Filled at fit (gain_offset): robust spread "
                                                                "(IQR / 1.349) of training intensities, fraction of "
                                                                "full scale")


class AlignInfo(Strict):
    """Software de-jitter: register each frame to the training reference, then warp it once at full size."""

    mode: Literal["none", "translation", "rigid"] = Field(
        "none", description="none: no registration; translation: x/y shift only; rigid: shift + rotation")
    method: Literal["phase", "ecc"] = Field(
        "phase", description="phase: windowed phase correlation (+ a bounded angle search for rigid), fast and "
                             "robust to lighting; ecc: phase estimate refined by OpenCV ECC (sub-pixel, slower, "
                             "may fail to converge on flat images)")
    max_shift_frac: float = Field(0.1, gt=0, le=0.45, description="Largest shift searched, as a fraction of the "
                                                                   "image height/width; larger shifts are failures")
    max_angle_deg: float = Field(3.0, ge=0, le=20, description="rigid: largest rotation searched (degrees); larger "
                                                                "rotations are failures")
    min_quality: float = Field(0.3, ge=-1, le=1, description="Smallest accepted quality: normalised "
                                                             "cross-correlation of the high-passed aligned frame "
                                                             "with the reference (1 = same structure, ~0 = "
                                                             "unrelated; lighting gradients do not count). "
                                                             "Lower = accept more")
    on_failure: Literal["failsafe", "unaligned"] = Field(
        "failsafe", description="failsafe: a frame that cannot be aligned gets a failure (NG by the verdict "
                                "rules); unaligned: score it as it is and flag it `unaligned`")
    work_size: int = Field(256, ge=32, le=2048, description="Long side (px) of the grayscale copy used for "
                                                             "registration (rounded up to an FFT-friendly size): "
                                                             "larger = finer but slower")
    reference_file: str | None = Field(None, description="Filled at fit: bundle file holding the reference image "
                                                         "(16-bit grayscale PNG at the work size)")


class FrameInfo(Strict):
    """Per-frame preparation: photometric normalisation first, then alignment."""

    photometric: PhotometricInfo = Field(default_factory=PhotometricInfo)
    align: AlignInfo = Field(default_factory=AlignInfo)


class AugmentConfig(Strict):
    """Extra good images made from the training images before the memory bank is built.

    Only use transforms the real parts can show: a bank that learned flipped parts will accept flipped parts.
    """

    hflip: bool = Field(False, description="Random left-right flips")
    vflip: bool = Field(False, description="Random top-bottom flips")
    rot90: bool = Field(False, description="Random multiples of 90 degrees (180 only for non-square images, "
                                           "so every copy keeps its size)")
    rotate_deg: float = Field(0.0, ge=0, le=45, description="Random rotation within +/- this many degrees "
                                                             "(reflected border)")
    brightness: float = Field(0.0, ge=0, le=0.5, description="Random intensity offset within +/- this fraction "
                                                             "of full scale")
    contrast: float = Field(0.0, ge=0, lt=1, description="Random contrast gain within 1 +/- this, around the "
                                                         "image mean")
    copies: int = Field(0, ge=0, le=32, description="Augmented copies per training image (0 = no augmentation); "
                                                    "the coreset keeps the bank size bounded")
    seed: int = Field(0, ge=0, description="Random seed: the same seed gives the same copies")

    @model_validator(mode="after")
    def _copies_match_transforms(self) -> AugmentConfig:
        has_transform = (self.hflip or self.vflip or self.rot90 or self.rotate_deg > 0 or self.brightness > 0
                         or self.contrast > 0)
        if self.copies > 0 and not has_transform:
            raise ValueError("augment.copies > 0 but no transform is enabled: the copies would be duplicates; "
                             "enable hflip/vflip/rot90/rotate_deg/brightness/contrast or set copies: 0")
        if self.copies == 0 and has_transform:
            raise ValueError("augment transforms are enabled but copies is 0, so they would be ignored; set "
                             "copies (e.g. 2) or disable the transforms")
        return self

    @property
    def active(self) -> bool:
        return self.copies > 0
