"""GenApi feature writer: the source config applied to a camera's node map, typed, range-checked, read back."""

from __future__ import annotations

import difflib
import logging
from typing import Any

from genicam.genapi import (
    EAccessMode,
    IBoolean,
    ICategory,
    ICommand,
    IEnumeration,
    IFloat,
    IInteger,
    IString,
    LogicalErrorException,
)

from linesight.config.sources import GenICamSourceConfig

from ..base import SourceError
from .convert import PIXEL_FORMATS

log = logging.getLogger(__name__)

_CHUNK_CONTROL = {"ChunkModeActive", "ChunkSelector", "ChunkEnable"}
_ACCESS_NAMES = {EAccessMode.NI: "not implemented", EAccessMode.NA: "not available", EAccessMode.WO: "write-only",
                 EAccessMode.RO: "read-only", EAccessMode.RW: "read-write"}


def node(nm: Any, name: str) -> Any:
    """The node `name` of node map `nm`, None when the camera has no such node."""
    try:
        return nm.get_node(name)
    except LogicalErrorException:
        return None


def readable(n: Any) -> bool:
    return n.node.get_access_mode() in (EAccessMode.RO, EAccessMode.RW)


def writable(nm: Any, name: str) -> bool:
    n = node(nm, name)
    return n is not None and n.node.get_access_mode() in (EAccessMode.WO, EAccessMode.RW)


class FeatureWriter:
    """Writes features to one node map; every value written is recorded in `applied` (name -> read back).

    `where` names the source in messages; `model` is the camera model, for the missing-trigger message."""

    def __init__(self, nm: Any, where: str, applied: dict[str, Any], model: Any = None) -> None:
        self.nm, self.where, self.applied, self.model = nm, where, applied, model

    def configure(self, cfg: GenICamSourceConfig) -> None:
        """Apply a source config: raw features first, then the named settings, then the trigger."""
        nm = self.nm
        for name, value in cfg.features.items():
            self.set(name, value, f"features.{name}")
        if cfg.pixel_format is not None:
            if cfg.pixel_format not in PIXEL_FORMATS:
                raise SourceError(
                    f"{self.where}: pixel_format={cfg.pixel_format!r} is not supported by linesight "
                    f"(supported: {', '.join(PIXEL_FORMATS)})"
                )
            self.set("PixelFormat", cfg.pixel_format, "pixel_format")
        if cfg.width is not None:
            self.set("Width", cfg.width, "width")
        if cfg.height is not None:
            self.set("Height", cfg.height, "height")
        if cfg.exposure_time_us is not None:
            if writable(nm, "ExposureAuto"):
                self.set("ExposureAuto", "Off", "exposure_time_us (ExposureAuto)")
            self.set("ExposureTime", cfg.exposure_time_us, "exposure_time_us")
        if cfg.gain_db is not None:
            if writable(nm, "GainAuto"):
                self.set("GainAuto", "Off", "gain_db (GainAuto)")
            self.set("Gain", cfg.gain_db, "gain_db")
        self.configure_trigger(cfg)
        fmt = node(nm, "PixelFormat")
        if fmt is not None and readable(fmt) and str(fmt.value) not in PIXEL_FORMATS:
            raise SourceError(
                f"{self.where}: the camera delivers PixelFormat {fmt.value}, which linesight cannot convert; "
                f"set pixel_format to one of {', '.join(p for p in PIXEL_FORMATS if p in fmt.symbolics)}"
            )

    def configure_trigger(self, cfg: GenICamSourceConfig) -> None:
        nm, trig = self.nm, cfg.trigger
        mode = trig.mode
        origin = f"trigger.mode={mode}"
        if mode == "free_run":
            if node(nm, "TriggerMode") is not None:
                self._select_frame_start(origin)
                self.set("TriggerMode", "Off", origin)
            return
        needed = ["TriggerMode", "TriggerSource"] + (["TriggerSoftware"] if mode == "software" else [])
        missing = [n for n in needed if node(nm, n) is None]
        if missing:
            raise SourceError(
                f"{self.where}: {origin} needs the camera feature(s) {', '.join(missing)}, which "
                f"{self.model!r} does not have; use trigger.mode: free_run"
            )
        self._select_frame_start(origin)
        self.set("TriggerMode", "Off", origin)
        self.set("TriggerSource", "Software" if mode == "software" else trig.source,
                 origin if mode == "software" else "trigger.source")
        if mode == "hardware" and trig.activation is not None:
            self.set("TriggerActivation", trig.activation, "trigger.activation")
        self.set("TriggerMode", "On", origin)

    def _select_frame_start(self, origin: str) -> None:
        selector = node(self.nm, "TriggerSelector")
        if selector is not None and writable(self.nm, "TriggerSelector"):
            self.set("TriggerSelector", "FrameStart", origin)

    def set(self, name: str, value: Any, origin: str) -> Any:
        """Set one feature with a typed, range-checked value, read it back and log it."""
        where = f"{self.where}: {origin}: feature {name}={value!r}"
        n = node(self.nm, name)
        if n is None:
            names = [x.node.name for x in self.nm.nodes if x.node.is_feature()]
            close = difflib.get_close_matches(name, names, n=3)
            hint = f"; did you mean {', '.join(close)}?" if close else ""
            raise SourceError(f"{where}: the camera has no feature {name!r}{hint}")
        access = n.node.get_access_mode()
        if access not in (EAccessMode.WO, EAccessMode.RW):
            raise SourceError(f"{where}: not writable now (access mode {_ACCESS_NAMES.get(access, access)})")
        try:
            if isinstance(n, ICommand):
                if value is not True:
                    raise SourceError(f"{where}: {name} is a command; set it to true to execute it")
                n.execute()
                readback: Any = "executed"
            else:
                n.value = typed_value(n, value, where)
                readback = n.value if readable(n) else "(write-only)"
        except SourceError:
            raise
        except Exception as exc:  # noqa: BLE001 - genapi rejects: out of range, locked, invalid
            raise SourceError(f"{where}: rejected by the camera: {type(exc).__name__}: {exc}") from exc
        self.applied[name] = readback
        if readback != value and not isinstance(n, ICommand):
            log.info("%s: feature %s requested=%r actual=%r", self.where, name, value, readback)
        else:
            log.debug("%s: feature %s=%r", self.where, name, readback)
        return readback


def typed_value(n: Any, value: Any, where: str) -> Any:
    """`value` (from YAML) as the node's type, checked against its symbolics / range / increment."""
    if isinstance(n, IEnumeration):
        text = str(value)
        allowed = list(n.symbolics)
        if text not in allowed:
            raise SourceError(f"{where}: not one of {', '.join(allowed)}")
        return text
    if isinstance(n, IBoolean):
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false"):
            return value.lower() == "true"
        raise SourceError(f"{where}: expected true or false")
    if isinstance(n, IInteger):
        if isinstance(value, bool) or not (
            isinstance(value, int) or (isinstance(value, float) and value.is_integer())
            or (isinstance(value, str) and value.strip().lstrip("-").isdigit())
        ):
            raise SourceError(f"{where}: expected an integer")
        number = int(value)
        lo, hi, inc = n.min, n.max, n.inc
        if not lo <= number <= hi:
            raise SourceError(f"{where}: out of range [{lo}, {hi}]")
        if inc and (number - lo) % inc:
            raise SourceError(f"{where}: must be {lo} + a multiple of {inc}")
        return number
    if isinstance(n, IFloat):
        try:
            number = float(value) if not isinstance(value, bool) else None
        except ValueError:
            number = None
        if number is None:
            raise SourceError(f"{where}: expected a number")
        lo, hi = n.min, n.max
        if not lo <= number <= hi:
            raise SourceError(f"{where}: out of range [{lo}, {hi}]")
        return number
    if isinstance(n, IString):
        return str(value)
    raise SourceError(f"{where}: feature type {type(n).__name__} cannot be set from the config")


def find_chunk_nodes(nm: Any) -> list[str]:
    """Names of the chunk data features under ChunkDataControl (control nodes, selectors, commands left out)."""
    category = node(nm, "ChunkDataControl")
    if category is None or not isinstance(category, ICategory):
        return []
    names: list[str] = []
    stack = list(category.features)
    while stack:
        n = stack.pop(0)
        if isinstance(n, ICategory):
            stack.extend(n.features)
            continue
        name = n.node.name
        if name in _CHUNK_CONTROL or name.endswith("Selector") or isinstance(n, ICommand):
            continue
        names.append(name)
    return names
