"""Stations / live in a real browser (Debian chromium via Playwright): the UI served by uvicorn, a station
publishing real engine verdicts and frames through the daemon's ZmqSink over real ZeroMQ. The page shows them
live (verdict, score vs threshold, frame, rows), and Pause stops its updates until Resume catches up.

LINESIGHT_SCREENSHOTS=1 also saves docs/screenshots/ui-stations.png (not otherwise).
"""
from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from ui_harness import Station, serve, ui_config, wait_for, warm_up

from helpers import need_data
from linesight.export.engine import Engine
from linesight.export.images import read_image
from linesight.ui.app import create_app

SCREENSHOT = Path(__file__).resolve().parents[1] / "docs" / "screenshots" / "ui-stations.png"


@pytest.fixture
def line(free_tcp_port, small_bundle) -> Iterator[tuple[str, Station, Engine]]:
    """The UI on a real server, one station publishing into it, and the engine that scores its frames."""
    station = Station("line3", f"tcp://127.0.0.1:{free_tcp_port()}", f"tcp://127.0.0.1:{free_tcp_port()}")
    try:
        with serve(create_app(ui_config([station])), free_tcp_port()) as url:
            import httpx

            warm_up(station, lambda: httpx.get(f"{url}/api/v1/stations/line3").json())
            yield url, station, Engine(small_bundle)
    finally:
        station.close()


def rows(page) -> list[int]:  # noqa: ANN001 - playwright Page
    return [int(s) for s in page.eval_on_selector_all(".verdicts tbody tr", "trs => trs.map(t => t.dataset.seq)")]


def test_stations_page_shows_live_verdicts_and_frames_and_pause_stops_updates(line, chromium_browser) -> None:
    url, station, engine = line
    data = need_data()
    images = [read_image(p) for p in sorted((data / "test" / "good").iterdir())[:3]]
    images += [read_image(p) for p in sorted((data / "test" / "crack").iterdir())[:2]]
    page = chromium_browser.new_page(viewport={"width": 1280, "height": 900})
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(f"pageerror: {e}"))
    page.on("response", lambda r: errors.append(f"HTTP {r.status}: {r.url}") if r.status >= 400 else None)
    page.on("console", lambda m: errors.append(f"console.error: {m.text}") if m.type == "error" else None)
    try:
        page.goto(f"{url}/", wait_until="load")
        assert page.url.endswith("/stations")
        page.wait_for_selector(".station[data-station=line3] .stream.live")
        sent = [station.publish_scored(1000 + i, img, engine) for i, img in enumerate(images)]
        last = sent[-1]
        page.wait_for_function("seq => document.querySelector('.verdicts tbody tr')?.dataset.seq === seq",
                               arg=str(last["seq"]), timeout=10_000)
        assert rows(page)[:5] == [v["seq"] for v in reversed(sent)]
        big = page.text_content(".verdict-big")
        assert big == last["verdict"]
        score, threshold = (float(x) for x in page.text_content(".score").split(" / "))
        assert score == pytest.approx(last["score"], rel=1e-3)
        assert threshold == pytest.approx(last["threshold"], rel=1e-3)
        assert page.text_content(".part") == last["part_id"]
        assert page.text_content(".model") == f"{last['model']['id']} v{last['model']['version']} " \
                                              f"({last['model']['hash']})"
        # the frame of the last verdict is shown, decoded by the browser, with the heatmap over it
        page.wait_for_function("seq => document.querySelector('.frame').src.endsWith('seq=' + seq) && "
                               "document.querySelector('.frame').naturalWidth > 0", arg=str(last["seq"]))
        size = page.eval_on_selector(".frame", "i => [i.naturalWidth, i.naturalHeight]")
        assert size == [images[-1].shape[1], images[-1].shape[0]]
        assert page.is_visible(".heat")
        page.uncheck(".overlay")
        assert not page.is_visible(".heat")
        page.check(".overlay")
        counts = {k: int(page.text_content(f".c-{k}")) for k in ("ok", "ng", "fs")}
        assert counts["ok"] + counts["ng"] >= len(sent)
        assert page.text_content(".conn") == "connected"
        if os.environ.get("LINESIGHT_SCREENSHOTS") == "1":
            SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(SCREENSHOT), full_page=True)

        # pause: new verdicts and frames arrive at the server, the page stays as it was
        page.click("#pause")
        assert page.text_content("#pause") == "Resume" and page.is_visible("#paused-note")
        shown, frame_src = rows(page), page.get_attribute(".frame", "src")
        more = [station.publish_scored(1100 + i, img, engine) for i, img in enumerate(images[:2])]
        import httpx

        wait_for(lambda: httpx.get(f"{url}/api/v1/stations/line3").json()["frame_seq"] == more[-1]["seq"],
                 what="the server to hold the new frame")
        time.sleep(0.5)
        assert rows(page) == shown and page.get_attribute(".frame", "src") == frame_src
        # resume: the page catches up with what it missed
        page.click("#pause")
        page.wait_for_function("seq => document.querySelector('.verdicts tbody tr')?.dataset.seq === seq",
                               arg=str(more[-1]["seq"]), timeout=10_000)
        assert rows(page)[:2] == [more[1]["seq"], more[0]["seq"]]
        page.wait_for_function("seq => document.querySelector('.frame').src.endsWith('seq=' + seq)",
                               arg=str(more[-1]["seq"]))
        # the sidebar names every page; the later ones say so honestly
        assert page.eval_on_selector_all("#sidebar a", "as => as.map(a => a.firstChild.textContent)") == [
            "Stations / live", "Review", "Project & data", "Training", "Models", "Trends"]
        page.click("text=Models")
        assert "later slice" in page.text_content(".later") and page.text_content("h1") == "Models"
        assert not errors, errors
    finally:
        page.close()
