"""The pages in a real browser (Debian chromium via Playwright), the UI served by uvicorn.

Stations / live: a station publishing real engine verdicts and frames through the daemon's ZmqSink over real
ZeroMQ; the page shows them live (verdict, score vs threshold, frame, rows), and Pause stops its updates until
Resume catches up. Review: a real daemon running a project's active version archives into the project and takes
commands over a real mosquitto; "False reject (OK)" on an NG record asks for the token once and the feedback lands
in the project's feedback file.

Trends: a station's scores step up after a stable burn-in; the page draws the charts and the UI's alarm.

LINESIGHT_SCREENSHOTS=1 also saves docs/screenshots/ui-<page>.png (not otherwise).
"""
from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from ui_harness import (
    TOKEN,
    WHO,
    Station,
    commanded_ui,
    fitted_project,
    publish_parts,
    running,
    serve,
    station_config,
    ui_config,
    wait_for,
    warm_up,
)

from helpers import need_data
from linesight.export.engine import Engine
from linesight.export.images import read_image
from linesight.ui.app import create_app

SCREENSHOTS = Path(__file__).resolve().parents[1] / "docs" / "screenshots"
SCREENSHOT = SCREENSHOTS / "ui-stations.png"


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


def watched(browser, height: int):  # noqa: ANN001, ANN201 - playwright Browser -> (Page, list)
    """A new page and the list its script errors, failed requests and console errors land in (must stay empty)."""
    page = browser.new_page(viewport={"width": 1280, "height": height})
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(f"pageerror: {e}"))
    page.on("response", lambda r: errors.append(f"HTTP {r.status}: {r.url}") if r.status >= 400 else None)
    page.on("console", lambda m: errors.append(f"console.error: {m.text}") if m.type == "error" else None)
    return page, errors


def rows(page) -> list[int]:  # noqa: ANN001 - playwright Page
    return [int(s) for s in page.eval_on_selector_all(".verdicts tbody tr", "trs => trs.map(t => t.dataset.seq)")]


def test_stations_page_shows_live_verdicts_and_frames_and_pause_stops_updates(line, chromium_browser) -> None:
    url, station, engine = line
    data = need_data()
    images = [read_image(p) for p in sorted((data / "test" / "good").iterdir())[:3]]
    images += [read_image(p) for p in sorted((data / "test" / "crack").iterdir())[:2]]
    page, errors = watched(chromium_browser, 900)
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
        page.click("text=Trends")  # the default burn-in of 1000 parts has just begun: the page says so
        page.wait_for_selector("#burn-in:not([hidden])")
        assert page.text_content("h1") == "Trends" and "of 1000 parts" in page.text_content("#burn-in-text")
        assert not errors, errors
    finally:
        page.close()


def test_trends_page_draws_the_charts_and_the_alarm_of_a_score_step(chromium_browser, free_tcp_port) -> None:
    """A station's scores step up after a stable burn-in (100 parts): the page draws the score EWMA leaving its
    band, the NG-rate CUSUM and the type chart, and lists the UI's alarm with a marker on the chart."""
    import httpx

    station = Station("line3", f"tcp://127.0.0.1:{free_tcp_port()}", f"tcp://127.0.0.1:{free_tcp_port()}")
    page, errors = watched(chromium_browser, 900)
    try:
        with serve(create_app(ui_config([station], trends={"burn_in": 100})), free_tcp_port()) as url, \
                httpx.Client(base_url=url) as http:
            warm_up(station, lambda: http.get("/api/v1/stations/line3").json())

            def charted() -> int:
                return http.get("/api/v1/stations/line3/trends", params={"after": 10**9}).json()["received"]

            page.goto(f"{url}/trends?station=line3", wait_until="load")
            page.wait_for_selector("#burn-in:not([hidden])")
            rng = np.random.default_rng(5)
            seq = publish_parts(station, 1000, 300, rng, charted)
            publish_parts(station, seq, 200, rng, charted, score_factor=1.6, p_ng=0.1)
            page.wait_for_selector("#alarms tr.alarm[data-code=trend_score]", timeout=10_000)
            page.wait_for_function("n => document.querySelectorAll('#score-chart circle').length >= n", arg=500)
            assert page.is_hidden("#burn-in")
            assert page.locator("#score-chart polyline.ewma").count() >= 1
            assert page.locator("#score-chart polyline.limit").count() >= 2
            assert page.locator("#score-chart .alarm-marker").count() >= 1
            assert page.locator("#ng-chart polyline.cusum").count() >= 1
            assert page.locator("#ng-chart polyline.share").count() >= 1
            assert page.locator("#type-charts svg[data-type=unknown] polyline.cusum").count() >= 1
            assert page.text_content("#now tr[data-chart=scores] td:nth-child(3)") == "ALARM"
            assert "rose out of their control band" in page.text_content("#alarms")
            if os.environ.get("LINESIGHT_SCREENSHOTS") == "1":
                SCREENSHOTS.mkdir(parents=True, exist_ok=True)
                page.screenshot(path=str(SCREENSHOTS / "ui-trends.png"), full_page=True)
        assert not errors, errors
    finally:
        page.close()
        station.close()


def test_review_page_feedback_lands_in_the_project(chromium_browser, mosquitto, tmp_path, free_tcp_port) -> None:
    project = fitted_project(tmp_path / "tiles")
    feedback = project.feedback_dir / "feedback.jsonl"
    page, errors = watched(chromium_browser, 900)
    try:
        with running(station_config(project, mosquitto.port)) as svc, \
                serve(create_app(commanded_ui(tmp_path, mosquitto.port, project.results_dir)), free_tcp_port()) as url:
            import httpx

            wait_for(lambda: len(httpx.get(f"{url}/api/v1/stations/line3/archive?verdict=NG").json()["records"]) >= 8,
                     what="NG records in the archive")
            page.goto(f"{url}/review", wait_until="load")
            page.wait_for_selector(".tile.ng")
            tile = page.query_selector(".tile.ng")
            seq = int(tile.get_attribute("data-seq"))
            tile.click()
            page.wait_for_function("() => document.querySelector('#d-image').naturalWidth > 0 && "
                                   "document.querySelector('#d-heatmap').naturalWidth > 0")
            assert page.text_content("#d-verdict") == "NG" and page.text_content("#d-seq").startswith(f"{seq} ")
            assert not feedback.exists()
            page.click("text=False reject (OK)")
            page.fill("#write-token", TOKEN)  # asked once; this tab keeps it
            page.click("#write-auth-form button[type=submit]")
            page.wait_for_selector("#fb-reply.ok", timeout=10_000)
            assert page.text_content("#fb-reply").startswith(f"recorded: seq {seq} is OK (record ")
            (rec,) = [json.loads(line) for line in feedback.read_text().splitlines()]
            assert (rec["label"], rec["source"], rec["by"], rec["seq"], rec["run"]) == ("OK", "ui", WHO, seq,
                                                                                        svc.seqs.run)
            assert rec["verdict"] == "NG" and Path(rec["image"]).is_relative_to(project.results_dir)
            assert Path(rec["image"]).is_file() and rec["version"] == 1
            # a second verdict on the same tab: no question this time
            page.click("text=Confirm NG")
            page.wait_for_function("() => document.querySelector('#fb-reply').textContent.includes('is NG')")
            assert page.is_hidden("#write-auth") and len(feedback.read_text().splitlines()) == 2
            if os.environ.get("LINESIGHT_SCREENSHOTS") == "1":
                SCREENSHOTS.mkdir(parents=True, exist_ok=True)
                page.screenshot(path=str(SCREENSHOTS / "ui-review.png"), full_page=False)
        assert not errors, errors
    finally:
        page.close()


def test_a_fit_started_on_the_training_page_becomes_the_stations_model_from_the_models_page(
        chromium_browser, mosquitto, tmp_path, free_tcp_port) -> None:
    """Training page: a fit job runs to its new version with live stages; Models page: Activate switches the
    running station (its verdicts carry the new version's hash) and the project's history says who did it."""
    from linesight.config.ui import ProjectLinkConfig

    project = fitted_project(tmp_path / "tiles")
    cfg = commanded_ui(tmp_path, mosquitto.port, None)
    cfg = cfg.model_copy(update={"projects": [ProjectLinkConfig(name="tiles", dir=project.root)]})
    page, errors = watched(chromium_browser, 1000)
    page.on("dialog", lambda d: d.accept())
    try:
        with running(station_config(project, mosquitto.port)) as svc, serve(create_app(cfg), free_tcp_port()) as url:
            v1_hash = project.version(1).bundle_hash
            assert svc.holder.engine.identity["hash"] == v1_hash
            page.goto(f"{url}/training?project=tiles", wait_until="load")
            page.wait_for_function("() => document.querySelector('#config').value.includes('test_fraction')")
            page.fill("#config", json.dumps({"preset": "fast", "test_fraction": 0.3, "fit": {
                "weights": "none", "input_size": 96, "embedding_dim": 64}}))
            page.click("#fit")
            page.fill("#write-token", TOKEN)
            page.click("#write-auth-form button[type=submit]")
            page.wait_for_selector("#job-state:text('done')", timeout=180_000)
            assert page.query_selector_all("#stages tr") and "v2" in page.text_content("#jobs")
            if os.environ.get("LINESIGHT_SCREENSHOTS") == "1":
                page.screenshot(path=str(SCREENSHOTS / "ui-training.png"), full_page=True)
            assert project.version_numbers() == [1, 2] and project.metadata().active == 1
            page.goto(f"{url}/models?project=tiles", wait_until="load")
            page.wait_for_selector("tr[data-version='2'] button[data-activate='2']")
            page.click("tr[data-version='2'] button[data-activate='2']")  # the token: kept by this tab
            page.wait_for_selector("tr.active[data-version='2']", timeout=10_000)
            assert project.metadata().active == 2 and project.metadata().history[-1].action == "activate"
            v2_hash = project.version(2).bundle_hash
            wait_for(lambda: svc.holder.engine.identity["hash"] == v2_hash, timeout=30,
                     what="the station to follow the activation")

            def newest_verdict_hash() -> str:  # the station archives every frame: its newest verdict's model
                newest = max(project.results_dir.rglob("*.json"), key=lambda f: f.stat().st_mtime)
                return json.loads(newest.read_text())["model"]["hash"]

            wait_for(lambda: newest_verdict_hash() == v2_hash, timeout=30, what="verdicts carrying v2's hash")
            if os.environ.get("LINESIGHT_SCREENSHOTS") == "1":
                page.screenshot(path=str(SCREENSHOTS / "ui-models.png"), full_page=True)
            page.goto(f"{url}/project?project=tiles", wait_until="load")  # Project & data: the history says it
            page.wait_for_selector("#counts tr[data-label='good']")
            assert "v2" in page.text_content("#facts") and "activate" in page.text_content("#history")
            if os.environ.get("LINESIGHT_SCREENSHOTS") == "1":
                page.screenshot(path=str(SCREENSHOTS / "ui-project.png"), full_page=True)
        assert not errors, errors
    finally:
        page.close()
