"""GenTL producers: discovery, loading (one code path for the daemon and for commissioning), device choice.

harvesters 1.4.3 API facts used here (read from its source): `Harvester.add_file(path,
check_existence=True, check_validity=True)`, `update()`, `device_info_list[i].property_dict` keys
`serial_number`, `user_defined_name`, `model`, `vendor`, `id_`, `tl_type`; `reset()`.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

from harvesters.core import Harvester

from linesight.config.sources import DeviceSelector

from ..base import SourceError


def _adopt_harvesters_logger() -> None:
    """harvesters gives its logger a private stderr handler and propagate=False, bypassing the daemon's
    log configuration (journald/JSON); route its records through the standard hierarchy instead."""
    logger = logging.getLogger("harvesters.core")
    logger.handlers.clear()
    logger.propagate = True


_adopt_harvesters_logger()


def producer_files(cti: Path | None) -> list[str]:
    """The configured .cti, or every .cti in GENICAM_GENTL64_PATH (GenTL standard discovery)."""
    if cti is not None:
        if not Path(cti).is_file():
            raise SourceError(f"GenTL producer {cti} does not exist; set cti to the camera vendor's .cti file",
                              field="source.cti")
        return [str(cti)]
    found: list[str] = []
    for folder in os.environ.get("GENICAM_GENTL64_PATH", "").split(os.pathsep):
        if folder and Path(folder).is_dir():
            found += sorted(str(p) for p in Path(folder).glob("*.cti"))
    if not found:
        raise SourceError(
            "no GenTL producer: cti is not set and GENICAM_GENTL64_PATH lists no directory with a .cti file; "
            "set cti: /path/to/vendor_producer.cti", field="source.cti"
        )
    return found


def load_producers(h: Harvester, ctis: list[str], where: str = "") -> list[dict[str, Any]]:
    """Load every producer into `h`, enumerate, and return the device information per camera.

    `where` prefixes error messages (e.g. "genicam source 'cam': "). The caller owns `h` (reset it)."""
    for path in ctis:
        try:
            h.add_file(path, check_existence=True, check_validity=True)
        except OSError as exc:
            raise SourceError(f"{where}cannot load GenTL producer {path}: {exc}") from exc
    h.update()
    return [
        {k: v for k, v in d.property_dict.items() if k not in ("parent", "thisown")}
        for d in h.device_info_list
    ]


def list_devices(cti: Path | None = None) -> list[dict[str, Any]]:
    """Device information (serial_number, user_defined_name, model, vendor, id_, ...) per camera.

    For commissioning (which serial is which camera); opens no device.
    """
    h = Harvester()
    try:
        return load_producers(h, producer_files(cti))
    finally:
        h.reset()


def describe_devices(props: list[dict[str, Any]]) -> str:
    if not props:
        return "none"
    return "; ".join(
        f"[{i}] serial={p.get('serial_number')!r} user_id={p.get('user_defined_name')!r} "
        f"model={p.get('model')!r} vendor={p.get('vendor')!r} id={p.get('id_')!r}"
        for i, p in enumerate(props)
    )


def select_device(props: list[dict[str, Any]], sel: DeviceSelector, ctis: list[str], where: str) -> int:
    """Index of the camera `sel` names among the enumerated `props`; SourceError listing them otherwise."""
    found = f"found {len(props)} device(s) via {', '.join(ctis)}: {describe_devices(props)}"
    if not props:
        raise SourceError(f"{where}: no camera found; {found}; check cabling, power and network")
    if sel.index is not None:
        if sel.index >= len(props):
            raise SourceError(f"{where}: device.index={sel.index} is out of range; {found}")
        return sel.index
    if sel.serial is not None:
        key, value, what = "serial_number", sel.serial, "device.serial"
    elif sel.user_id is not None:
        key, value, what = "user_defined_name", sel.user_id, "device.user_id"
    else:
        if len(props) > 1:
            raise SourceError(f"{where}: several cameras and no device selector; {found}; set device.serial")
        return 0
    matches = [i for i, p in enumerate(props) if p.get(key) == value]
    if not matches:
        raise SourceError(f"{where}: no camera with {what}={value!r}; {found}; fix {what}")
    if len(matches) > 1:
        raise SourceError(f"{where}: {len(matches)} cameras match {what}={value!r}; {found}")
    return matches[0]
