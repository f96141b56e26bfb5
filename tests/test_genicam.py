"""GenICam source against real GenTL producers.

viky.cti (the simulated producer shipped in the `genicam` wheel) runs every test it can: it has 3
devices (serials '0', '1', '2'), Width/Height/PixelFormat (RGBa8, Mono8)/AcquisitionFrameRate/
BouncingBallSize, chunk data (ChunkNrBounces) and frame ids, but no trigger, ExposureTime or Gain
features and no timestamps. Software trigger needs TLSimu.cti (EMVA GenTL reference simulator,
shipped in the genicam 1.3.0 wheel): those tests run when it is found and say how to get it when not.

A camera cannot be unplugged from a simulated producer, so losses are simulated underneath the
source: the device stops streaming (AcquisitionStop behind the source's back) or the harvesters
ImageAcquirer is destroyed while the source is using it.
"""

from __future__ import annotations

import gc
import importlib.util
import os
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from linesight.daemon.sources.base import SourceError

SPEC = importlib.util.find_spec("genicam")
VIKY = Path(SPEC.origin).parent / "viky.cti" if SPEC and SPEC.origin else None
if VIKY is None or not VIKY.is_file():
    pytest.skip(f"viky.cti not found (genicam package: {SPEC and SPEC.origin}); "
                "pip install 'linesight[camera]'", allow_module_level=True)

from harvesters.core import ImageAcquirer  # noqa: E402
from harvesters.util.pfnc import Dictionary  # noqa: E402

from linesight.config.sources import GenICamSourceConfig  # noqa: E402
from linesight.daemon.sources.genicam import (  # noqa: E402
    GenICamSource,
    component_to_image,
    frame_id_gap,
    list_devices,
)

TLSIMU = Path(os.environ.get("LINESIGHT_TLSIMU_CTI",
                             Path(__file__).resolve().parents[1] / ".venv/gentl/TLSimu.cti"))  # .ci/setup.sh
needs_tlsimu = pytest.mark.skipif(
    not TLSIMU.is_file(),
    reason=f"TLSimu.cti not found at {TLSIMU} (viky has no TriggerSoftware). Get it with: pip download "
    "genicam==1.3.0 --no-deps; unzip TLSimu.cti and libVirtualFG.so from genicam-1.3.0.data/purelib/genicam/ "
    "into one directory; set LINESIGHT_TLSIMU_CTI to the .cti",
)


def viky(**kw) -> GenICamSource:
    base = {"name": "cam", "cti": VIKY, "device": {"serial": "1"}, "reconnect_backoff_min_s": 0.05,
            "reconnect_backoff_max_s": 0.2}
    base.update(kw)
    return GenICamSource(GenICamSourceConfig(**base))


def read_n(src: GenICamSource, n: int, timeout: float = 3.0) -> list:
    frames = []
    for _ in range(n):
        f = src.read(timeout)
        assert f is not None, f"no frame within {timeout} s; status={src.status}"
        frames.append(f)
    return frames


def wait_for(pred, timeout: float = 5.0, step: float = 0.02) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return True
        time.sleep(step)
    return pred()


# ------------------------------------------------------------------------------------- discovery/config
def test_list_devices_on_viky() -> None:
    devices = list_devices(VIKY)
    assert [d["serial_number"] for d in devices] == ["0", "1", "2"]
    assert {d["model"] for d in devices} == {"Viky"}


def test_open_by_serial_and_index() -> None:
    with viky(device={"serial": "2"}) as src:
        assert src.device_info["serial_number"] == "2" and src.device_info["id_"] == "VikyTL_DEV_blue"
        assert src.status.up
    with viky(device={"index": 0}) as src:
        assert src.device_info["serial_number"] == "0"


def test_wrong_serial_lists_devices_found() -> None:
    with pytest.raises(SourceError) as err:
        viky(device={"serial": "12345"}).open()
    msg = str(err.value)
    assert "device.serial='12345'" in msg and "found 3 device(s)" in msg
    for serial, dev_id in (("0", "red"), ("1", "green"), ("2", "blue")):
        assert f"serial={serial!r}" in msg and f"VikyTL_DEV_{dev_id}" in msg
    with pytest.raises(SourceError, match="several cameras and no device selector"):
        viky(device={}).open()
    with pytest.raises(SourceError, match="no camera with device.user_id='line3'"):
        viky(device={"user_id": "line3"}).open()


def test_missing_cti_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(SourceError, match="does not exist; set cti"):
        viky(cti=tmp_path / "vendor.cti").open()
    bogus = tmp_path / "bogus.cti"
    bogus.write_bytes(b"not a shared library")
    with pytest.raises(SourceError, match="cannot load GenTL producer"):
        viky(cti=bogus).open()


def test_features_applied_in_order_and_read_back() -> None:
    cfg = {"features": {"BouncingBallSize": 7, "AcquisitionFrameRate": 50.0},
           "pixel_format": "Mono8", "width": 320, "height": 240}
    with viky(**cfg) as src:
        assert list(src.applied_features) == ["BouncingBallSize", "AcquisitionFrameRate", "PixelFormat",
                                              "Width", "Height"]
        assert src.applied_features == {"BouncingBallSize": 7, "AcquisitionFrameRate": 50.0,
                                         "PixelFormat": "Mono8", "Width": 320, "Height": 240}
        with src._ia_lock:  # read back independently from the device's node map
            nm = src._ia.remote_device.node_map
            assert (nm.Width.value, nm.Height.value, nm.PixelFormat.value) == (320, 240, "Mono8")
            assert nm.BouncingBallSize.value == 7
        f = src.read(3.0)
        assert f.error is None and f.image.shape == (240, 320) and f.image.dtype == np.uint8


@pytest.mark.parametrize(
    ("kw", "expected"),
    [
        ({"features": {"ExposureTimeX": 100}},
         "features.ExposureTimeX: feature ExposureTimeX=100: the camera has no feature 'ExposureTimeX'"),
        ({"features": {"AcquisitionFrameRat": 10.0}}, "did you mean AcquisitionFrameRate"),
        ({"exposure_time_us": 1000.0}, "exposure_time_us: feature ExposureTime=1000.0: the camera has no feature"),
        ({"width": 5000}, "width: feature Width=5000: out of range [100, 800]"),
        ({"pixel_format": "Mono16"}, "pixel_format: feature PixelFormat='Mono16': not one of RGBa8, Mono8"),
        ({"features": {"AcquisitionFrameRate": "fast"}}, "AcquisitionFrameRate='fast': expected a number"),
        ({"features": {"PayloadSize": 10}}, "feature PayloadSize=10: not writable now (access mode read-only)"),
        ({"pixel_format": "YUV422"}, "pixel_format='YUV422' is not supported by linesight"),
    ],
)
def test_bad_feature_is_named_with_its_value(kw: dict, expected: str) -> None:
    with pytest.raises(SourceError) as err:
        viky(**kw).open()
    assert expected in str(err.value)
    assert "genicam source 'cam'" in str(err.value)


def test_trigger_modes_viky_cannot_do() -> None:
    with pytest.raises(SourceError, match="trigger.mode=software needs the camera feature.*TriggerSoftware"):
        viky(trigger={"mode": "software"}).open()
    with pytest.raises(SourceError, match="trigger.mode=hardware needs the camera feature.*TriggerMode"):
        viky(trigger={"mode": "hardware", "source": "Line0"}).open()
    with viky() as src:
        with pytest.raises(SourceError, match="trigger\\(\\) needs trigger.mode: software"):
            src.trigger()


# ---------------------------------------------------------------------------------------- frames
def test_free_run_frames_shape_ids_chunks() -> None:
    with viky(features={"AcquisitionFrameRate": 100.0}) as src:
        frames = read_n(src, 6)
    for f in frames:
        assert f.error is None and f.source == "cam"
        assert f.image.shape == (400, 400, 3) and f.image.dtype == np.uint8  # RGBa8 -> BGR
        assert f.chunk.get("ChunkNrBounces") is not None  # chunk data read while the buffer was held
        assert f.camera_ts_ns is None  # viky has no timestamps
    ids = [f.frame_id for f in frames]
    assert all(b > a for a, b in zip(ids, ids[1:]))
    assert [f.seq for f in frames] == list(range(6))
    assert all(b.host_ts_ns >= a.host_ts_ns for a, b in zip(frames, frames[1:]))


def test_copied_buffer_not_mutated_by_later_frames() -> None:
    with viky(features={"AcquisitionFrameRate": 100.0}, num_buffers=3, pixel_format="Mono8") as src:
        first = src.read(3.0)
        snapshot = first.image.copy()
        assert first.image.base is None and first.image.flags.owndata  # an owned copy, not a view
        later = read_n(src, 12)  # every driver buffer has been re-filled several times
        np.testing.assert_array_equal(first.image, snapshot)  # checked while still streaming
    # the ball moves: later frames differ, so a view into a re-queued buffer would have changed
    assert sum(not np.array_equal(f.image, snapshot) for f in later) >= 10


def test_consumer_behind_camera_drops_are_counted_not_errors() -> None:
    with viky(features={"AcquisitionFrameRate": 100.0}, num_buffers=3) as src:
        read_n(src, 1)
        time.sleep(0.6)  # the camera keeps streaming; host queue and driver buffers fill up
        frames = read_n(src, 8)
        assert all(f.error is None for f in frames)  # free run: a dropped frame was no part
        assert src.status.dropped > 10


def test_frame_id_gap() -> None:
    assert frame_id_gap(None, 5) == 0
    assert frame_id_gap(4, 5) == 0
    assert frame_id_gap(4, 9) == 4
    assert frame_id_gap(65535, 1) == 0  # wrap / restart: unknown, not a huge gap


def test_incomplete_buffer_becomes_a_bad_frame() -> None:
    # Simulated: viky never delivers incomplete buffers. harvesters re-queues such a buffer itself
    # and only emits Events.INCOMPLETE_BUFFER, so emit exactly that event on the live acquirer.
    with viky(features={"AcquisitionFrameRate": 50.0}) as src:
        frames = read_n(src, 1)
        with src._ia_lock:
            src._ia._emit_callbacks(ImageAcquirer.Events.INCOMPLETE_BUFFER)
        while not any(f.error for f in frames) and len(frames) < 20:  # good frames may be queued first
            frames += read_n(src, 1)
        frames += read_n(src, 3)
        bad = [f for f in frames if f.error]
        assert len(bad) == 1 and "incomplete buffer" in bad[0].error and bad[0].image is None
        i = next(i for i, f in enumerate(frames) if f.error)
        assert bad[0].frame_id == frames[i - 1].frame_id + 1  # the discarded buffer used the next frame id
        seqs = [f.seq for f in frames]
        assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs)  # the bad frame has its own seq


# ------------------------------------------------------------------------------------ pixel formats
def _expanded(fmt: str, raw: np.ndarray) -> np.ndarray:
    return Dictionary.get_proxy(symbolic=fmt).expand(raw)  # harvesters' own unpacking


def test_component_to_image_formats() -> None:
    rgb = np.arange(2 * 3 * 3, dtype=np.uint8)
    img = component_to_image(_expanded("RGB8", rgb), "RGB8", 3, 2)
    assert img.shape == (2, 3, 3)
    np.testing.assert_array_equal(img[0, 0], [2, 1, 0])  # BGR
    img = component_to_image(_expanded("BGR8", rgb), "BGR8", 3, 2)
    np.testing.assert_array_equal(img[0, 0], [0, 1, 2])
    rgba = np.arange(2 * 3 * 4, dtype=np.uint8)
    np.testing.assert_array_equal(component_to_image(_expanded("RGBa8", rgba), "RGBa8", 3, 2)[0, 1], [6, 5, 4])
    np.testing.assert_array_equal(component_to_image(_expanded("BGRa8", rgba), "BGRa8", 3, 2)[0, 1], [4, 5, 6])
    mono16 = np.array([0x01, 0x02, 0xFF, 0xFF, 0x00, 0x10, 0x34, 0x12], np.uint8)  # little endian
    img = component_to_image(_expanded("Mono16", mono16), "Mono16", 2, 2)
    assert img.dtype == np.uint16
    np.testing.assert_array_equal(img, [[0x0201, 0xFFFF], [0x1000, 0x1234]])
    padded = np.array([1, 2, 3, 99, 4, 5, 6, 99], np.uint8)  # 3 pixels + 1 padding byte per row
    np.testing.assert_array_equal(component_to_image(padded, "Mono8", 3, 2), [[1, 2, 3], [4, 5, 6]])
    with pytest.raises(ValueError, match="incomplete image: 5 of 6"):
        component_to_image(np.zeros(5, np.uint8), "Mono8", 3, 2)
    with pytest.raises(ValueError, match="unsupported pixel format BayerRG8"):
        component_to_image(np.zeros(6, np.uint8), "BayerRG8", 3, 2)


# --------------------------------------------------------------------------------- loss and recovery
def test_starvation_watchdog_reconnects_and_frames_resume() -> None:
    threads_before = threading.active_count()
    with viky(features={"AcquisitionFrameRate": 50.0}, starvation_timeout_s=0.3) as src:
        before = read_n(src, 2)
        # Simulated loss: the device stops streaming behind the source's back (cable pulled).
        with src._ia_lock:
            src._ia.remote_device.node_map.AcquisitionStop.execute()
        assert wait_for(lambda: src.status.reconnects >= 1, 5.0), src.status
        st = src.status
        assert "no frame for 0.3 s" in st.last_error
        after = read_n(src, 3)
        assert all(f.error is None for f in after)
        assert after[0].seq > before[-1].seq  # seq keeps counting across reconnects
        assert threading.active_count() == threads_before + 1  # only the one acquisition thread
    assert threading.active_count() == threads_before


def _live_acquirers() -> int:
    gc.collect()
    return sum(isinstance(o, ImageAcquirer) for o in gc.get_objects())


def test_destroyed_acquirer_reconnects_without_leaking_threads() -> None:
    threads_before = threading.active_count()
    acquirers_before = _live_acquirers()
    with viky(features={"AcquisitionFrameRate": 50.0}) as src:
        read_n(src, 1)
        for n in range(1, 4):
            # Simulated loss: destroy the harvesters ImageAcquirer underneath the running source.
            with src._ia_lock:
                src._ia.destroy()
            assert wait_for(lambda n=n: src.status.reconnects >= n, 5.0), src.status
            assert "destroyed underneath" in src.status.last_error
            assert read_n(src, 2)[0].error is None  # frames resume
            assert src.status.up
            assert threading.active_count() == threads_before + 1
        assert _live_acquirers() == acquirers_before + 1  # torn-down acquirers are freed
    assert threading.active_count() == threads_before
    assert _live_acquirers() == acquirers_before


def test_close_is_idempotent_and_read_after_close_fails() -> None:
    src = viky()
    src.open()
    src.close()
    src.close()
    with pytest.raises(SourceError, match="not open"):
        src.read(0.1)


# ------------------------------------------------------------------------------ software trigger
def tlsimu(**kw) -> GenICamSource:
    base = {"name": "trig", "cti": TLSIMU, "device": {"serial": "SN_InterfaceA_1"},
            "trigger": {"mode": "software"}, "fetch_timeout_s": 1.0,
            "reconnect_backoff_min_s": 0.05, "reconnect_backoff_max_s": 0.2}
    base.update(kw)
    return GenICamSource(GenICamSourceConfig(**base))


@needs_tlsimu
def test_software_trigger_one_frame_per_trigger() -> None:
    with tlsimu() as src:
        assert src.applied_features["TriggerMode"] == "On"
        assert src.applied_features["TriggerSource"] == "Software"
        assert src.read(0.3) is None  # nothing triggered, nothing delivered
        frames = []
        for _ in range(5):
            t0 = time.time_ns()
            src.trigger()
            f = src.read(2.0)
            assert f is not None and f.error is None, f
            assert f.host_ts_ns >= t0  # host time is the trigger time
            frames.append(f)
        assert src.read(0.3) is None
    assert [f.seq for f in frames] == list(range(5))
    ids = [f.frame_id for f in frames]
    assert all(b > a for a, b in zip(ids, ids[1:]))
    assert all(f.image.shape == (572, 768, 3) and f.image.dtype == np.uint8 for f in frames)  # RGB8 -> BGR
    ts = [f.camera_ts_ns for f in frames]
    # TLSimu's timestamp counts nanoseconds within the second and wraps (measured: a -0.99 s step when the
    # five frames straddle a second, ~4 % of runs): step forward modulo 1 s, by well under half a second
    assert all(t is not None for t in ts) and all(0 < (b - a) % 10**9 < 5 * 10**8 for a, b in zip(ts, ts[1:]))


@needs_tlsimu
def test_every_trigger_gets_exactly_one_frame_even_when_lost() -> None:
    # Back-to-back triggers: the simulator ignores a trigger while busy (like many cameras), so some
    # triggered frames never arrive. Each trigger must still produce exactly one Frame (bad if lost).
    with tlsimu() as src:
        for _ in range(4):
            src.trigger()
        frames = []
        deadline = time.monotonic() + 8
        while len(frames) < 4 and time.monotonic() < deadline:
            f = src.read(0.5)
            if f is not None:
                frames.append(f)
        assert sorted(f.seq for f in frames) == [0, 1, 2, 3]
        for f in frames:
            assert (f.image is None) == (f.error is not None)
        assert src.read(0.5) is None


@needs_tlsimu
def test_consumer_behind_under_software_trigger_every_trigger_answered() -> None:
    # Nobody reads while 14 spaced triggers fire: host queue (num_buffers=5) and the producer's 5
    # buffers fill, the simulator drops the rest without a frame-id gap; their triggers time out.
    with tlsimu(device={"serial": "SN_InterfaceA_0"}, num_buffers=5) as src:
        for _ in range(14):
            src.trigger()
            time.sleep(0.05)
        frames = []
        while (f := src.read(1.5)) is not None:
            frames.append(f)
        assert [f.seq for f in frames] == list(range(14))
        good = [f for f in frames if f.error is None]
        assert len(good) >= 10 and all(f.image.shape == (512, 512) for f in good)  # Mono8 device
        assert all("no frame within fetch_timeout_s" in f.error for f in frames if f.error)


@needs_tlsimu
def test_trigger_while_camera_down_gives_a_bad_frame() -> None:
    with tlsimu(reconnect_backoff_min_s=2.0, reconnect_backoff_max_s=2.0) as src:
        src.trigger()
        assert src.read(2.0).error is None
        with src._ia_lock:  # simulated loss, see module docstring
            src._ia.destroy()
        assert wait_for(lambda: not src.status.up, 3.0)
        src.trigger()
        f = src.read(1.0)
        assert f is not None and f.seq == 1 and f.image is None
        assert "camera down" in f.error and "software trigger not executed" in f.error


@needs_tlsimu
def test_close_wakes_a_blocked_reader() -> None:
    src = tlsimu()
    src.open()
    outcome: list[object] = []

    def reader() -> None:
        try:
            outcome.append(src.read(None))  # nothing triggered: blocks until close
        except SourceError as exc:
            outcome.append(exc)

    th = threading.Thread(target=reader)
    th.start()
    time.sleep(0.2)
    src.close()
    th.join(3)
    assert not th.is_alive()
    assert isinstance(outcome[0], SourceError) and "closed" in str(outcome[0])
