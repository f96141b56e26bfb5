"""A property-based fuzz of the UI's OpenAPI document (issue 16): schemathesis generates requests for every
operation of /api/v1/openapi.json, valid and invalid, and sends them with the token to `linesight ui`'s app on a
real uvicorn; no answer may be a 5xx, nothing may be logged as an error, and answers must match the document where
schemathesis can check it (content type, headers, response schema).

Real parts behind every route family: an inspect model (a fitted bundle), a station fed over real ZeroMQ by the
daemon's own ZmqSink, a station with an archive written by the daemon's own Archive and commands over MQTT to a
real broker (no station daemon there), a fitted project with two versions, and a token (read_open false, so reads
need it too). Generated path parameters and the archive cursor are mostly (70 %) swapped for the names these parts
really have (schemathesis' parameter dictionaries), so the fuzz reaches past the 404 of an unknown name; values that
once gave a 500 are offered the same way, and JSON bodies often carry a NaN or Infinity (Python's parser takes them).

What is held back, and why:
- POST /api/v1/projects/{name}/jobs starts `linesight project fit|learn|tune` in a child process (minutes of CPU):
  a request the route could start a job from goes to a configured project whose folder is no project (409 before
  anything starts); only requests it must refuse (bad body, `config` on a non-fit job, an invalid train config)
  reach the real project. The job list is checked empty at the end.
- Station commands: no station daemon listens on the broker, so a well-formed command is 504 at once (mosquitto
  says nobody subscribes), as documented; that, and only there, is the one 5xx allowed.
- Server-Sent Events never end: schemathesis reads a stream until it has sent 20 events or went quiet for
  SSE_READ_S.
- status_code_conformance is not checked: FastAPI documents 200 and 422 per route, and the 4xx each route gives
  (401, 404, 409, ...) are in docs/ui.md, not repeated in every operation of the document.

Why the document is taken from an app made at import: schemathesis makes one test per operation when the test
module is collected, before any fixture runs (its fixture-loaded schemas use pytest internals that pytest 9 no
longer has); the fixture checks that the live server serves the same document.
"""
from __future__ import annotations

import functools
import json
import logging
import math
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from conftest import _INSTALL_HINT, MOSQUITTO, Broker, _base_conf, free_port
from ui_harness import MQTT_LEVELS, TOKEN, Station, decided, fitted_project, picture, serve, wait_for, warm_up

from helpers import need_data
from linesight.config.outputs import ArchiveConfig
from linesight.config.ui import UiConfig
from linesight.daemon.sinks.archive import Archive, record_name
from linesight.daemon.sinks.encoding import Pictures
from linesight.export.prediction import Prediction
from linesight.ui.app import create_app

schemathesis = pytest.importorskip("schemathesis")  # the `test` extra (.ci/setup.sh installs it)

from hypothesis import HealthCheck, settings  # noqa: E402 - schemathesis brings hypothesis
from schemathesis.checks import not_a_server_error  # noqa: E402
from schemathesis.core import NotSet  # noqa: E402
from schemathesis.specs.openapi.checks import (  # noqa: E402
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
)

AUTH = {"Authorization": f"Bearer {TOKEN}"}
# Fixed, so CI runs the same cases every time; to explore further: LINESIGHT_FUZZ_SEED=7 LINESIGHT_FUZZ_EXAMPLES=200
SEED = int(os.environ.get("LINESIGHT_FUZZ_SEED", "16"))
EXAMPLES = int(os.environ.get("LINESIGHT_FUZZ_EXAMPLES", "25"))  # per operation, fuzzing phase; the examples and
# coverage phases add their own cases (boundary values, methods the operation does not have)
SSE_READ_S = 1.0
DAY = "2026-01-15"  # the archive's records are moved to this day, so their ids are known before the test runs
N_ARCHIVED = 8
JOBS = "POST /api/v1/projects/{name}/jobs"
COMMANDS = "POST /api/v1/stations/{name}/commands/{command}"
CHECKS = [not_a_server_error, content_type_conformance, response_headers_conformance, response_schema_conformance]


# ------------------------------------------------------------------------------------------- real parts
def _archived_verdict(seq: int) -> tuple[dict[str, Any], Pictures]:
    """A verdict as the pipeline makes it (every third NG, analysed, its defects typed) and its pictures."""
    ng = seq % 3 == 0
    image, amap = picture(seq, ng=ng)
    model = {"id": "tiles", "version": 1, "hash": "0123456789abcdef"}
    v = decided(image, Prediction(3.0 if ng else 0.4, "NG" if ng else "OK", 1.0, amap, model=model), 1.0,
                seq=seq, run=7, part_id=f"P-{seq}", station="line2", model=model, deadline_ms=200)
    if ng:
        v["defects"] = [{**d, "type": "crack"} for d in v["defects"]]
    return v, Pictures(image, amap, 1.0)


RECORDS = [f"{DAY}_{record_name({'seq': s, 'part_id': f'P-{s}', 'verdict': 'NG' if s % 3 == 0 else 'OK'})}"
           for s in range(1, N_ARCHIVED + 1)]


def _archive(root: Path) -> None:
    """The verdicts written by the daemon's own Archive, their day folder renamed to DAY."""
    archive = Archive(ArchiveConfig(enabled=True, dir=root, save_ok_fraction=1.0, image_format="png"))
    for seq in range(1, N_ARCHIVED + 1):
        assert archive.save(*_archived_verdict(seq))
    [day] = [d for d in root.iterdir() if d.is_dir()]
    day.rename(root / DAY)


def _project(root: Path) -> Any:
    """v1 on good tiles (active), v2 also on three labeled cracks: reports, a diff, scores for a tune preview."""
    from linesight.config.project import TrainConfig
    from linesight.project.data import add_images
    from linesight.project.training import fit_version

    p = fitted_project(root)
    cracks = sorted((need_data() / "test" / "crack").iterdir())[:3]
    add_images(p, cracks, "crack", need_data() / "ground_truth" / "crack")
    fit_version(p, TrainConfig(fit={"weights": "none", "input_size": 96, "embedding_dim": 64}, test_fraction=0.3))
    return p


class ServerErrors(logging.Handler):
    """uvicorn's and the UI's error log records (a 500's traceback), shown with the case that caused them."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(self.format(record))


@dataclass
class Live:
    url: str
    errors: ServerErrors


@pytest.fixture(scope="module")
def broker(tmp_path_factory) -> Iterator[Broker]:
    """A real mosquitto (anonymous) for the commanded station; no station daemon subscribes there."""
    if MOSQUITTO is None:
        pytest.skip(_INSTALL_HINT)
    port = free_port()
    b = Broker(tmp_path_factory.mktemp("fuzz-broker"), port, [*_base_conf(port), "allow_anonymous true"])
    b.start()
    try:
        yield b
    finally:
        b.stop()


@pytest.fixture(scope="module")
def ui_live(small_bundle, broker, tmp_path_factory) -> Iterator[Live]:
    """The UI on a real uvicorn with every part behind it, the station's verdicts and frames arrived."""
    tmp = tmp_path_factory.mktemp("ui-fuzz")
    station = Station("line1", f"tcp://127.0.0.1:{free_port()}", f"tcp://127.0.0.1:{free_port()}")
    _archive(tmp / "archive")
    project = _project(tmp / "tiles")
    (tmp / "not-a-project").mkdir()
    cfg = UiConfig.model_validate({
        "stations": [{"name": "line1", "verdict_endpoint": station.endpoints[0],
                      "image_endpoint": station.endpoints[1]},
                     {"name": "line2", "verdict_endpoint": f"tcp://127.0.0.1:{free_port()}",
                      "archive_dir": str(tmp / "archive"),
                      "mqtt": {"port": broker.port, **MQTT_LEVELS, "reply_timeout_s": 2}}],
        "projects": [{"name": "tiles", "dir": str(project.root)}, {"name": "bare", "dir": str(tmp / "not-a-project")}],
        "inspect": {"bundle": str(small_bundle)},
        "auth": {"tokens_env": "UI_FUZZ_TOKEN", "read_open": False}})
    errors = ServerErrors()
    watched = [logging.getLogger(n) for n in ("uvicorn.error", "linesight.ui")]
    for lg in watched:
        lg.addHandler(errors)
    try:
        with pytest.MonkeyPatch.context() as mp:
            mp.setenv("UI_FUZZ_TOKEN", TOKEN)
            app = create_app(cfg)
        with serve(app, free_port()) as url:
            assert httpx.get(f"{url}/api/v1/openapi.json").json() == DOCUMENT
            warm_up(station, lambda: httpx.get(f"{url}/api/v1/stations/line1", headers=AUTH).json())
            for seq in range(1000, 1006):  # run 2: OK, NG (analysed), a fail-safe; each with its frame
                station.publish(seq, ng=seq % 3 == 0, fail_safe="deadline_missed" if seq == 1004 else None)
            wait_for(lambda: httpx.get(f"{url}/api/v1/stations/line1", headers=AUTH).json()["last"]["seq"] == 1005,
                     what="the station's verdicts in the UI")
            yield Live(url, errors)
            jobs = httpx.get(f"{url}/api/v1/jobs", headers=AUTH).json()
            assert jobs == [], f"the fuzz started a job: {jobs}"
    finally:
        for lg in watched:
            lg.removeHandler(errors)
        station.close()


# ------------------------------------------------------------------------------------------- the fuzz
def _config() -> Any:
    """The token header on every request; generated names, ids and versions often replaced by the real ones (a
    station's name under /stations, a project's under /projects), and values that once gave a 500 offered often."""
    nasty = {"files": ["report.html", "metrics.json", "../version.json", "report.html/../../x.json", "a\x00.html",
                       "a" * 300 + ".html"],
             "times": ["2026-01-15T12:00:00Z", "0001-01-01T00:00:00+01:00", "9999-12-31T23:59:59-01:00"],
             "numbers": ["1", "0.5", "nan", "inf", "-inf"]}
    values = {"stations": ["line1", "line2"], "projects": ["tiles", "bare"], "records": RECORDS,
              "commands": ["reload", "pause", "resume", "feedback", "part"], "versions": [1, 2], **nasty}
    bind = {"path.record": "records", "query.before": "records", "path.command": "commands", "path.n": "versions",
            "query.a": "versions", "query.b": "versions", "path.file": "files", "query.since": "times",
            "query.until": "times", "query.threshold": "numbers", "query.min_score": "numbers"}

    def often(bindings: dict[str, str]) -> dict[str, Any]:
        return {k: {"dictionary": d, "probability": 0.7} for k, d in bindings.items()}

    return schemathesis.Config.from_dict({
        "seed": SEED,
        "headers": AUTH,
        "dictionaries": {k: {"values": v} for k, v in values.items()},
        "parameters": often(bind),
        "operations": [{"include-path-regex": f"^/api/v1/{family}/", "parameters": often({"path.name": family})}
                       for family in ("stations", "projects")],
        "generation": {"max-examples": EXAMPLES, "database": "none"},
        "max-stream-events": 20,
    })


DOCUMENT = create_app(UiConfig()).openapi()  # every route is there whatever the config says
schemathesis.serializer.alias(["image/bmp", "image/tiff"], "application/octet-stream")  # POST /inspect takes them
schema = schemathesis.openapi.from_dict(DOCUMENT, config=_config())


@schema.hook
def flatmap_body(context: Any, body: Any) -> Any:
    """POST /inspect: an image body is often a real image (a real tile, as PNG and as JPEG), so the fuzz reaches
    the engine and its 200 answer, not only the decoder's 400. A JSON object: a member is often NaN or Infinity,
    which Python's JSON parser (and so FastAPI's) accepts."""
    from hypothesis import strategies as st

    if context.operation is not None and context.operation.path == "/api/v1/inspect":
        real = st.sampled_from(_real_images())
        if isinstance(body, bytes):
            return st.one_of(st.just(body), real)
        if isinstance(body, dict) and "file" in body:
            return st.one_of(st.just(body), real.map(lambda data: {**body, "file": data}))
    elif isinstance(body, dict) and body:
        nonfinite = st.tuples(st.sampled_from(sorted(body)), st.sampled_from([math.nan, math.inf, -math.inf]))
        return st.one_of(st.just(body), nonfinite.map(lambda kv: {**body, kv[0]: kv[1]}))
    return st.just(body)


@functools.cache
def _real_images() -> list[bytes]:
    import cv2

    from linesight.export.images import read_image

    image = read_image(sorted((need_data() / "test" / "crack").iterdir())[0])
    return [cv2.imencode(".png", image)[1].tobytes(), cv2.imencode(".jpg", image)[1].tobytes()]


def _would_start_a_job(body: Any) -> bool:
    """False only for a body POST .../jobs must refuse before it starts anything (422 or 400); True otherwise."""
    from pydantic import ValidationError

    from linesight.config.project import TrainConfig
    from linesight.ui.projects import JobRequest

    try:
        req = JobRequest.model_validate(json.loads(json.dumps(body)))  # as FastAPI: the parsed JSON, validated
    except (ValidationError, TypeError, ValueError):
        return False
    if req.config is None:
        return True
    if req.kind != "fit":
        return False
    try:
        TrainConfig.model_validate(req.config)
    except ValidationError:
        return False
    return True


def _shown(case: Any) -> str:
    """The request, for a failure's message (curl cannot show a body with NaN)."""
    try:
        return case.as_curl_command()
    except Exception:  # noqa: BLE001 - requests' InvalidJSONError, whatever else: the fields then
        return f"{case.method.upper()} {case.formatted_path} query={case.query} body={case.body!r}"


@schema.parametrize()
@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck))
def test_no_operation_answers_a_5xx_and_answers_match_the_document(case, ui_live) -> None:
    label = f"{case.method.upper()} {case.path}"
    if label == JOBS and case.path_parameters.get("name") == "tiles" and _would_start_a_job(
            None if isinstance(case.body, NotSet) else case.body):
        case.path_parameters["name"] = "bare"  # a folder that is no project: 409 before any job starts
    seen = len(ui_live.errors.lines)
    t0 = time.monotonic()
    sent: dict[str, Any] = {"timeout": SSE_READ_S if label.endswith("/events") else 30}
    if isinstance(case.body, dict) and any(isinstance(v, float) and not math.isfinite(v) for v in case.body.values()):
        # requests will not write NaN into JSON; the bytes as Python's json.dumps (and many clients) write them
        sent |= {"json": None, "data": json.dumps(case.body).encode(), "headers": {"Content-Type": "application/json"}}
    response = case.call(base_url=ui_live.url, **sent)
    took = time.monotonic() - t0
    said = "\n".join(ui_live.errors.lines[seen:])
    if label == COMMANDS and response.status_code == 504:
        assert "nothing on the broker subscribes" in response.json()["detail"], response.text
        checks = [c for c in CHECKS if c is not not_a_server_error]
    else:
        assert response.status_code < 500, f"{_shown(case)}\n-> {response.status_code} {response.text}\n{said}"
        checks = CHECKS
    assert not said, f"{_shown(case)}\n-> {response.status_code}, and the server logged:\n{said}"
    assert took < 10, f"{_shown(case)} took {took:.1f} s"
    case.validate_response(response, checks=checks, transport_kwargs={"base_url": ui_live.url})
