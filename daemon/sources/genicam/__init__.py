"""GenICam/GenTL camera source (harvesters 1.4.3), one module per job:

- producers.py: GenTL producer discovery and loading, device enumeration and choice
- convert.py: GenTL buffer -> numpy image + frame metadata
- features.py: GenApi feature writer (source config -> node map)
- source.py: `GenICamSource`, the acquisition thread, loss handling and reconnects
"""

from .convert import PIXEL_FORMATS, component_to_image, frame_id_gap
from .producers import describe_devices, list_devices, producer_files
from .source import GenICamSource

__all__ = [
    "PIXEL_FORMATS",
    "GenICamSource",
    "component_to_image",
    "describe_devices",
    "frame_id_gap",
    "list_devices",
    "producer_files",
]
