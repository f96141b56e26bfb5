"""/api/v1/projects and /api/v1/jobs: the Project & data, Training and Models pages' data and actions.

Why through linesight.project: the pages read and change a project exactly as `linesight project ...` does (the
same checks, the same history entries), and a station running the project follows an activation by itself (its
watcher), so the UI never talks to a station to change its model. Training runs in a child process (ui.jobs).
"""
from __future__ import annotations

import logging
import tempfile
from pathlib import Path
from typing import Any, Literal

from fastapi import FastAPI, HTTPException, Query, Request
from fastapi.responses import FileResponse, StreamingResponse
from pydantic import ConfigDict, Field, ValidationError
from starlette.concurrency import run_in_threadpool

from linesight.config.base import Strict
from linesight.config.manifest import CalibrationTarget, Rate
from linesight.config.project import GOOD, ProjectMetadata, TrainConfig, VersionInfo
from linesight.config.ui import ProjectLinkConfig
from linesight.daemon.sinks.archive import stored
from linesight.errors import LinesightError, validation_problems
from linesight.project.workspace import REPORT_DIR, Project, version_diff
from linesight.ui.auth import Access
from linesight.ui.events import Event
from linesight.ui.jobs import Busy, Job, JobKind, JobRunner
from linesight.ui.review import parse_id
from linesight.ui.uploads import MULTIPART, Upload, read_uploads

log = logging.getLogger(__name__)

REPORT_FILES = {".html": "text/html", ".png": "image/png", ".json": "application/json", ".svg": "image/svg+xml"}


class ProjectSummary(Strict):
    """One project in the list: what it holds and which version stations run."""

    name: str
    dir: str
    title: str = Field(description="The project's own name (metadata.json)")
    description: str
    active: int | None
    versions: int
    images: dict[str, int] = Field(description="Images by label (good, or a defect type)")
    feedback_pending: int = Field(description="Feedback records no version learned yet")
    problem: str | None = Field(None, description="Why the folder cannot be read as a project (the rest is empty)")


class ProjectDetail(ProjectSummary):
    metadata: ProjectMetadata
    train_config: TrainConfig


class VersionRow(Strict):
    info: VersionInfo
    active: bool
    report: bool = Field(description="An evaluation report exists (GET .../versions/N/report/report.html)")


class DiffRow(Strict):
    field: str
    a: Any
    b: Any


class JobRequest(Strict):
    model_config = ConfigDict(strict=True)  # as the station commands: "2" is not 2, unknown keys are refused

    kind: JobKind = Field(description="fit: train the next version; learn: the next version from pending feedback; "
                          "tune: the next version with `version`'s model calibrated to `target`")
    config: dict[str, Any] | None = Field(None, description="fit only: a train config (as train_config.json) to use "
                                          "instead of the project's; recorded in the version")
    version: int | None = Field(None, ge=1, description="tune only: the version whose model is tuned")
    target: CalibrationTarget | None = Field(None, description="tune only: the calibration targets")


class TuneFlip(Strict):
    """A held-out labeled image whose verdict the previewed threshold changes."""

    file: str
    label: int = Field(description="0 good, 1 defective")
    defect_type: str | None
    score: float
    now: Literal["OK", "NG"] = Field(description="At the version's threshold")
    then: Literal["OK", "NG"] = Field(description="At the previewed threshold")


class TunePreview(Strict):
    """What a threshold (given, or chosen by targets with the one calibration rule) does on the version's labeled
    images, from the scores of its evaluation: no image is scored again."""

    version: int
    current_threshold: float
    threshold: float
    policy: str = Field(description="What chose it: threshold (given), max_false_reject or max_escape")
    false_reject: Rate
    escape: Rate
    refusal: str | None = Field(description="Why `project tune` would refuse these targets (none: it would write)")
    flips: list[TuneFlip] = Field(description="Images whose verdict changes (at most 500, highest score first)")
    evaluation: str = Field(description="The evaluation the scores come from")


class AddResult(Strict):
    added: int
    duplicates: int = Field(description="Files whose bytes the project already holds (skipped)")
    unreadable: list[str] = Field(description="Why each unreadable file was left out")
    project: ProjectSummary


class Capture(Strict):
    """An archived frame of a station into the project (a sample captured on the line)."""

    model_config = ConfigDict(strict=True)

    station: str = Field(max_length=64)
    record: str = Field(max_length=200, description="The archive record's id (GET /api/v1/stations/{name}/archive)")
    label: str = Field(GOOD, max_length=64, description="good, or the defect type it shows")


class Activation(Strict):
    model_config = ConfigDict(strict=True)

    version: int = Field(ge=1)


def _summary(name: str, p: Project) -> dict[str, Any]:
    from linesight.project.feedback import pending

    meta = p.metadata()
    counts: dict[str, int] = {}
    for e in p.data_index().images:
        counts[e.label] = counts.get(e.label, 0) + 1
    return {"name": name, "dir": str(p.root), "title": meta.name, "description": meta.description,
            "active": meta.active, "versions": len(p.version_numbers()), "images": counts,
            "feedback_pending": len(pending(p))}


class _Projects:
    """The configured projects by name; 404 for another name, 409 for a folder that is no (longer a) project."""

    def __init__(self, projects: list[ProjectLinkConfig]) -> None:
        self.dirs = {p.name: p.dir for p in projects}

    def opened(self, name: str) -> Project:
        if name not in self.dirs:
            raise HTTPException(404, f"no project {name!r} (projects: {', '.join(self.dirs) or 'none configured'})")
        try:
            return Project.open(self.dirs[name])
        except LinesightError as exc:
            raise HTTPException(409, str(exc)) from None

    @staticmethod
    def version_of(p: Project, n: int) -> VersionInfo:
        try:
            return p.version(n)
        except LinesightError as exc:
            raise HTTPException(404, str(exc)) from None


def _listed(name: str, folder: Path) -> ProjectSummary:
    """A project's summary for the list; one that cannot be read is listed with why (it hides no other)."""
    try:
        return ProjectSummary.model_validate(_summary(name, Project.open(folder)))
    except LinesightError as exc:
        return ProjectSummary(name=name, dir=str(folder), title=name, description="", active=None, versions=0,
                              images={}, feedback_pending=0, problem=str(exc))


def project_routes(app: FastAPI, projects: list[ProjectLinkConfig], access: Access, jobs: JobRunner,
                   max_upload: int, archives: dict[str, Path | None]) -> None:
    """Every /api/v1/projects and /api/v1/jobs route; reads need `access.read`, changes a header token.
    `archives`: each station's archive folder (samples captured from a station come from there)."""
    known = _Projects(projects)
    _read_routes(app, known, access)
    _write_routes(app, known, access, max_upload, archives)
    _job_routes(app, known, access, jobs)


def _read_routes(app: FastAPI, known: _Projects, access: Access) -> None:
    @app.get("/api/v1/projects", summary="Every project: images, versions, the active one, pending feedback")
    def all_projects(request: Request) -> list[ProjectSummary]:
        access.read(request)
        return [_listed(n, folder) for n, folder in known.dirs.items()]

    @app.get("/api/v1/projects/{name}", summary="One project: metadata with history, train config, counts")
    def one_project(name: str, request: Request) -> ProjectDetail:
        access.read(request)
        p = known.opened(name)
        return ProjectDetail.model_validate({**_summary(name, p), "metadata": p.metadata(),
                                             "train_config": p.train_config()})

    @app.get("/api/v1/projects/{name}/versions", summary="Versions, newest first, with metrics and the active one")
    def versions(name: str, request: Request) -> list[VersionRow]:
        access.read(request)
        p = known.opened(name)
        active = p.metadata().active
        return [VersionRow(info=v, active=v.version == active,
                           report=(p.version_dir(v.version) / REPORT_DIR / "report.html").is_file())
                for v in reversed(p.versions())]

    @app.get("/api/v1/projects/{name}/diff", summary="What differs between two versions")
    def diff(name: str, request: Request, a: int = Query(ge=1), b: int = Query(ge=1)) -> list[DiffRow]:
        access.read(request)
        p = known.opened(name)
        known.version_of(p, a), known.version_of(p, b)
        return [DiffRow(field=k, a=x, b=y) for k, x, y in version_diff(p, a, b)]

    @app.get("/api/v1/projects/{name}/versions/{n}/report/{file:path}", response_class=FileResponse,
             summary="A version's evaluation report (report.html and its pictures)")
    def report(name: str, n: int, file: str, request: Request) -> FileResponse:
        access.read(request)
        p = known.opened(name)
        known.version_of(p, n)
        folder = (p.version_dir(n) / REPORT_DIR).resolve()
        try:  # a name no file can have (a NUL, longer than the system allows) names none of the report's either
            path = (folder / file).resolve()
            found = path.is_relative_to(folder) and path.suffix in REPORT_FILES and path.is_file()
        except (OSError, ValueError):
            found = False
        if not found:
            raise HTTPException(404, f"v{n} has no report file {file[:100]!r}")
        return FileResponse(path, media_type=REPORT_FILES[path.suffix])

    @app.get("/api/v1/projects/{name}/versions/{n}/tune", summary="Preview a threshold: rates and the images that "
             "flip, from the version's evaluation scores")
    def tune_preview(name: str, n: int, request: Request,
                     threshold: float | None = Query(None, allow_inf_nan=False,
                                                     description="Preview this image threshold"),
                     max_false_reject: float | None = Query(None, ge=0, lt=1),
                     max_escape: float | None = Query(None, ge=0, lt=1)) -> TunePreview:
        access.read(request)
        p = known.opened(name)
        info = known.version_of(p, n)
        target = None
        if threshold is None:
            base = info.train_config.calibration.model_dump()
            given = {k: v for k, v in (("max_false_reject", max_false_reject), ("max_escape", max_escape))
                     if v is not None}
            target = CalibrationTarget.model_validate(base | given)
        elif max_false_reject is not None or max_escape is not None:
            raise HTTPException(400, "give a threshold or targets (max_false_reject, max_escape), not both")
        return preview(p, info, threshold, target)

    @app.get("/api/v1/projects/{name}/images/{file}", response_class=FileResponse,
             summary="One of the project's images, by its stored name (<sha256>.<ext>, as previews list them)")
    def image(name: str, file: str, request: Request) -> FileResponse:
        access.read(request)
        p = known.opened(name)
        entry = next((e for e in p.data_index().images if Path(e.file).name == file), None)
        if entry is None:  # only names the index holds: nothing else under the project can be reached
            raise HTTPException(404, f"project {name!r} has no image {file[:100]!r}")
        return FileResponse(p.data_dir / entry.file, headers={"Cache-Control": "private, max-age=86400"})

    @app.get("/api/v1/projects/{name}/train-config", summary="The project's train config and its JSON Schema")
    def train_config(name: str, request: Request) -> dict[str, Any]:
        access.read(request)
        return {"config": known.opened(name).train_config().model_dump(mode="json", by_alias=True),
                "schema": TrainConfig.model_json_schema()}


def _write_routes(app: FastAPI, known: _Projects, access: Access, max_upload: int,
                  archives: dict[str, Path | None]) -> None:
    @app.post("/api/v1/projects/{name}/activate", summary="Activate a version (stations running it follow)")
    def activate(name: str, body: Activation, request: Request) -> ProjectSummary:
        writer = access.write(request)
        p = known.opened(name)
        known.version_of(p, body.version)
        try:
            p.activate(body.version)
        except LinesightError as exc:
            raise HTTPException(409, str(exc)) from None
        log.info("ui: project activated", extra={"project": name, "version": body.version, "by": writer.name})
        return ProjectSummary.model_validate(_summary(name, p))

    @app.post("/api/v1/projects/{name}/rollback", summary="Activate the version active before the current one")
    def rollback(name: str, request: Request) -> ProjectSummary:
        writer = access.write(request)
        p = known.opened(name)
        try:
            back = p.rollback()
        except LinesightError as exc:
            raise HTTPException(409, str(exc)) from None
        log.info("ui: project rolled back", extra={"project": name, "version": back, "by": writer.name})
        return ProjectSummary.model_validate(_summary(name, p))

    @app.post("/api/v1/projects/{name}/images", summary="Add uploaded images with a label (content-addressed)",
              description="A multipart form with the images in fields named `files`; `label`: good or a defect "
                          "type. The same bytes already in the project are skipped.",
              openapi_extra={"requestBody": {"required": True, "content": {MULTIPART: {"schema": {
                  "type": "object", "required": ["files"], "properties": {
                      "files": {"type": "array", "items": {"type": "string", "format": "binary"}}}}}}}})
    async def add(name: str, request: Request, label: str = Query(GOOD, max_length=64)) -> AddResult:
        access.write(request)
        p = known.opened(name)
        files = await read_uploads(request, max_upload)
        return await run_in_threadpool(_add_files, name, p, files, label)


    @app.post("/api/v1/projects/{name}/images/from-archive", summary="Add a station's archived frame with a label")
    def capture(name: str, body: Capture, request: Request) -> AddResult:
        access.write(request)
        p = known.opened(name)
        root = archives.get(body.station)
        if root is None:
            raise HTTPException(404, f"station {body.station!r} has no archive_dir in the UI config")
        rec = stored(root, *parse_id(body.record))
        frame = rec.picture(heatmap=False) if rec is not None and rec.complete else None
        if frame is None or not frame.resolve().is_relative_to(Path(root).resolve()):
            raise HTTPException(404, f"station {body.station!r} has no archived frame {body.record[:100]!r}")
        return _add_files(name, p, [Upload(frame.read_bytes(), f"{body.station}_{body.record}{frame.suffix}")],
                          body.label)


def _job_routes(app: FastAPI, known: _Projects, access: Access, jobs: JobRunner) -> None:
    @app.post("/api/v1/projects/{name}/jobs", status_code=202, summary="Start a fit or learn job")
    def start(name: str, body: JobRequest, request: Request) -> Job:
        writer = access.write(request)
        p = known.opened(name)
        config, args = None, ()
        if body.config is not None:
            if body.kind != "fit":
                raise HTTPException(400, "config is for fit jobs only")
            try:
                config = TrainConfig.model_validate(body.config)
            except ValidationError as exc:
                raise HTTPException(400, f"config: {validation_problems(exc, 'config')}") from None
        if (body.kind == "tune") != (body.version is not None and body.target is not None):
            raise HTTPException(400, "version and target are for tune jobs, and a tune job needs both")
        if body.kind == "tune":
            known.version_of(p, body.version)
            t = body.target
            args = (f"v{body.version}", "--max-false-reject", repr(t.max_false_reject), "--max-escape",
                    "none" if t.max_escape is None else repr(t.max_escape), "--max-false-pixel-area",
                    repr(t.max_false_pixel_area))
        try:
            return jobs.start(name, p.root, body.kind, writer.name, args, config)
        except Busy as exc:
            raise HTTPException(409, str(exc)) from None

    @app.get("/api/v1/jobs", summary="Jobs, newest first (the last 20)")
    def all_jobs(request: Request) -> list[Job]:
        access.read(request)
        return jobs.jobs()

    @app.get("/api/v1/jobs/events", response_class=StreamingResponse,
             responses={200: {"content": {"text/event-stream": {}}, "description": "Server-Sent Events"}},
             summary="Live job events: a `job` event with the whole job on every change")
    def job_events(request: Request) -> StreamingResponse:
        access.read(request)
        return StreamingResponse(jobs.events.stream(lambda: [Event("job", j.model_dump(mode="json"))
                                                             for j in reversed(jobs.jobs())]),
                                 media_type="text/event-stream", headers={"Cache-Control": "no-cache"})

    @app.get("/api/v1/jobs/{job_id}", summary="One job: state, progress with ETA, loss, log, result")
    def one_job(job_id: str, request: Request) -> Job:
        access.read(request)
        job = jobs.get(job_id)
        if job is None:
            raise HTTPException(404, f"no job {job_id[:40]!r} (the last 20 are kept)")
        return job

    @app.post("/api/v1/jobs/{job_id}/cancel", summary="Cancel a running job (its half-built version is dropped)")
    def cancel(job_id: str, request: Request) -> Job:
        access.write(request)
        job = jobs.cancel(job_id)
        if job is None:
            raise HTTPException(404, f"no job {job_id[:40]!r}")
        return job


def _scores(p: Project, n: int) -> tuple[list[dict[str, Any]], str]:
    """The per-image scores of vN's newest evaluation (its fit's report, or a later `project evaluate`)."""
    import json

    folder = p.version_dir(n)
    found = sorted(folder.glob("evaluations/*/metrics.json"), reverse=True) + [folder / REPORT_DIR / "metrics.json"]
    for path in found:
        if path.is_file():
            scores = json.loads(path.read_text()).get("scores")
            if scores:
                return scores, str(path.relative_to(p.root))
    raise HTTPException(404, f"v{n} has no evaluation with per-image scores (no labeled defects at its fit, or "
                             f"evaluated before scores were kept): run `linesight project evaluate v{n}`")


def preview(p: Project, info: VersionInfo, threshold: float | None, target: CalibrationTarget | None) -> TunePreview:
    """A threshold on vN's evaluation scores: given, or chosen from `target` by the calibration rule itself."""
    import numpy as np

    from linesight.trainer.calibration import choose_image_threshold, rates_at

    scores, where = _scores(p, info.version)
    s = np.array([r["score"] for r in scores], np.float64)
    y = np.array([r["label"] for r in scores])
    if threshold is not None:
        fr, esc = rates_at(s[y == 0], s[y == 1], threshold)
        policy, refusal = "threshold", None
    else:
        choice = choose_image_threshold(s, y, target)
        threshold, policy, fr, esc, refusal = choice.threshold, choice.policy, choice.false_reject, choice.escape, \
            choice.refusal
    now_t = info.image_threshold
    flips = [TuneFlip(file=r["file"], label=r["label"], defect_type=r.get("defect_type"), score=r["score"],
                      now="NG" if r["score"] >= now_t else "OK", then="NG" if r["score"] >= threshold else "OK")
             for r in sorted(scores, key=lambda r: -r["score"]) if (r["score"] >= now_t) != (r["score"] >= threshold)]
    return TunePreview(version=info.version, current_threshold=now_t, threshold=threshold, policy=policy,
                       false_reject=fr, escape=esc, refusal=refusal, flips=flips[:500], evaluation=where)


def _add_files(name: str, p: Project, files: list[Upload], label: str) -> AddResult:
    """Uploaded files into the project through `add_images` (the one way images enter a project); a file's name is
    kept for people (the index's `name`), never used as a path."""
    from linesight.project.data import add_images

    with tempfile.TemporaryDirectory(prefix="linesight-upload-") as tmp:
        shown: dict[str, str] = {}  # temporary path -> the name it came with (a folder each: names may repeat)
        for i, f in enumerate(files):
            safe = "".join(c if c.isalnum() or c in "._-" else "_" for c in Path(f.name or "image").name)[:100]
            path = Path(tmp) / str(i) / (safe.lstrip(".") or "image")
            path.parent.mkdir()
            path.write_bytes(f.data)
            shown[str(path)] = path.name
        try:
            rep = add_images(p, [Path(k) for k in shown], label)
        except LinesightError as exc:
            raise HTTPException(400, str(exc)) from None
        unreadable = []
        for u in rep.unreadable:  # "path: why", the path of our temporary copy: say the uploaded name instead
            where, _, why = u.partition(": ")
            name_ = shown.get(where, Path(where).name)
            unreadable.append(f"{name_}: {why.replace(where, name_)}")
        return AddResult(added=rep.added, duplicates=rep.duplicates, unreadable=unreadable,
                         project=ProjectSummary.model_validate(_summary(name, p)))

