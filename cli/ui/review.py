"""The Review page's data: a station's frame archive (daemon.sinks.archive's layout, found through its own
`stored_newest_first` / `stored`) newest first, filtered, paged; each record's frame and heatmap.

Why bounded: an archive holds hundreds of thousands of records and a filter may match none of them, so one request
reads at most READ_MAX sidecars (and looks at most at LOOK_MAX names); when it stops early it says so and hands out
the cursor to go on from (`next`). Why record ids are names of the layout only: an id is `<YYYY-MM-DD>_<record>`
and both parts must match the archive's own patterns before a path is made, so no id can name a file elsewhere.
"""
from __future__ import annotations

import json
import logging
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any, Literal

from fastapi import FastAPI, HTTPException, Query
from fastapi.responses import FileResponse
from pydantic import Field

from linesight.config.base import Strict
from linesight.config.ui import StationFeedConfig
from linesight.daemon.sinks.archive import Stored, stored, stored_newest_first

log = logging.getLogger(__name__)

READ_MAX = 2000  # sidecars read per request at most
LOOK_MAX = 100_000  # records looked at (by name) per request at most
PAGE_MAX = 200
SIDECAR_MAX = 1 << 20  # a verdict is a few KB; anything bigger is not one


class ArchiveRecord(Strict):
    """One archived verdict, as the gallery shows it (the full verdict is its sidecar)."""

    id: str = Field(description="<YYYY-MM-DD>_<record name>: for .../archive/{id}/image and /heatmap")
    seq: int
    run: int | None
    part_id: str | None = Field(description="As the verdict gave it (the file name has a sanitised form)")
    host_ts: str | None
    verdict: Literal["OK", "NG"]
    fail_safe: bool
    reason: str | None
    score: float | None
    threshold: float | None
    grade: str | None
    defect_types: list[str] = Field(description="Types of the verdict's defects, worst first")
    model: dict[str, Any] | None = Field(description="id, version, hash of the model that decided")
    image: bool = Field(description="The record has its frame")
    heatmap: bool = Field(description="The record has a heatmap")


class ArchivePage(Strict):
    records: list[ArchiveRecord] = Field(description="Newest first")
    next: str | None = Field(description="More may follow: pass it as `before` (null: the archive ends here)")
    looked_at: int = Field(description="Records this request looked at")
    read: int = Field(description="Sidecars this request read")
    stopped_early: bool = Field(description=f"The page is not full because the request's work limit ({READ_MAX} "
                                            f"sidecars, {LOOK_MAX} records) was reached; ask again from `next`")


class _Filter(Strict):
    verdict: Literal["OK", "NG"] | None
    type: str | None
    grade: str | None
    min_score: float | None
    max_score: float | None
    model_version: int | None
    since: datetime | None
    until: datetime | None

    def keeps(self, f: dict[str, Any]) -> bool:
        """`f`: a sidecar's facts (`_facts`), so a hand-edited sidecar of odd types is left out, never an error."""
        score, when = f["score"], _time(f["host_ts"])
        return ((self.type is None or self.type in f["defect_types"])
                and (self.grade is None or f["grade"] == self.grade)
                and (self.min_score is None or (score is not None and score >= self.min_score))
                and (self.max_score is None or (score is not None and score <= self.max_score))
                and (self.model_version is None or (f["model"] or {}).get("version") == self.model_version)
                and (self.since is None or (when is not None and when >= self.since))
                and (self.until is None or (when is not None and when < self.until)))


def _utc(t: datetime | None) -> datetime | None:
    """`t` in UTC (without a zone it is UTC); OverflowError when that falls outside years 1-9999."""
    return None if t is None else t.replace(tzinfo=UTC) if t.tzinfo is None else t.astimezone(UTC)


def _query_time(name: str, t: datetime | None) -> datetime | None:
    try:
        return _utc(t)
    except OverflowError:  # e.g. 0001-01-01T00:00:00+01:00: a time before year 1 in UTC
        raise HTTPException(400, f"{name}={t.isoformat()}: outside the years 1-9999 in UTC") from None


def _time(host_ts: str | None) -> datetime | None:
    try:
        return _utc(datetime.fromisoformat(host_ts.replace("Z", "+00:00"))) if host_ts is not None else None
    except (ValueError, OverflowError):  # a hand-edited sidecar's time: its record is left out of time filters
        return None


def record_id(rec: Stored) -> str:
    return f"{rec.day}_{rec.name}"


def _sidecar(rec: Stored) -> dict[str, Any] | None:
    """The record's verdict; None when it is gone (pruned meanwhile) or not a verdict."""
    try:
        with open(rec.sidecar, "rb") as fh:
            raw = fh.read(SIDECAR_MAX + 1)
        v = json.loads(raw) if len(raw) <= SIDECAR_MAX else None
    except (OSError, ValueError):
        return None
    return v if isinstance(v, dict) else None


def _facts(v: dict[str, Any]) -> dict[str, Any]:
    """What the gallery and the filters use of a verdict, each of its JSON type or None."""
    def typed(key: str, kind: type | tuple[type, ...]) -> Any:
        value = v.get(key)
        return value if isinstance(value, kind) and not isinstance(value, bool) else None

    defects = v.get("defects") if isinstance(v.get("defects"), list) else []
    return {"run": typed("run", int), "part_id": typed("part_id", str), "host_ts": typed("host_ts", str),
            "fail_safe": v.get("fail_safe") is True, "reason": typed("reason", str),
            "score": typed("score", (int, float)), "threshold": typed("threshold", (int, float)),
            "grade": typed("grade", str), "model": typed("model", dict),
            "defect_types": [d["type"] for d in defects if isinstance(d, dict) and isinstance(d.get("type"), str)]}


def page(root: Path, flt: _Filter, limit: int, before: tuple[str, str] | None) -> ArchivePage:
    """Up to `limit` records under `root` that pass `flt`, newest first, after `before`; bounded work."""
    out: list[ArchiveRecord] = []
    looked = read = 0
    last: Stored | None = None
    since_day = None if flt.since is None else flt.since.date().isoformat()  # zero-padded: years < 1000 too
    until_day = None if flt.until is None else flt.until.date().isoformat()
    for rec in stored_newest_first(root, before):
        if len(out) == limit or looked == LOOK_MAX or read == READ_MAX:
            return ArchivePage(records=out, next=record_id(last), looked_at=looked, read=read,
                               stopped_early=len(out) < limit)
        looked += 1
        last = rec
        if since_day is not None and rec.day < since_day:
            break  # every later record is older still
        if (until_day is not None and rec.day > until_day) or (flt.verdict is not None and rec.verdict != flt.verdict):
            continue
        v = _sidecar(rec)
        read += 1
        facts = None if v is None else _facts(v)
        if facts is not None and flt.keeps(facts):
            out.append(ArchiveRecord(id=record_id(rec), seq=rec.seq, verdict=rec.verdict, **facts,
                                     image=rec.picture(False) is not None, heatmap=rec.picture(True) is not None))
    return ArchivePage(records=out, next=None, looked_at=looked, read=read, stopped_early=False)


def parse_id(record: str) -> tuple[str, str]:
    day, _, name = record.partition("_")
    return day, name


def review_routes(app: FastAPI, stations: dict[str, StationFeedConfig], read: list[Any]) -> None:
    """GET /api/v1/stations/{name}/archive...: a station's archive, read-only."""

    def archive_of(name: str) -> Path:
        station = stations.get(name)
        if station is None:
            raise HTTPException(404, f"no station {name!r} (stations: {', '.join(stations) or 'none configured'})")
        if station.archive_dir is None:
            raise HTTPException(404, f"station {name!r} has no archive_dir in the UI config: set it to the station's "
                                     "outputs.archive.dir (a project station: <project>/detect_results)")
        if not station.archive_dir.is_dir():
            raise HTTPException(404, f"station {name!r}: archive folder {station.archive_dir} does not exist (yet): "
                                     "the station creates it with its first archived frame")
        return station.archive_dir

    def one(name: str, record: str) -> Stored:
        rec = stored(archive_of(name), *parse_id(record))
        if rec is None or not rec.complete:
            raise HTTPException(404, f"station {name!r} has no archive record {record[:100]!r} (ids: "
                                     "<YYYY-MM-DD>_<seq:012d>_<part>_<OK|NG>, from .../archive)")
        return rec

    @app.get("/api/v1/stations/{name}/archive", dependencies=read, summary="Archived verdicts, newest first",
             description=f"Filters combine (and). One request reads at most {READ_MAX} verdicts: when it stops "
                         "early, `stopped_early` is true and `next` goes on from there.")
    def archive(name: str, verdict: Literal["OK", "NG"] | None = None,
                type_: str | None = Query(None, alias="type", max_length=64, description="A defect type it showed"),
                grade: str | None = Query(None, max_length=64, description="The spec's grade of the part"),
                min_score: float | None = None, max_score: float | None = None,
                model_version: int | None = Query(None, description="Version of the model that decided"),
                since: Annotated[datetime | None, Query(description="host_ts at or after (ISO 8601; no zone: "
                                                                    "UTC)")] = None,
                until: Annotated[datetime | None, Query(description="host_ts before (ISO 8601; no zone: UTC)")] = None,
                limit: int = Query(50, ge=1, le=PAGE_MAX),
                before: str | None = Query(None, max_length=200, description="`next` of the previous page")
                ) -> ArchivePage:
        root = archive_of(name)
        after = None
        if before is not None:  # a record pruned since is still a place to go on from
            if stored(root, *parse_id(before)) is None:
                raise HTTPException(400, f"before={before[:100]!r} is not a record id (use `next` of a page)")
            after = parse_id(before)
        flt = _Filter(verdict=verdict, type=type_, grade=grade, min_score=min_score, max_score=max_score,
                      model_version=model_version, since=_query_time("since", since),
                      until=_query_time("until", until))
        return page(root, flt, limit, after)

    pictures = {200: {"content": {"image/png": {}, "image/jpeg": {}}, "description": "As archived"}}

    @app.get("/api/v1/stations/{name}/archive/{record}/image", dependencies=read, response_class=FileResponse,
             responses=pictures, summary="An archived record's frame (PNG or JPEG)")
    def image(name: str, record: str) -> FileResponse:
        return _picture(one(name, record), heatmap=False)

    @app.get("/api/v1/stations/{name}/archive/{record}/heatmap", dependencies=read, response_class=FileResponse,
             responses=pictures, summary="An archived record's coloured heatmap (PNG)")
    def heatmap(name: str, record: str) -> FileResponse:
        return _picture(one(name, record), heatmap=True)


def _picture(rec: Stored, heatmap: bool) -> FileResponse:
    path = rec.picture(heatmap)
    if path is not None and not path.resolve().is_relative_to(rec.folder.parent.resolve()):
        log.warning("archive record %s_%s: %s links out of the archive; not served", rec.day, rec.name, path.name)
        path = None
    if path is None:
        what = "heatmap" if heatmap else "frame"
        raise HTTPException(404, f"archive record {rec.day}_{rec.name} has no {what} (kept without pictures)")
    return FileResponse(path, media_type="image/jpeg" if path.suffix == ".jpg" else "image/png",
                        headers={"Cache-Control": "private, max-age=86400"})  # a record never changes
