"""The UI's HTTP application: pages from static/, the JSON API under /api/v1 (OpenAPI at /api/v1/openapi.json).

Why no Swagger page: FastAPI's loads its script from a CDN, and these pages work offline. Why every route reads
the body itself for inspect: the size limit (413) and the content-type check (415) must hold before a byte is
buffered past the limit, and a user's bad input is a 4xx with the decoder's message, never a 500.
"""
from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from fastapi import Depends, FastAPI, HTTPException, Query, Request
from fastapi.responses import FileResponse, RedirectResponse, Response, StreamingResponse
from fastapi.staticfiles import StaticFiles
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile
from starlette.formparsers import MultiPartException, MultiPartParser

from linesight import __version__
from linesight.config.ui import UiConfig
from linesight.daemon.sinks.encoding import verdict_json
from linesight.errors import DataError
from linesight.ui.auth import Access, load_token_hashes
from linesight.ui.feeds import KEEP, Feeds, StationState, StationSummary
from linesight.ui.inspect import InspectAnswer, Inspector, ModelState, Unavailable, Upload

log = logging.getLogger(__name__)

STATIC = Path(__file__).parent / "static"
#: Sidebar pages: path -> title. Only Stations is live in this slice; the others say what is coming.
PAGES = {"stations": "Stations / live", "review": "Review", "project": "Project & data", "training": "Training",
         "models": "Models", "trends": "Trends"}
RAW_TYPES = ("image/png", "image/jpeg", "image/bmp", "image/tiff", "application/octet-stream")
MULTIPART = "multipart/form-data"
_INSPECT_BODY = {"required": True, "content": {
    **{t: {"schema": {"type": "string", "format": "binary"}} for t in RAW_TYPES},
    MULTIPART: {"schema": {"type": "object", "required": ["file"],
                           "properties": {"file": {"type": "string", "format": "binary"}}}}}}


async def _limited(request: Request, limit: int) -> AsyncIterator[bytes]:
    """The request body, refused with 413 as soon as it passes `limit` bytes (declared or actually sent)."""
    declared = request.headers.get("content-length", "")
    too_big = HTTPException(413, f"request body over {limit / 2**20:g} MB (max_upload_mb of the UI config)")
    if declared.isdigit() and int(declared) > limit:
        raise too_big
    total = 0
    async for chunk in request.stream():
        total += len(chunk)
        if total > limit:
            raise too_big
        yield chunk


async def read_upload(request: Request, limit: int) -> Upload:
    """Raw image bytes (an image/* or octet-stream body) or the `file` field of a multipart form."""
    kind = request.headers.get("content-type", "").split(";", 1)[0].strip().lower()
    if kind in RAW_TYPES:
        return Upload(b"".join([chunk async for chunk in _limited(request, limit)]))
    if kind != MULTIPART:
        raise HTTPException(415, f"content type {kind or '(none)'!r} not accepted: send the image bytes as "
                                 f"{', '.join(RAW_TYPES)}, or a {MULTIPART} form with a field 'file'")
    try:
        form = await MultiPartParser(request.headers, _limited(request, limit), max_files=1, max_fields=8).parse()
    except MultiPartException as exc:
        raise HTTPException(400, f"multipart form not readable: {exc.message}") from None
    try:
        file = form.get("file")
        if not isinstance(file, UploadFile):
            raise HTTPException(400, "the multipart form needs the image in a file field named 'file'")
        return Upload(await file.read(), file.filename or None)
    finally:
        await form.close()


def _page(file: Path):  # noqa: ANN202 - a route handler
    """A handler serving one fixed file (a closure, not a default argument: FastAPI would make that a query
    parameter a client could point elsewhere)."""

    def serve() -> FileResponse:
        return FileResponse(file)

    return serve


def create_app(cfg: UiConfig) -> FastAPI:
    """The application for one UI config: feeds start and stop with it, the inspect model loads at start."""
    access = Access(cfg.auth, load_token_hashes(cfg.auth))
    feeds = Feeds(cfg.stations, cfg.stale_after_s)
    inspector = Inspector(cfg.inspect) if cfg.inspect is not None else None

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        feeds.start()
        if inspector is not None:
            await run_in_threadpool(inspector.load)
        try:
            yield
        finally:
            feeds.stop()

    app = FastAPI(title="linesight", version=__version__, lifespan=lifespan, docs_url=None, redoc_url=None,
                  openapi_url="/api/v1/openapi.json",
                  description="Live stations and image inspection of linesight (docs/ui.md). Verdicts are "
                              "linesight.verdict/1 (docs/verdict.schema.json).")
    app.mount("/static", StaticFiles(directory=STATIC), name="static")

    @app.get("/", include_in_schema=False)
    def home() -> RedirectResponse:
        return RedirectResponse("/stations")

    for path in PAGES:
        app.add_api_route(f"/{path}", _page(STATIC / ("stations.html" if path == "stations" else "later.html")),
                          include_in_schema=False, methods=["GET"])
    _station_routes(app, feeds, [Depends(access.read)])
    _inspect_routes(app, inspector, access, int(cfg.max_upload_mb * 2**20))
    return app


def _station_routes(app: FastAPI, feeds: Feeds, read: list[Any]) -> None:
    """GET /api/v1/stations...: what the feeds hold, read-only."""

    def station(name: str) -> StationState:
        state = feeds.states.get(name)
        if state is None:
            known = ", ".join(feeds.states) or "none configured"
            raise HTTPException(404, f"no station {name!r} (stations: {known})")
        return state

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
