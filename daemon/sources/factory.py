"""Build the configured frame source.

Why lazy imports: harvesters/genicam are an optional extra (`linesight[camera]`) with native
libraries; a folder or video station must start without them, and a camera station without them
must fail with the install command, not an ImportError traceback.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pydantic import TypeAdapter, ValidationError

from linesight.config.sources import (
    FolderSourceConfig,
    GenICamSourceConfig,
    SourceConfig,
    SyntheticSourceConfig,
    VideoSourceConfig,
)
from linesight.errors import ConfigError, validation_problems

from .base import Source, SourceError

_ADAPTER: TypeAdapter[Any] = TypeAdapter(SourceConfig)


def parse_source_config(data: Mapping[str, Any]) -> SourceConfig:
    """Validate a plain mapping (e.g. the `source:` section of a YAML file) into a source config."""
    try:
        return _ADAPTER.validate_python(dict(data))
    except ValidationError as exc:
        raise ConfigError(f"invalid source config: {validation_problems(exc, 'source', prefix='source')}") from None


def require_camera_support(cfg: GenICamSourceConfig) -> None:
    """SourceError with the install command when the optional camera packages are missing."""
    try:
        import genicam.genapi  # noqa: F401 - probe the native part too
        import harvesters.core  # noqa: F401
    except ImportError as exc:
        raise SourceError(
            f"source {cfg.name!r} has type genicam but the camera support is not installed "
            f"({exc}); install it with: pip install 'linesight[camera]'", field="source.type"
        ) from None


def build_source(cfg: SourceConfig | Mapping[str, Any]) -> Source:
    """Source object for `cfg` (not opened yet). Raises ConfigError / SourceError with the fix."""
    if isinstance(cfg, Mapping):
        cfg = parse_source_config(cfg)
    if isinstance(cfg, SyntheticSourceConfig):
        from .synthetic import SyntheticSource

        return SyntheticSource(cfg)
    if isinstance(cfg, FolderSourceConfig):
        from .folder import FolderSource

        return FolderSource(cfg)
    if isinstance(cfg, VideoSourceConfig):
        from .video import VideoSource

        return VideoSource(cfg)
    if isinstance(cfg, GenICamSourceConfig):
        require_camera_support(cfg)
        from .genicam import GenICamSource

        return GenICamSource(cfg)
    raise ConfigError(
        f"unknown source config type {type(cfg).__name__}; expected one of genicam, folder, video, synthetic"
    )
