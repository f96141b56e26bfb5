"""Validated settings of the daemon's frame sources: GenICam camera, image folder, video, synthetic.

Why a discriminated union on `type`: each station has exactly one kind of source and a typo in a
camera setting must fail at load time with the field's name, not as a silent default on the line.
Every field documents itself (integrators read `description` in generated docs / error messages) and
defaults are the safe choice: a camera that stops sending frames is reconnected, a folder is replayed
once, nothing is paced unless asked.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, field_validator, model_validator

from linesight.config.base import Strict

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,63}$")
_SFNC_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")

FeatureValue = bool | int | float | str


class _SourceBase(Strict):

    name: str = Field(
        default="cam0",
        description="Source name, carried in every frame, verdict and metric label (letters, digits, "
        "'_', '-', '.'; 1-64 characters).",
    )
    max_frame_pixels: int = Field(
        default=64_000_000, ge=4,
        description="Largest frame accepted (width x height); a bigger one gets the fail-safe verdict bad_frame "
        "(a 12000x12000 JPEG once took 3.6 GB and 13 s). Image files are checked from their header, undecoded.",
    )

    @field_validator("name")
    @classmethod
    def _check_name(cls, value: str) -> str:
        if not _NAME.match(value):
            raise ValueError(
                f"name={value!r}: use 1-64 characters from letters, digits, '_', '-', '.', "
                "starting with a letter or digit"
            )
        return value


class _Backoff(Strict):
    """Shared reconnect backoff fields (exponential from min to max)."""

    reconnect_backoff_min_s: float = Field(
        default=0.5, gt=0, le=3600, description="First wait before reconnecting after a loss, in seconds."
    )
    reconnect_backoff_max_s: float = Field(
        default=30.0, gt=0, le=3600,
        description="Longest wait between reconnect attempts; the wait doubles from min up to this.",
    )

    @model_validator(mode="after")
    def _order(self) -> _Backoff:
        if self.reconnect_backoff_min_s > self.reconnect_backoff_max_s:
            raise ValueError(
                f"reconnect_backoff_min_s={self.reconnect_backoff_min_s} is larger than "
                f"reconnect_backoff_max_s={self.reconnect_backoff_max_s}"
            )
        return self


class DeviceSelector(Strict):
    """Which camera to open; set at most one key. None set = the only device found (error if several)."""


    serial: str | None = Field(default=None, min_length=1, description="Device serial number (DeviceSerialNumber).")
    user_id: str | None = Field(
        default=None, min_length=1, description="User-defined name stored in the camera (DeviceUserID)."
    )
    index: int | None = Field(
        default=None, ge=0,
        description="Position in the producer's device list; only stable with a single camera - prefer serial.",
    )

    @model_validator(mode="after")
    def _one(self) -> DeviceSelector:
        given = [k for k in ("serial", "user_id", "index") if getattr(self, k) is not None]
        if len(given) > 1:
            raise ValueError(f"device: set only one of serial, user_id, index (got {', '.join(given)})")
        return self


class TriggerConfig(Strict):
    """How frames are started (SFNC TriggerSelector=FrameStart)."""


    mode: Literal["free_run", "software", "hardware"] = Field(
        default="free_run",
        description="free_run: the camera streams continuously (TriggerMode=Off); software: one frame per "
        "trigger() call (TriggerSource=Software, TriggerSoftware); hardware: one frame per edge on a line.",
    )
    source: str = Field(
        default="Line0", min_length=1,
        description="TriggerSource for hardware mode, e.g. Line0 / Line1.",
    )
    activation: str | None = Field(
        default="RisingEdge",
        description="TriggerActivation for hardware mode (RisingEdge, FallingEdge, ...); null keeps the "
        "camera's setting.",
    )

    @model_validator(mode="after")
    def _source_only_for_hardware(self) -> TriggerConfig:
        # Compared with the defaults (not model_fields_set) so a dumped config validates again.
        if self.mode != "hardware":
            for name in ("source", "activation"):
                if getattr(self, name) != type(self).model_fields[name].default:
                    raise ValueError(
                        f"trigger.{name} only applies to trigger.mode: hardware (mode is {self.mode}); remove it"
                    )
        return self


class GenICamSourceConfig(_SourceBase, _Backoff):
    """An industrial camera through a GenTL producer (.cti) with harvesters."""

    type: Literal["genicam"] = Field(
        default="genicam", description="GenICam/GenTL camera (pip install linesight[camera])."
    )
    cti: Path | None = Field(
        default=None,
        description="GenTL producer file (.cti) of the camera vendor; null = every .cti in the directories "
        "of GENICAM_GENTL64_PATH (the GenTL standard variable).",
    )
    device: DeviceSelector = Field(default_factory=DeviceSelector, description="Which camera to open.")
    features: dict[str, FeatureValue] = Field(
        default_factory=dict,
        description="SFNC feature name -> value, applied in the given order BEFORE the typed settings "
        "below (so e.g. UserSetLoad or binning come first). A command feature is executed with value true.",
    )
    trigger: TriggerConfig = Field(default_factory=TriggerConfig, description="Frame start triggering.")
    exposure_time_us: float | None = Field(
        default=None, gt=0, description="ExposureTime in microseconds (turns ExposureAuto Off); null = camera's."
    )
    gain_db: float | None = Field(default=None, description="Gain in dB (turns GainAuto Off); null = camera's.")
    pixel_format: str | None = Field(
        default=None,
        description="PixelFormat: Mono8, Mono10, Mono12, Mono16, RGB8, BGR8, RGBa8, BGRa8; null = camera's.",
    )
    width: int | None = Field(default=None, gt=0, description="Width in pixels (ROI); null = camera's.")
    height: int | None = Field(default=None, gt=0, description="Height in pixels (ROI); null = camera's.")
    fetch_timeout_s: float = Field(
        default=2.0, gt=0, le=600,
        description="Software trigger: a triggered frame that has not arrived after this many seconds is "
        "delivered as a bad frame and the camera is reconnected.",
    )
    starvation_timeout_s: float | None = Field(
        default=None, gt=0, le=86400,
        description="No frame for this many seconds while acquiring -> camera marked down and reconnected. "
        "null = 5 s in free_run and off for hardware trigger (a stopped line sends no edges); for "
        "hardware trigger set it above the longest pause between parts.",
    )
    num_buffers: int = Field(
        default=8, ge=1, le=1024,
        description="Driver buffers announced to the producer; also the number of frames held host-side "
        "before the camera has to drop (drops are counted from frame-id gaps).",
    )

    @field_validator("features")
    @classmethod
    def _feature_names(cls, value: dict[str, FeatureValue]) -> dict[str, FeatureValue]:
        for name in value:
            if not _SFNC_NAME.match(name):
                raise ValueError(f"features: {name!r} is not a GenICam feature name (letters, digits, '_')")
        return value

    @model_validator(mode="after")
    def _consistent(self) -> GenICamSourceConfig:
        typed = {"PixelFormat": "pixel_format", "Width": "width", "Height": "height",
                 "ExposureTime": "exposure_time_us", "Gain": "gain_db"}
        for name in self.features:
            if name in ("TriggerMode", "TriggerSource", "TriggerActivation", "TriggerSelector", "TriggerSoftware"):
                raise ValueError(f"features.{name}: configure triggering with trigger.mode/source/activation")
            if name in typed and getattr(self, typed[name]) is not None:
                raise ValueError(f"features.{name} and {typed[name]} both set; keep one")
        mode = self.trigger.mode
        if mode == "software" and self.starvation_timeout_s is not None:
            raise ValueError(
                "starvation_timeout_s does not apply to trigger.mode: software (an idle line sends no "
                "triggers); fetch_timeout_s bounds each triggered frame"
            )
        if mode != "software" and self.fetch_timeout_s != type(self).model_fields["fetch_timeout_s"].default:
            raise ValueError(
                f"fetch_timeout_s only applies to trigger.mode: software (mode is {mode}); "
                "use starvation_timeout_s"
            )
        return self

    @property
    def effective_starvation_timeout_s(self) -> float | None:
        if self.starvation_timeout_s is not None:
            return self.starvation_timeout_s
        return 5.0 if self.trigger.mode == "free_run" else None


IMAGE_PATTERNS = ["*.png", "*.jpg", "*.jpeg", "*.bmp", "*.tif", "*.tiff"]


class FolderSourceConfig(_SourceBase):
    """Images from a directory: replay once, loop, or watch for new files (e.g. written by a PLC/camera)."""

    type: Literal["folder"] = Field(default="folder", description="Images from a directory.")
    path: Path = Field(description="Directory holding the images (not searched recursively).")
    patterns: list[str] = Field(
        default_factory=lambda: list(IMAGE_PATTERNS), min_length=1,
        description="File-name globs (fnmatch, case-insensitive) selecting the images.",
    )
    mode: Literal["once", "loop", "watch"] = Field(
        default="once",
        description="once: sorted files then end of stream; loop: repeat forever; watch: new files as they "
        "appear (read once their size and mtime are stable for watch_settle_s).",
    )
    rate_hz: float | None = Field(
        default=None, gt=0, le=10000, description="Pace frames at this rate; null = as fast as read."
    )
    grayscale: bool = Field(default=False, description="Convert colour images to single-channel gray.")
    watch_existing: bool = Field(
        default=False,
        description="watch mode: also inspect files already present at start (off: a restart does not "
        "re-inspect yesterday's images).",
    )
    watch_settle_s: float = Field(
        default=0.5, ge=0, le=600,
        description="watch mode: a new file is read once its size and mtime did not change for this long "
        "(so half-written files are never decoded).",
    )
    watch_poll_s: float = Field(
        default=0.2, gt=0, le=60,
        description="Directory poll interval in watch mode (and in loop mode while the folder is empty).",
    )

    @field_validator("patterns")
    @classmethod
    def _patterns(cls, value: list[str]) -> list[str]:
        for p in value:
            if not p or "/" in p or "\\" in p:
                raise ValueError(f"patterns: {p!r} must be a non-empty file-name glob without directories")
        return value


class VideoSourceConfig(_SourceBase, _Backoff):
    """A video file, a network stream (rtsp://, http://) or a local capture device index."""

    type: Literal["video"] = Field(default="video", description="Video file, stream URL or device index via OpenCV.")
    uri: str | int = Field(
        description="Video file path, stream URL (rtsp://, http://, ...) or capture device index (0, 1, ...)."
    )
    loop: bool = Field(default=False, description="Files only: restart at the end instead of ending the stream.")
    open_timeout_s: float = Field(default=10.0, gt=0, le=600, description="Streams: connection timeout.")
    read_timeout_s: float = Field(
        default=5.0, gt=0, le=600, description="Streams: a read blocked longer than this counts as a loss."
    )

    @field_validator("uri", mode="before")
    @classmethod
    def _uri_not_bool(cls, value: object) -> object:
        if isinstance(value, bool):
            raise ValueError("uri must be a path, URL or device index, not a boolean")
        return value

    @field_validator("uri")
    @classmethod
    def _uri(cls, value: str | int) -> str | int:
        if isinstance(value, int) and value < 0:
            raise ValueError(f"uri={value}: a device index is >= 0")
        if isinstance(value, str) and not value.strip():
            raise ValueError("uri is empty")
        return value


class SyntheticSourceConfig(_SourceBase):
    """Deterministic textured images with a drawn defect every N frames (demos, tests, soak runs)."""

    type: Literal["synthetic"] = Field(default="synthetic", description="Generated frames.")
    width: int = Field(default=640, ge=16, le=16384, description="Image width in pixels.")
    height: int = Field(default=480, ge=16, le=16384, description="Image height in pixels.")
    channels: Literal[1, 3] = Field(default=1, description="1 = gray, 3 = BGR.")
    rate_hz: float | None = Field(default=10.0, gt=0, le=10000, description="Frame rate; null = as fast as read.")
    defect_every: int = Field(
        default=10, ge=0, description="Draw a defect on every N-th frame (seq N-1, 2N-1, ...); 0 = never."
    )
    seed: int = Field(default=0, ge=0, description="Random seed: same seed, same frames.")
    count: int | None = Field(
        default=None, ge=1, description="Stop after this many frames (end of stream); null = endless."
    )


SourceConfig = Annotated[
    GenICamSourceConfig | FolderSourceConfig | VideoSourceConfig | SyntheticSourceConfig,
    Field(discriminator="type"),
]
