"""The daemon's configuration: one YAML file per station (`linesight run --config station.yaml`)."""
from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, model_validator

from linesight.config.base import Strict
from linesight.config.inspection import MAX_REGIONS
from linesight.config.outputs import OutputsConfig
from linesight.config.sources import SourceConfig


class ModelConfig(Strict):

    bundle: Path | None = Field(None, description="Bundle folder or .zip written by `linesight fit` (or `project`)")
    project: Path | None = Field(None, description="Inspection project folder (`linesight project`): the station "
                                 "runs its active version, reloads when another is activated, and archives into "
                                 "its detect_results/ unless outputs.archive.dir is set")
    watch: bool = Field(True, description="Reload automatically when the bundle file/folder changes")
    watch_interval_s: float = Field(2.0, gt=0, description="How often the bundle's modification time is checked")
    golden_tolerance: float = Field(1e-3, gt=0, description="Relative score difference allowed on the golden images "
                                                            "before a new bundle is refused")
    reload_dirs: list[Path] | None = Field(None, description="Folders cmd/reload may load bundles from (default: "
                                           "the folder that holds `bundle`); anything else is refused")
    threads: int | None = Field(None, ge=1, description="Inference threads (default: onnxruntime's choice)")
    min_defect_px: float | None = Field(None, gt=0, description="Smallest defect (frame pixels) this station must "
                                        "catch: a bundle whose finest scale cannot see it is refused (fit it with "
                                        "--defect-size)")

    @model_validator(mode="after")
    def _one_model(self) -> ModelConfig:
        if (self.bundle is None) == (self.project is None):
            raise ValueError("give either bundle (a bundle path) or project (a project folder), not "
                             + ("both" if self.bundle is not None else "neither"))
        return self

    def models_folder(self) -> Path:
        """Where cmd/reload may load bundles from when reload_dirs is not set."""
        return self.bundle.parent if self.bundle is not None else self.project / "models"


class PartIdConfig(Strict):

    mode: Literal["counter", "filename", "chunk", "external"] = Field(
        "counter", description="counter: prefix + sequence; filename: the frame's file name; chunk: a chunk "
                               "value; external: ids announced on MQTT cmd/part ({\"part_id\": ...}), matched to "
                               "frames in arrival order")
    prefix: str = Field("", description="Prefix for counter part ids")
    chunk_key: str = Field("", description="Chunk/metadata key holding the part id (mode chunk)")


class PipelineConfig(Strict):

    deadline_ms: float = Field(500, gt=0, description="Trigger-to-verdict budget; a frame not decided in time gets "
                                                      "the fail-safe verdict")
    queue_size: int = Field(4, ge=1, le=1024, description="Frames waiting for inference; when full, new frames get "
                                                          "the fail-safe verdict (reason frame_dropped)")
    publish_queue_mb: float = Field(256, gt=0, description="Memory (MB) for frames and anomaly maps waiting for "
                                    "the ZeroMQ image feed and the archive; beyond it their pictures are dropped "
                                    "and counted (linesight_sink_dropped_total{sink=\"publish\"}), the verdict "
                                    "is still published: processing never waits for the outputs")
    max_batch: int = Field(4, ge=1, le=64, description="Frames that queued up while the engine was busy are "
                                                      "decided together (higher throughput under load, no "
                                                      "added latency when idle)")
    fail_safe_verdict: Literal["NG", "OK"] = Field("NG", description="Verdict given when a frame cannot be decided")
    software_trigger_hz: float | None = Field(None, gt=0, description="Fire the source's software trigger at this "
                                                                      "rate (cameras in software-trigger mode)")
    part_id: PartIdConfig = Field(default_factory=PartIdConfig, description="Where part ids come from")
    stats_interval_s: float = Field(10.0, gt=0, description="Period of the MQTT stats message")
    max_frames: int | None = Field(None, ge=1, description="Stop after this many frames (tests, demos)")
    state_dir: Path | None = Field(None, description="Folder for the station's run number and seq counter, so "
                                   "(station, run, seq) never repeats across restarts (default: systemd's "
                                   "$STATE_DIRECTORY; without either, seq restarts at 1 and run is the start time)")


class AnalysisConfig(Strict):

    enabled: bool = Field(True, description="Measure, type and grade the regions of every NG frame")
    spec: Path | None = Field(None, description="Inspection spec YAML (types, zones, limits -> grade and OK/NG); "
                                                "without one the score threshold decides")
    knowledge: Path | None = Field(None, description="Knowledge base YAML (type x zone x trend -> causes, actions)")
    max_regions: int = Field(MAX_REGIONS, ge=1, description="Regions measured per frame (bounds work on noisy maps)")
    trend_window: int = Field(50, ge=1, description="Recent parts kept for trend conditions (NG rate, repeats)")


class TrendsConfig(Strict):
    """Trend charts on the verdicts (daemon.trends, docs/trends.md): early warning before the NG-rate alarm."""

    enabled: bool = Field(True, description="Chart every decided verdict and alarm (trend_score, trend_ng_rate, "
                          "trend_type) when a chart crosses its control limit")
    burn_in: int = Field(1000, ge=100, description="Decided parts after each start and model change that estimate "
                         "the in-control score distribution and NG rates (Phase I); no trend alarm before")
    score_lambda: float = Field(0.05, gt=0, le=1, description="EWMA weight of the newest part's score statistic "
                                "(smaller: slower, more sensitive to small drifts)")
    score_limit: float = Field(4.5, gt=0, description="Score EWMA control limit in standard deviations of the EWMA")
    rate_shift: float = Field(2.0, gt=1, description="The NG-rate and per-type CUSUMs are tuned to detect this "
                              "factor over the in-control rate")
    rate_arl: int = Field(100_000, ge=100, description="In-control parts between false alarms of each rate CUSUM "
                          "(exact average run length at the burn-in's rate estimate; sets its limit)")
    max_types: int = Field(8, ge=0, le=32, description="Defect types with their own rate chart (the most frequent "
                           "in the burn-in, then new ones as they appear); more types are not charted")


class DaemonConfig(Strict):

    model: ModelConfig = Field(description="The model to run: a bundle, or a project's active version")
    source: SourceConfig = Field(description="Where frames come from")
    pipeline: PipelineConfig = Field(default_factory=PipelineConfig, description="Deadlines, queues, fail-safe")
    analysis: AnalysisConfig = Field(default_factory=AnalysisConfig, description="Defect analysis of NG frames")
    trends: TrendsConfig = Field(default_factory=TrendsConfig, description="Trend charts and early-warning alarms")
    outputs: OutputsConfig = Field(default_factory=OutputsConfig, description="MQTT, ZeroMQ, metrics, archive")
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field("INFO", description="Logging level")
