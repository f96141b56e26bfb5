"""The UI's HTTP application: pages from static/, the JSON API under /api/v1 (OpenAPI at /api/v1/openapi.json).

Why no Swagger page: FastAPI's loads its script from a CDN, and these pages work offline. Why the routes read the
body themselves (inspect, commands): the size limit (413) and the content-type check (415) must hold before a byte
is buffered past the limit, and a user's bad input is a 4xx with the decoder's message, never a 500.
"""
from __future__ import annotations

import json
import logging
import math
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
from fastapi import Depends, FastAPI, HTTPException, Query, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, RedirectResponse, Response, StreamingResponse
from fastapi.staticfiles import StaticFiles
from starlette.concurrency import run_in_threadpool

from linesight import __version__
from linesight.config.ui import UiConfig
from linesight.daemon.commands import model_of, validated
from linesight.daemon.sinks.encoding import verdict_json
from linesight.errors import DataError
from linesight.ui.auth import Access, load_tokens
from linesight.ui.commands import CommandLinks, NoReply, Unreachable
from linesight.ui.feeds import KEEP, Feeds, StationState, StationSummary
from linesight.ui.inspect import InspectAnswer, Inspector, ModelState, Unavailable
from linesight.ui.jobs import JobRunner
from linesight.ui.projects import project_routes
from linesight.ui.review import review_routes
from linesight.ui.trends import trend_routes
from linesight.ui.uploads import MULTIPART, RAW_TYPES, limited, read_upload

log = logging.getLogger(__name__)

STATIC = Path(__file__).parent / "static"
#: Sidebar pages: path -> title; each is static/<path>.html.
PAGES = {"stations": "Stations / live", "review": "Review", "project": "Project & data", "training": "Training",
         "models": "Models", "trends": "Trends"}
COMMAND_BODY_MAX = 64 * 1024  # the daemon's own limit on a command payload
COMMANDS_AT_ONCE = 8  # worker threads waiting for station replies at most; more requests queue for one
_INSPECT_BODY = {"required": True, "content": {
    **{t: {"schema": {"type": "string", "format": "binary"}} for t in RAW_TYPES},
    MULTIPART: {"schema": {"type": "object", "required": ["file"],
                           "properties": {"file": {"type": "string", "format": "binary"}}}}}}


def _page(file: Path):  # noqa: ANN202 - a route handler
    """A handler serving one fixed file (a closure, not a default argument: FastAPI would make that a query
    parameter a client could point elsewhere)."""

    def serve() -> FileResponse:
        return FileResponse(file)

    return serve


def create_app(cfg: UiConfig) -> FastAPI:
    """The application for one UI config: feeds start and stop with it, the inspect model loads at start."""
    access = Access(cfg.auth, load_tokens(cfg.auth))
    feeds = Feeds(cfg.stations, cfg.stale_after_s)
    inspector = Inspector(cfg.inspect) if cfg.inspect is not None else None
    links = CommandLinks({s.name: (s.mqtt, feeds.states[s.name]) for s in cfg.stations if s.mqtt is not None})
    jobs = JobRunner()

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        feeds.start()
        links.start()
        if inspector is not None:
            await run_in_threadpool(inspector.load)
        try:
            yield
        finally:
            jobs.stop()
            links.stop()
            feeds.stop()

    app = FastAPI(title="linesight", version=__version__, lifespan=lifespan, docs_url=None, redoc_url=None,
                  openapi_url="/api/v1/openapi.json",
                  description="Live stations and image inspection of linesight (docs/ui.md). Verdicts are "
                              "linesight.verdict/1 (docs/verdict.schema.json).")
    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    app.add_exception_handler(RequestValidationError, _invalid_request)

    @app.get("/", include_in_schema=False)
    def home() -> RedirectResponse:
        return RedirectResponse("/stations")

    for path in PAGES:
        app.add_api_route(f"/{path}", _page(STATIC / f"{path}.html"), include_in_schema=False, methods=["GET"])
    _station_routes(app, feeds, [Depends(access.read)])
    _command_routes(app, feeds, links, access)
    review_routes(app, {s.name: s for s in cfg.stations}, [Depends(access.read)])
    trend_routes(app, {name: s.trends for name, s in feeds.states.items()}, [Depends(access.read)])
    _inspect_routes(app, inspector, access, int(cfg.max_upload_mb * 2**20))
    project_routes(app, cfg.projects, access, jobs, int(cfg.max_upload_mb * 2**20),
                   {s.name: s.archive_dir for s in cfg.stations})
    return app


def _known(feeds: Feeds, name: str) -> StationState:
    state = feeds.states.get(name)
    if state is None:
        known = ", ".join(feeds.states) or "none configured"
        raise HTTPException(404, f"no station {name!r} (stations: {known})")
    return state


def _command_routes(app: FastAPI, feeds: Feeds, links: CommandLinks, access: Access) -> None:
    """POST /api/v1/stations/{name}/commands/{command}: a command to the station over its MQTT command topics."""
    limiter: list[anyio.CapacityLimiter] = []  # made on first use: it belongs to the server's event loop

    @app.post("/api/v1/stations/{name}/commands/{command}", response_class=JSONResponse,
              responses={200: {"description": "The station's reply: {id, command, ok: true, result}"},
                         400: {"description": "The payload is not that command (the model's reason)"},
                         401: {"description": "Token needed (header only)"},
                         404: {"description": "Unknown station or command"},
                         409: {"description": "No mqtt section for this station, or the station refused: its "
                                              "reply {id, command, ok: false, error} plus detail"},
                         502: {"description": "The broker cannot be reached, or did not pass it on (its ACL)"},
                         504: {"description": "No station listens on its topics, or no reply in time"}},
              openapi_extra={"requestBody": {"required": False, "content": {"application/json": {
                  "schema": {"type": "object"}}}}},
              summary="Send a command (reload, pause, resume, feedback, part) to a station; its reply",
              description="The body is the command's JSON payload (docs/daemon.md#commands), checked against the "
                          "daemon's own model before it is sent. For feedback the UI sets source 'ui' and, when "
                          "the token has a name, by = that name.")
    async def command(name: str, command: str, request: Request) -> JSONResponse:
        writer = access.write(request)  # first: without a token nothing is told, not even which stations exist
        _known(feeds, name)
        link = links.links.get(name)
        if link is None:
            raise HTTPException(409, f"station {name!r} takes no commands from this UI: give it an mqtt section "
                                     "(its broker and topic levels) in the UI config (docs/ui.md)")
        try:
            model_of(command)
        except ValueError as exc:
            raise HTTPException(404, str(exc)) from None
        payload = await _json_object(request)
        if command == "feedback":
            payload = {**payload, "source": "ui", **({"by": writer.name} if writer.name is not None else {})}
        try:
            cmd = validated(command, payload)
        except ValueError as exc:
            raise HTTPException(400, str(exc)) from None
        if not limiter:
            limiter.append(anyio.CapacityLimiter(COMMANDS_AT_ONCE))
        log.info("ui command %s to station %s by %s", command, name, writer.name or "an unnamed token")
        try:
            reply = await anyio.to_thread.run_sync(link.send, command, cmd.model_dump(mode="json",
                                                                                        exclude_unset=True),
                                                   limiter=limiter[0])
        except Unreachable as exc:
            raise HTTPException(502, str(exc)) from None
        except NoReply as exc:
            raise HTTPException(504, str(exc)) from None
        if reply.get("ok") is True:
            return JSONResponse(reply)
        return JSONResponse({**reply, "detail": f"station {name} refused {command}: {reply.get('error')}"},
                            status_code=409)


async def _invalid_request(_request: Request, exc: RequestValidationError) -> JSONResponse:
    """FastAPI's 422, whose `input` echoes what was sent; a NaN or Infinity in a JSON body (Python's parser takes
    them) is echoed as a string, where FastAPI's own handler cannot encode it and answers 500."""
    return JSONResponse({"detail": _finite(jsonable_encoder(exc.errors()))}, status_code=422)


def _finite(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)  # 'nan', 'inf', '-inf'
    if isinstance(value, list):
        return [_finite(v) for v in value]
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    return value


async def _json_object(request: Request) -> dict[str, Any]:
    """The body as a JSON object ({} when empty), within the daemon's size limit; 4xx otherwise."""
    kind = request.headers.get("content-type", "").split(";", 1)[0].strip().lower()
    raw = b"".join([chunk async for chunk in limited(request, COMMAND_BODY_MAX, "a station takes commands up to "
                                                                                  "64 KiB")])
    if not raw.strip():
        return {}
    if kind != "application/json":
        raise HTTPException(415, f"content type {kind or '(none)'!r} not accepted: send the payload as "
                                 "application/json")
    try:
        payload = json.loads(raw)
    except (ValueError, RecursionError) as exc:
        raise HTTPException(400, f"the body is not JSON ({exc}); send a JSON object, e.g. {{}}") from None
    if not isinstance(payload, dict):
        raise HTTPException(400, f"the body must be a JSON object, not {type(payload).__name__}")
    return payload


def _station_routes(app: FastAPI, feeds: Feeds, read: list[Any]) -> None:
    """GET /api/v1/stations...: what the feeds hold, read-only."""

    def station(name: str) -> StationState:
        return _known(feeds, name)

    @app.get("/api/v1/stations", dependencies=read, summary="Every station: connection, counters, last verdict")
    def stations() -> list[StationSummary]:
        return [s.summary() for s in feeds.states.values()]

    @app.get("/api/v1/stations/{name}", dependencies=read, summary="One station: connection, counters, last verdict")
    def one_station(name: str) -> StationSummary:
        return station(name).summary()

    @app.get("/api/v1/stations/{name}/verdicts", dependencies=read, summary="Recent verdicts, newest first",
             description=f"The last {KEEP} verdicts of the station are kept; page back with before_seq = the "
                         "smallest seq of the previous page.")
    def verdicts(name: str, limit: int = Query(50, ge=1, le=KEEP),
                 before_seq: int | None = Query(None, description="Only verdicts with a smaller seq")
                 ) -> list[dict[str, Any]]:
        return station(name).verdicts(limit, before_seq)

    def picture(name: str, heatmap: bool) -> Response:
        pic = station(name).picture(heatmap)
        if pic is None:
            what = "heatmap" if heatmap else "frame"
            raise HTTPException(404, f"station {name!r} has sent no {what} yet")
        return Response(pic.data, media_type=pic.media_type,
                        headers={"Cache-Control": "no-store", "X-Linesight-Seq": str(pic.seq)})

    pictures = {200: {"content": {"image/jpeg": {}, "image/png": {}}, "description": "As the daemon encoded it"}}

    @app.get("/api/v1/stations/{name}/frame", dependencies=read, response_class=Response, responses=pictures,
             summary="The latest frame (header X-Linesight-Seq: its verdict's seq)")
    def frame(name: str) -> Response:
        return picture(name, heatmap=False)

    @app.get("/api/v1/stations/{name}/heatmap", dependencies=read, response_class=Response, responses=pictures,
             summary="The latest frame's coloured heatmap (clip(map/threshold*0.5,0,1), JET)")
    def heatmap(name: str) -> Response:
        return picture(name, heatmap=True)

    @app.get("/api/v1/stations/{name}/events", dependencies=read, response_class=StreamingResponse,
             responses={200: {"content": {"text/event-stream": {}}, "description": "Server-Sent Events"}},
             summary="Live events: snapshot, then verdict, summary and frame events")
    def events(name: str) -> StreamingResponse:
        state = station(name)
        return StreamingResponse(state.events.stream(state.snapshot), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})


def _inspect_routes(app: FastAPI, inspector: Inspector | None, access: Access, limit: int) -> None:
    """/api/v1/inspect: the model's state (GET) and an image decided (POST)."""

    @app.get("/api/v1/inspect", dependencies=[Depends(access.read)],
             summary="The inspect model: identity, or why there is none")
    def inspect_model() -> ModelState:
        if inspector is None:
            return ModelState(configured=False, model=None, problem="no inspect section in the UI config")
        return inspector.state

    def configured() -> None:  # before the token check: without a model, no token would help
        if inspector is None:
            raise HTTPException(503, "inspect is not configured: add an inspect section (bundle or project) to "
                                     "the UI config")

    @app.post("/api/v1/inspect", dependencies=[Depends(configured), Depends(access.inspect)], response_class=Response,
              responses={200: {"model": InspectAnswer, "description": "The verdict (and overlay)"},
                         400: {"description": "Not a readable image"}, 401: {"description": "Token needed"},
                         413: {"description": "Body too large"}, 415: {"description": "Content type"},
                         503: {"description": "No model, or busy"}},
              openapi_extra={"requestBody": _INSPECT_BODY},
              summary="Decide one image with the configured model; a verdict in the daemon's schema")
    async def inspect(request: Request, overlay: bool = False,
                      part_id: str | None = Query(None, max_length=128, pattern=r"^[^\x00-\x1f]*$")) -> Response:
        assert inspector is not None  # configured() said so
        upload = await read_upload(request, limit)
        try:
            answer = await run_in_threadpool(inspector.inspect, upload, part_id=part_id, overlay=overlay)
        except DataError as exc:
            raise HTTPException(400, str(exc)) from None
        except Unavailable as exc:
            raise HTTPException(503, str(exc), headers={"Retry-After": "1"}) from None
        return Response(verdict_json(answer.model_dump(mode="json")), media_type="application/json")
