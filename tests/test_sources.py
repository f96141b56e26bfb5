"""Folder, video, synthetic sources and the factory, against real files, a real HTTP stream and OpenCV."""

from __future__ import annotations

import functools
import http.server
import itertools
import sys
import threading
import time
from pathlib import Path

import cv2
import numpy as np
import pytest

from linesight.config.sources import (
    FolderSourceConfig,
    GenICamSourceConfig,
    SyntheticSourceConfig,
    VideoSourceConfig,
)
from linesight.daemon.sources.base import EndOfStream, Frame, Pacer, SourceError
from linesight.daemon.sources.factory import build_source, parse_source_config
from linesight.daemon.sources.folder import FolderSource
from linesight.daemon.sources.synthetic import SyntheticSource, make_texture, render
from linesight.daemon.sources.video import VideoSource
from linesight.errors import ConfigError

DATASET = Path(__file__).resolve().parents[2] / "shared/datasets/magnetic_tile"


def _png(path: Path, image: np.ndarray) -> None:
    assert cv2.imwrite(str(path), image), path


def _color(i: int) -> np.ndarray:
    img = np.zeros((24, 32, 3), np.uint8)
    img[:, :, 0] = 10 * i  # B
    img[:, :, 1] = 100
    img[:, :, 2] = 200 - 10 * i  # R
    img[5:10, 5:10] = (255, 0, 0)
    return img


@pytest.fixture
def image_dir(tmp_path: Path) -> dict:
    """3 colour PNGs, one 16-bit PNG, one garbage PNG, one truncated JPEG, one ignored text file."""
    d = tmp_path / "imgs"
    d.mkdir()
    colors = {f"a{i}.png": _color(i) for i in range(3)}
    for name, img in colors.items():
        _png(d / name, img)
    deep = (np.arange(24 * 32, dtype=np.uint16).reshape(24, 32) * 80 + 7).astype(np.uint16)
    _png(d / "b_deep.png", deep)
    (d / "c_corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"garbage" * 20)
    ok, jpg = cv2.imencode(".jpg", _color(1))
    assert ok
    (d / "d_trunc.jpg").write_bytes(jpg.tobytes()[: len(jpg) // 2])
    (d / "notes.txt").write_text("not an image")
    return {"dir": d, "colors": colors, "deep": deep}


def _read_all(src, limit: int = 100) -> list[Frame]:
    frames = []
    with pytest.raises(EndOfStream):
        for _ in range(limit):
            f = src.read(1.0)
            assert f is not None
            frames.append(f)
    return frames


# --------------------------------------------------------------------------------------------- folder
def test_folder_once_every_file_one_frame_bad_files_named(image_dir: dict) -> None:
    src = FolderSource(FolderSourceConfig(name="f", path=image_dir["dir"]))
    with src:
        frames = _read_all(src)
    names = [f.name for f in frames]
    assert names == ["a0.png", "a1.png", "a2.png", "b_deep.png", "c_corrupt.png", "d_trunc.jpg"]
    assert [f.seq for f in frames] == list(range(6))
    by_name = {f.name: f for f in frames}
    for name, img in image_dir["colors"].items():
        f = by_name[name]
        assert f.error is None and f.source == "f"
        assert f.image.dtype == np.uint8 and f.image.shape == (24, 32, 3)
        np.testing.assert_array_equal(f.image, img)  # BGR order kept
    deep = by_name["b_deep.png"]
    assert deep.error is None and deep.image.dtype == np.uint16
    np.testing.assert_array_equal(deep.image, image_dir["deep"])  # 16 bits survive
    for bad in ("c_corrupt.png", "d_trunc.jpg"):
        assert by_name[bad].image is None
        assert bad in by_name[bad].error
    assert "truncated JPEG" in by_name["d_trunc.jpg"].error
    assert sum(f.error is not None for f in frames) == 2 and not src.status.up


def test_folder_grayscale_and_patterns(image_dir: dict) -> None:
    cfg = FolderSourceConfig(path=image_dir["dir"], patterns=["A*.PNG"], grayscale=True)
    with FolderSource(cfg) as src:
        frames = _read_all(src)
    assert [f.name for f in frames] == ["a0.png", "a1.png", "a2.png"]  # case-insensitive globs
    expected = cv2.cvtColor(image_dir["colors"]["a1.png"], cv2.COLOR_BGR2GRAY)
    np.testing.assert_array_equal(frames[1].image, expected)


def test_folder_loop_repeats_and_picks_up_new_files(image_dir: dict) -> None:
    cfg = FolderSourceConfig(path=image_dir["dir"], patterns=["a*.png"], mode="loop")
    with FolderSource(cfg) as src:
        names = [src.read(1.0).name for _ in range(3)]
        _png(image_dir["dir"] / "a9.png", _color(9))  # appears mid-cycle: joins the next cycle
        names += [src.read(1.0).name for _ in range(5)]
    assert names == ["a0.png", "a1.png", "a2.png", "a0.png", "a1.png", "a2.png", "a9.png", "a0.png"]


def test_folder_watch_reads_new_files_only_when_complete(image_dir: dict) -> None:
    d = image_dir["dir"]
    cfg = FolderSourceConfig(path=d, mode="watch", watch_settle_s=0.5, watch_poll_s=0.05)
    with FolderSource(cfg) as src:
        assert src.read(0.4) is None  # existing files are not re-inspected
        ok, data = cv2.imencode(".png", _color(5))
        blob = data.tobytes()

        def slow_writer() -> None:  # a camera writing a file in pieces, 0.1 s apart (< settle 0.5 s)
            with open(d / "new.png", "wb") as fh:
                for i in range(0, len(blob), len(blob) // 5 + 1):
                    fh.write(blob[i : i + len(blob) // 5 + 1])
                    fh.flush()
                    time.sleep(0.1)

        writer = threading.Thread(target=slow_writer)
        writer.start()
        frame = src.read(5.0)
        writer.join()
        assert frame is not None and frame.name == "new.png"
        assert frame.error is None, frame.error  # never decoded half-written
        np.testing.assert_array_equal(frame.image, _color(5))
        assert src.read(0.5) is None  # delivered once
        (d / "zz_bad.png").write_bytes(b"not a png at all")
        bad = src.read(3.0)
        assert bad is not None and bad.image is None and "zz_bad.png" in bad.error


def test_folder_watch_existing(image_dir: dict) -> None:
    cfg = FolderSourceConfig(path=image_dir["dir"], patterns=["a*.png"], mode="watch",
                             watch_existing=True, watch_settle_s=0.0, watch_poll_s=0.05)
    with FolderSource(cfg) as src:
        assert sorted(src.read(1.0).name for _ in range(3)) == ["a0.png", "a1.png", "a2.png"]
        assert src.read(0.2) is None


def test_folder_rate_pacing_and_timeout(image_dir: dict) -> None:
    cfg = FolderSourceConfig(path=image_dir["dir"], patterns=["a*.png"], rate_hz=10.0)
    with FolderSource(cfg) as src:
        t0 = time.monotonic()
        first = src.read(1.0)
        assert src.read(0.01) is None  # next frame not due yet: nothing within the timeout
        second = src.read(1.0)
        third = src.read(1.0)
        elapsed = time.monotonic() - t0
    assert [first.name, second.name, third.name] == ["a0.png", "a1.png", "a2.png"]  # none skipped
    assert 0.18 <= elapsed < 1.0


def test_folder_config_errors(tmp_path: Path) -> None:
    with pytest.raises(SourceError, match="does not exist"):
        FolderSource(FolderSourceConfig(path=tmp_path / "missing")).open()
    with pytest.raises(SourceError, match=r"no files matching \*\.png"):
        FolderSource(FolderSourceConfig(path=tmp_path, patterns=["*.png"])).open()
    src = FolderSource(FolderSourceConfig(path=tmp_path))
    with pytest.raises(SourceError, match="not open"):
        src.read(0.1)
    with pytest.raises(SourceError, match="free-running"):
        src.trigger()


@pytest.mark.skipif(not DATASET.is_dir(), reason=f"magnetic_tile dataset not found at {DATASET}")
def test_folder_real_dataset_jpegs() -> None:
    folder = next(p.parent for p in sorted(DATASET.rglob("*.jpg")))
    cfg = FolderSourceConfig(path=folder, patterns=["*.jpg"], grayscale=True)
    with FolderSource(cfg) as src:
        for _ in range(3):
            f = src.read(1.0)
            assert f.error is None and f.image.ndim == 2 and f.image.dtype == np.uint8


# ---------------------------------------------------------------------------------------------- video
@pytest.fixture(scope="module")
def clip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("video") / "clip.avi"
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 10.0, (64, 48))
    assert writer.isOpened()
    for i in range(10):
        writer.write(np.full((48, 64, 3), 10 + 20 * i, np.uint8))
    writer.release()
    return path


def _levels(frames: list[Frame]) -> list[int]:
    return [round((float(f.image.mean()) - 10) / 20) for f in frames]


def test_video_file_reads_all_frames_then_ends(clip: Path) -> None:
    with VideoSource(VideoSourceConfig(name="v", uri=str(clip))) as src:
        frames = _read_all(src)
    assert len(frames) == 10
    assert [f.frame_id for f in frames] == list(range(10))
    assert _levels(frames) == list(range(10))
    assert frames[0].image.shape == (48, 64, 3) and frames[0].image.dtype == np.uint8


def test_video_file_loop(clip: Path) -> None:
    with VideoSource(VideoSourceConfig(uri=str(clip), loop=True)) as src:
        frames = [src.read(1.0) for _ in range(25)]
    assert [f.frame_id for f in frames] == list(range(10)) * 2 + list(range(5))
    assert _levels(frames) == list(range(10)) * 2 + list(range(5))
    assert [f.seq for f in frames] == list(range(25))


def test_video_file_errors(tmp_path: Path) -> None:
    with pytest.raises(SourceError, match="does not exist"):
        VideoSource(VideoSourceConfig(uri=str(tmp_path / "nope.avi"))).open()
    fake = tmp_path / "fake.avi"
    fake.write_text("this is not a video")
    with pytest.raises(SourceError, match="cannot open"):
        VideoSource(VideoSourceConfig(uri=str(fake))).open()


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args: object) -> None:
        pass


class _Server:
    """A real HTTP server streaming the clip; can be stopped and restarted on the same port."""

    def __init__(self, directory: Path, port: int = 0) -> None:
        handler = functools.partial(_QuietHandler, directory=str(directory))
        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", port), handler)
        self.port = self.httpd.server_address[1]
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(5)


def test_video_stream_loss_reconnects_with_backoff(clip: Path) -> None:
    server = _Server(clip.parent)
    cfg = VideoSourceConfig(uri=f"http://127.0.0.1:{server.port}/{clip.name}", open_timeout_s=2,
                            read_timeout_s=2, reconnect_backoff_min_s=0.05, reconnect_backoff_max_s=0.2)
    src = VideoSource(cfg)
    try:
        src.open()
        assert src.status.up
        frames = [src.read(1.0) for _ in range(10)]
        assert _levels(frames) == list(range(10))
        assert src.read(1.0) is None  # stream ended: a loss for a stream, not EndOfStream
        assert not src.status.up and "failed" in src.status.last_error
        again = None
        for _ in range(20):
            again = src.read(1.0)
            if again is not None:
                break
        assert again is not None and again.frame_id == 0 and src.status.up
        assert src.status.reconnects == 1
        for _ in range(9):
            assert src.read(1.0) is not None
        server.stop()  # peer gone: reconnects fail, status stays down
        deadline = time.monotonic() + 3
        while time.monotonic() < deadline and "cannot open" not in (src.status.last_error or ""):
            assert src.read(0.2) is None
        assert not src.status.up and "cannot open stream" in src.status.last_error
        server = _Server(clip.parent, server.port)  # peer back: frames resume
        resumed = None
        deadline = time.monotonic() + 5
        while resumed is None and time.monotonic() < deadline:
            resumed = src.read(0.5)
        assert resumed is not None and src.status.up and src.status.reconnects == 2
    finally:
        src.close()
        server.stop()


# ------------------------------------------------------------------------------------------ synthetic
def test_synthetic_is_deterministic_with_defects_every_n() -> None:
    cfg = SyntheticSourceConfig(width=96, height=64, rate_hz=None, defect_every=3, seed=7, count=7)
    with SyntheticSource(cfg) as a, SyntheticSource(cfg) as b:
        fa, fb = _read_all(a), _read_all(b)
    assert len(fa) == 7
    for x, y in zip(fa, fb):
        np.testing.assert_array_equal(x.image, y.image)
        assert x.chunk == y.chunk
    assert [f.chunk["defect"] for f in fa] == [False, False, True, False, False, True, False]
    assert fa[2].chunk["defect_kind"] != fa[5].chunk["defect_kind"]  # scratch and blob alternate
    texture = make_texture(96, 64, 7)
    for f in (fa[2], fa[5]):
        x, y, w, h = f.chunk["defect_bbox"]
        assert 0 <= x and 0 <= y and x + w <= 96 and y + h <= 64 and w > 0 and h > 0
        clean, _ = render(texture, 7, f.frame_id, 0)  # same frame without the defect
        diff = np.abs(f.image.astype(int) - clean.astype(int))
        assert diff[y : y + h, x : x + w].max() > 60  # the defect is really drawn in its bbox
        outside = diff.copy()
        outside[y : y + h, x : x + w] = 0
        assert outside.max() == 0  # and nowhere else
    other = SyntheticSource(cfg.model_copy(update={"seed": 8}))
    with other:
        assert not np.array_equal(other.read(1.0).image, fa[0].image)


def test_synthetic_frame_k_depends_only_on_seed_and_k() -> None:
    """The source's cached planes give exactly render()'s pixels, whatever frames were read before."""
    cfg = SyntheticSourceConfig(width=80, height=48, rate_hz=None, defect_every=4, seed=3, count=12)
    with SyntheticSource(cfg) as src:
        frames = _read_all(src)
    texture = make_texture(80, 48, 3)
    for k in (11, 3, 0, 7):  # out of order, defect frames (3, 7, 11) among them
        img, chunk = render(texture, 3, k, 4)
        np.testing.assert_array_equal(frames[k].image, img)
        assert frames[k].chunk == chunk
    clean = [f.image for f in frames if not f.chunk["defect"]]
    assert all(not np.array_equal(a, b) for a, b in itertools.pairwise(clean))  # sensor noise changes every frame
    noise = clean[0].astype(int) - clean[1].astype(int)
    assert 1.5 < noise.std() < 4.5  # two frames' noise (sigma 2 each) differ by ~2.8 gray levels


def test_synthetic_frames_are_owned_and_never_change() -> None:
    """A consumer may keep a frame: later frames (defects pasted) must not write into it or share its memory."""
    cfg = SyntheticSourceConfig(width=64, height=64, channels=3, rate_hz=None, defect_every=2, seed=1)
    with SyntheticSource(cfg) as src:
        kept = [src.read(1.0) for _ in range(6)]
        snapshot = [f.image.copy() for f in kept]
        later = [src.read(1.0) for _ in range(6)]
    for f, before in zip(kept, snapshot):
        np.testing.assert_array_equal(f.image, before)
        assert f.image.flags.owndata and f.image.flags.writeable
    images = [f.image for f in kept + later]
    assert not any(np.shares_memory(a, b) for i, a in enumerate(images) for b in images[i + 1:])
    gray, _ = render(make_texture(64, 64, 1), 1, 1, 2)  # frame 1 carries a defect
    assert kept[1].chunk["defect"]
    np.testing.assert_array_equal(kept[1].image, cv2.cvtColor(gray, cv2.COLOR_GRAY2BGR))


def test_synthetic_colour_and_pacing() -> None:
    cfg = SyntheticSourceConfig(width=32, height=32, channels=3, rate_hz=20.0, defect_every=0)
    with SyntheticSource(cfg) as src:
        t0 = time.monotonic()
        frames = [src.read(1.0) for _ in range(5)]
        elapsed = time.monotonic() - t0
    assert frames[0].image.shape == (32, 32, 3)
    assert all(not f.chunk["defect"] for f in frames)
    assert 0.18 <= elapsed < 1.0  # 4 periods of 50 ms


def test_pacer_does_not_burst_after_stall() -> None:
    pacer = Pacer(50.0)
    pacer.emitted()
    time.sleep(0.1)  # consumer stalled for 5 periods
    assert pacer.wait(0.0)  # one frame due now
    pacer.emitted()
    assert not pacer.wait(0.001)  # but the next one is a full period later, no catch-up burst


# -------------------------------------------------------------------------------------------- factory
def test_factory_builds_each_type(tmp_path: Path, clip: Path) -> None:
    assert isinstance(build_source({"type": "synthetic"}), SyntheticSource)
    assert isinstance(build_source({"type": "folder", "path": str(tmp_path)}), FolderSource)
    assert isinstance(build_source({"type": "video", "uri": str(clip)}), VideoSource)
    assert isinstance(build_source(SyntheticSourceConfig(name="s")), SyntheticSource)


def test_factory_config_errors_name_the_field() -> None:
    with pytest.raises(ConfigError, match="does not match any of the expected tags"):
        build_source({"type": "webcam"})
    with pytest.raises(ConfigError, match=r"source\.folder\.rate_hz"):
        build_source({"type": "folder", "path": "/tmp", "rate_hz": -1})
    with pytest.raises(ConfigError, match=r"source\.synthetic\.colour"):
        parse_source_config({"type": "synthetic", "colour": 3})
    with pytest.raises(ConfigError, match="only applies to trigger.mode: hardware"):
        build_source({"type": "genicam", "trigger": {"mode": "software", "source": "Line1"}})
    with pytest.raises(ConfigError, match="fetch_timeout_s only applies"):
        build_source({"type": "genicam", "fetch_timeout_s": 1.0})
    with pytest.raises(ConfigError, match="starvation_timeout_s does not apply"):
        build_source({"type": "genicam", "trigger": {"mode": "software"}, "starvation_timeout_s": 3})
    with pytest.raises(ConfigError, match="features.TriggerMode"):
        build_source({"type": "genicam", "features": {"TriggerMode": "On"}})
    with pytest.raises(ConfigError, match="set only one of serial, user_id, index"):
        build_source({"type": "genicam", "device": {"serial": "1", "index": 0}})
    with pytest.raises(ConfigError, match="reconnect_backoff_min_s"):
        build_source({"type": "video", "uri": "rtsp://x", "reconnect_backoff_min_s": 9, "reconnect_backoff_max_s": 1})
    with pytest.raises(ConfigError, match="not a boolean"):
        build_source({"type": "video", "uri": True})


def test_configs_survive_a_dump_and_reload(tmp_path: Path) -> None:
    configs = [
        GenICamSourceConfig(),
        GenICamSourceConfig(trigger={"mode": "software"}, fetch_timeout_s=0.5),
        GenICamSourceConfig(trigger={"mode": "hardware", "source": "Line2", "activation": None}),
        FolderSourceConfig(path=tmp_path, mode="watch"),
        VideoSourceConfig(uri=0),
        SyntheticSourceConfig(count=3),
    ]
    for cfg in configs:
        assert parse_source_config(cfg.model_dump(mode="json")) == cfg


def test_genicam_defaults() -> None:
    cfg = GenICamSourceConfig()
    assert cfg.effective_starvation_timeout_s == 5.0
    hw = GenICamSourceConfig(trigger={"mode": "hardware", "source": "Line1"})
    assert hw.effective_starvation_timeout_s is None  # a stopped line is not a lost camera
    hw60 = GenICamSourceConfig(trigger={"mode": "hardware"}, starvation_timeout_s=60)
    assert hw60.effective_starvation_timeout_s == 60


def test_factory_genicam_without_camera_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    # Simulated absence: harvesters IS installed here, so hide it the way a missing package looks
    # to the import system (None in sys.modules makes `import` raise ImportError).
    monkeypatch.setitem(sys.modules, "harvesters", None)
    monkeypatch.setitem(sys.modules, "harvesters.core", None)
    with pytest.raises(SourceError, match=r"pip install 'linesight\[camera\]'"):
        build_source({"type": "genicam", "name": "cam1"})


def _corrupt_mid_stream(jpeg: bytes) -> bytes:
    """A one-bit flip in the entropy-coded data that libjpeg only warns about: OpenCV still returns pixels."""
    for pos in range(len(jpeg) // 3, len(jpeg) * 2 // 3):
        for bit in range(8):
            bad = bytearray(jpeg)
            bad[pos] ^= 1 << bit
            bad = bytes(bad)
            try:
                __import__("simplejpeg").decode_jpeg(bad, colorspace="GRAY", strict=True)
            except ValueError:
                if cv2.imdecode(np.frombuffer(bad, np.uint8), cv2.IMREAD_UNCHANGED) is not None:
                    return bad
    raise AssertionError("no warning-only corruption found")


@pytest.mark.skipif(not DATASET.exists(), reason="needs ../shared/datasets/magnetic_tile")
def test_jpeg_corrupt_mid_stream_is_a_bad_frame_not_garbage(tmp_path: Path) -> None:
    from linesight.errors import DataError
    from linesight.export.images import read_image

    src = sorted((DATASET / "test" / "good").glob("*.jpg"))[0]
    good = src.read_bytes()
    (tmp_path / "a_good.jpg").write_bytes(good)
    (tmp_path / "b_flipped.jpg").write_bytes(_corrupt_mid_stream(good))
    with FolderSource(FolderSourceConfig(path=tmp_path)) as s:
        frames = [s.read(1.0), s.read(1.0)]
    ok, bad = frames
    np.testing.assert_array_equal(ok.image, cv2.imread(str(src), cv2.IMREAD_UNCHANGED))  # same pixels as OpenCV
    assert bad.image is None and "b_flipped.jpg" in bad.error and "Corrupt JPEG data" in bad.error
    with pytest.raises(DataError, match="b_flipped.jpg.*corrupt or truncated"):  # training reads the same way
        read_image(tmp_path / "b_flipped.jpg")
