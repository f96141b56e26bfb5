"""Frame sources: GenICam camera, image folder, video, synthetic (see base.py for the contract)."""

from .base import EndOfStream, Frame, Source, SourceError, SourceStatus
from .factory import build_source, parse_source_config

__all__ = [
    "EndOfStream",
    "Frame",
    "Source",
    "SourceError",
    "SourceStatus",
    "build_source",
    "parse_source_config",
]
