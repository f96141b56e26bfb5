"""Request bodies that carry images: a raw image body, or files of a multipart form, bounded while they arrive.

Why one module: the inspect endpoint and the project upload take images the same way, with the same limits (413
before more than the limit is buffered, 415 for another content type, 400 for an unreadable form).
"""
from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass

from fastapi import HTTPException, Request
from starlette.datastructures import UploadFile
from starlette.formparsers import MultiPartException, MultiPartParser

RAW_TYPES = ("image/png", "image/jpeg", "image/bmp", "image/tiff", "application/octet-stream")
MULTIPART = "multipart/form-data"
MAX_FILES = 200  # files in one project upload


@dataclass(frozen=True)
class Upload:
    """The request's image bytes and, for a multipart upload, the file name it came with."""

    data: bytes
    name: str | None = None


async def limited(request: Request, limit: int, why: str = "max_upload_mb of the UI config"
                   ) -> AsyncIterator[bytes]:
    """The request body, refused with 413 as soon as it passes `limit` bytes (declared or actually sent)."""
    declared = request.headers.get("content-length", "")
    too_big = HTTPException(413, f"request body over {limit / 2**20:g} MB ({why})")
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
        return Upload(b"".join([chunk async for chunk in limited(request, limit)]))
    if kind != MULTIPART:
        raise HTTPException(415, f"content type {kind or '(none)'!r} not accepted: send the image bytes as "
                                 f"{', '.join(RAW_TYPES)}, or a {MULTIPART} form with a field 'file'")
    try:
        form = await MultiPartParser(request.headers, limited(request, limit), max_files=1, max_fields=8).parse()
    except MultiPartException as exc:
        raise HTTPException(400, f"multipart form not readable: {exc.message}") from None
    try:
        file = form.get("file")
        if not isinstance(file, UploadFile):
            raise HTTPException(400, "the multipart form needs the image in a file field named 'file'")
        return Upload(await file.read(), file.filename or None)
    finally:
        await form.close()


async def read_uploads(request: Request, limit: int) -> list[Upload]:
    """Every file of a multipart form (field `files`, repeated), the whole body bounded by `limit`."""
    kind = request.headers.get("content-type", "").split(";", 1)[0].strip().lower()
    if kind != MULTIPART:
        raise HTTPException(415, f"content type {kind or '(none)'!r} not accepted: send a {MULTIPART} form with "
                                 "the images in fields named 'files'")
    try:
        form = await MultiPartParser(request.headers, limited(request, limit), max_files=MAX_FILES,
                                     max_fields=8).parse()
    except MultiPartException as exc:
        raise HTTPException(400, f"multipart form not readable: {exc.message}") from None
    try:
        files = [f for f in form.getlist("files") if isinstance(f, UploadFile)]
        if not files:
            raise HTTPException(400, "the multipart form has no file in a field named 'files'")
        return [Upload(await f.read(), f.filename or None) for f in files]
    finally:
        await form.close()
