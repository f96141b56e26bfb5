"""A project as one zip file and back: `project export` / `project import`, with every byte hash-checked.

A zip is untrusted input: every member is checked before anything is written (names, types, sizes, compression
ratio, the manifest), extraction goes to a temporary sibling folder that becomes the project only once every
hash matches and it opens as a project. Nothing outside that folder is ever written, nothing of the user's
overwritten. Torch-free: stdlib and pydantic.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
import stat
import tempfile
import zipfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path

from pydantic import ValidationError

import linesight
from linesight.config.project import ExportedFile, ExportManifest
from linesight.errors import DataError, LinesightError, validation_problems
from linesight.project.workspace import DETECT_RESULTS, LAYOUT, METADATA, Project, now

log = logging.getLogger(__name__)

MANIFEST = "linesight-project-export.json"
#: Default ceiling of an import's uncompressed size (the CLI's --max-size-gb): a zip bomb stops here.
MAX_IMPORT_BYTES = 16 * 1024**3
#: Deflate manages ~1030:1 on zeros; real project files (images, weights, JSON) stay far below this.
MAX_RATIO = 200
#: The ratio rule applies from this size on: a tiny file of repeated bytes is no bomb.
RATIO_MIN_BYTES = 1024**2
MAX_MEMBERS = 1_000_000
MAX_MANIFEST_BYTES = 256 * 1024**2
_CHUNK = 1024**2
_DRIVE = re.compile(r"^[A-Za-z]:")


@dataclass
class ExportReport:
    zip: Path
    files: int
    bytes: int  # uncompressed, the manifest left out
    zip_bytes: int
    results: bool  # detect_results/ included
    skipped: list[str] = field(default_factory=list)  # dot-named temporary entries left out


@dataclass
class ImportReport:
    project: Path
    name: str
    files: int
    bytes: int
    exported: str  # when the export was made
    linesight: str  # the version that made it


# ---------------------------------------------------------------------------------------------------- export
def _hash_file(path: Path) -> ExportedFile:
    h, size = hashlib.sha256(), 0
    with _open_nofollow(path) as fh:
        while chunk := fh.read(_CHUNK):
            h.update(chunk)
            size += len(chunk)
    return ExportedFile(sha256=h.hexdigest(), size=size)


def _open_nofollow(path: Path):
    """Read a file, never through a symlink swapped in after the walk looked at it."""
    return os.fdopen(os.open(path, os.O_RDONLY | os.O_NOFOLLOW), "rb")


def _project_files(root: Path, results: bool) -> tuple[list[str], list[str]]:
    """(files to export, dot-named entries skipped) as relative POSIX paths, sorted. A symlink or a special file
    is an error: following it could export something outside the project."""
    files: list[str] = []
    skipped: list[str] = []
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        here = Path(dirpath)
        rel_dir = here.relative_to(root)
        for name in sorted(dirnames):
            rel = (rel_dir / name).as_posix()
            if (here / name).is_symlink():
                raise DataError(f"project export: {root}: {rel} is a symlink; linesight does not follow links out "
                                "of a project (replace it with the folder itself)")
            if name.startswith(".") or (not results and rel == DETECT_RESULTS):
                dirnames.remove(name)
                if name.startswith("."):
                    skipped.append(rel + "/")
        for name in filenames:
            rel = (rel_dir / name).as_posix()
            if name.startswith("."):
                skipped.append(rel)
                continue
            mode = (here / name).lstat().st_mode
            if stat.S_ISLNK(mode):
                raise DataError(f"project export: {root}: {rel} is a symlink; linesight does not follow links out "
                                "of a project (replace it with the file itself)")
            if not stat.S_ISREG(mode):
                raise DataError(f"project export: {root}: {rel} is not a regular file (a pipe, socket or device)")
            files.append(rel)
    if MANIFEST in files:
        raise DataError(f"project export: {root}: {MANIFEST} is the name of the export's manifest; rename that file")
    return sorted(files), sorted(skipped)


def is_project_export(path: Path) -> bool:
    """A zip with our manifest in it: the only existing file `export` replaces without --force."""
    try:
        with zipfile.ZipFile(path) as zf:
            return MANIFEST in zf.namelist()
    except (zipfile.BadZipFile, OSError, ValueError, EOFError):
        return False


def _check_out(root: Path, out: Path, force: bool) -> None:
    if not out.parent.is_dir():
        raise DataError(f"project export: folder {out.parent} does not exist; create it first")
    if out.parent.resolve().joinpath(out.name).is_relative_to(root.resolve()):
        raise DataError(f"project export: {out} is inside the project {root}; write the zip somewhere else")
    if out.is_symlink() or out.exists():
        if out.is_dir():
            raise DataError(f"project export: {out} is a folder; name a .zip file")
        if not force and not is_project_export(out):
            raise DataError(f"project export: {out} exists and is not a linesight project export; choose another "
                            "name or pass --force to replace it (nothing was changed)")
        log.info("project export: replacing %s", out)


def export_project(project: Project, out_zip: str | Path, *, results: bool = True,
                   force: bool = False) -> ExportReport:
    """Every regular file of the project in one zip, its manifest first; written beside `out_zip` and renamed
    at the end, so a reader never sees half an export."""
    project = Project.open(project.root)  # a folder that is not a project is refused before any work
    root, out = project.root, Path(out_zip)
    _check_out(root, out, force)
    files, skipped = _project_files(root, results)
    hashed = {rel: _hash_file(root / rel) for rel in files}
    manifest = ExportManifest(project=project.metadata().name, created=now(), linesight=linesight.__version__,
                              files=hashed)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{out.name}.", suffix=".partial", dir=out.parent)
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as fh:
            with zipfile.ZipFile(fh, "w", zipfile.ZIP_DEFLATED, allowZip64=True, strict_timestamps=False) as zf:
                info = zipfile.ZipInfo(MANIFEST, date_time=_zip_time())
                info.external_attr = (stat.S_IFREG | 0o644) << 16
                text = json.dumps(manifest.model_dump(mode="json", by_alias=True), indent=2) + "\n"
                zf.writestr(info, text, compress_type=zipfile.ZIP_DEFLATED)
                for rel in files:
                    _write_member(zf, root, rel, hashed[rel])
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, out)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    report = ExportReport(zip=out, files=len(files), bytes=sum(f.size for f in hashed.values()),
                          zip_bytes=out.stat().st_size, results=results, skipped=skipped)
    log.info("project export: %s -> %s (%d files, %d bytes)", root, out, report.files, report.zip_bytes)
    return report


def _zip_time() -> tuple[int, int, int, int, int, int]:
    t = now()  # UTC ISO-8601
    return (int(t[0:4]), int(t[5:7]), int(t[8:10]), int(t[11:13]), int(t[14:16]), int(t[17:19]))


def _write_member(zf: zipfile.ZipFile, root: Path, rel: str, expect: ExportedFile) -> None:
    """Stream one file in, hashing what is written: a file that changed since it was hashed fails the export
    instead of shipping a zip whose manifest lies."""
    path = root / rel
    info = zipfile.ZipInfo.from_file(path, rel, strict_timestamps=False)
    info.compress_type = zipfile.ZIP_DEFLATED
    info.external_attr = (stat.S_IFREG | 0o644) << 16
    h, size = hashlib.sha256(), 0
    with _open_nofollow(path) as src, zf.open(info, "w") as dst:
        while chunk := src.read(_CHUNK):
            h.update(chunk)
            size += len(chunk)
            dst.write(chunk)
    if h.hexdigest() != expect.sha256 or size != expect.size:
        raise DataError(f"project export: {root}: {rel} changed while it was exported (is a fit or add running?); "
                        "run the export again")


# ---------------------------------------------------------------------------------------------------- import
def _name_problem(name: str) -> str | None:
    """Why a member name could write outside the project (or is not one we write), or None."""
    if not name:
        return "an empty name"
    if any(ord(c) < 32 for c in name):
        return "a name with control characters"
    if "\\" in name:
        return "a backslash in its name (not a relative POSIX path)"
    if name.startswith("/") or _DRIVE.match(name):
        return "an absolute path"
    parts = name.split("/")
    if ".." in parts:
        return "'..' in its path (path traversal)"
    if name.endswith("/"):
        return "a folder entry (exports hold files only)"
    if any(p in ("", ".") for p in parts):
        return "an empty or '.' path component (not a normalised relative path)"
    return None


def _check_members(zf: zipfile.ZipFile, max_bytes: int) -> tuple[list[zipfile.ZipInfo], str | None]:
    """Every member checked for name, type, size and ratio before anything is extracted:
    (the members, the first problem as "member: why")."""
    infos = zf.infolist()
    if len(infos) > MAX_MEMBERS:
        return infos, f"{len(infos)} members, more than {MAX_MEMBERS}"
    seen: set[str] = set()
    total = 0
    for info in infos:
        name = info.filename
        why = _name_problem(name)
        if why is None and name in seen:
            why = "a duplicate name"
        mode = info.external_attr >> 16
        if why is None and stat.S_ISLNK(mode):
            why = "a symlink (refused: it could point outside the project)"
        elif why is None and stat.S_IFMT(mode) not in (0, stat.S_IFREG):
            why = "not a regular file"
        elif why is None and info.flag_bits & 0x1:
            why = "encrypted"
        elif why is None and info.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
            why = f"compression method {info.compress_type} (exports use deflate)"
        total += info.file_size
        if why is None and total > max_bytes:
            why = (f"the members expand to more than the limit of {_gib(max_bytes)} (a zip bomb? raise "
                   "--max-size-gb if the project is really this large)")
        elif why is None and info.file_size >= RATIO_MIN_BYTES \
                and info.file_size > MAX_RATIO * max(info.compress_size, 1):
            why = (f"compressed {info.file_size / max(info.compress_size, 1):.0f}:1, more than {MAX_RATIO}:1 "
                   "(a zip bomb?)")
        if why is not None:
            return infos, f"{name!r}: {why}"
        seen.add(name)
    folders = {"/".join(n.split("/")[:i]) for n in seen for i in range(1, n.count("/") + 1)}
    both = sorted(seen & folders)
    return infos, f"{both[0]!r}: both a file and a folder" if both else None


def _gib(n: int) -> str:
    return f"{n / 1024**3:.3g} GiB ({n} bytes)"


class _Refused(Exception):
    """A member refused: (member, why); turned into one DataError line by import_project."""

    def __init__(self, member: str, why: str) -> None:
        super().__init__(member, why)
        self.member, self.why = member, why


def _read_manifest(zf: zipfile.ZipFile, infos: dict[str, zipfile.ZipInfo]) -> ExportManifest:
    if MANIFEST not in infos:
        raise _Refused(MANIFEST, "missing: this is not a linesight project export")
    if infos[MANIFEST].file_size > MAX_MANIFEST_BYTES:
        raise _Refused(MANIFEST, f"larger than {MAX_MANIFEST_BYTES} bytes")
    with zf.open(MANIFEST) as fh:
        data = fh.read(MAX_MANIFEST_BYTES + 1)
    try:
        return ExportManifest.model_validate_json(data)
    except ValidationError as exc:
        raise _Refused(MANIFEST, validation_problems(exc, "manifest")) from None


def _check_against_manifest(manifest: ExportManifest, infos: dict[str, zipfile.ZipInfo]) -> None:
    if MANIFEST in manifest.files:
        raise _Refused(MANIFEST, "lists itself among the files")
    for name in infos:
        if name != MANIFEST and name not in manifest.files:
            raise _Refused(name, "not listed in the manifest (added after the export?)")
    for name, entry in manifest.files.items():
        if name not in infos:
            raise _Refused(name, "listed in the manifest but missing from the zip")
        if infos[name].file_size != entry.size:
            raise _Refused(name, f"{infos[name].file_size} bytes in the zip, {entry.size} in the manifest")


def _extract(zf: zipfile.ZipFile, info: zipfile.ZipInfo, entry: ExportedFile, into: Path) -> None:
    """Write one member under `into`, reading at most its declared size + 1 byte (a forged header gets no more
    through), and check its sha256 against the manifest."""
    target = into.joinpath(*info.filename.split("/"))
    if not target.resolve().is_relative_to(into.resolve()):  # belt and braces: names were checked already
        raise _Refused(info.filename, "resolves outside the project")
    target.parent.mkdir(parents=True, exist_ok=True)
    h, size = hashlib.sha256(), 0
    fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644)
    with os.fdopen(fd, "wb") as dst, zf.open(info) as src:
        while chunk := src.read(min(_CHUNK, entry.size + 1 - size)):
            size += len(chunk)
            if size > entry.size:
                raise _Refused(info.filename, f"expands beyond its declared {entry.size} bytes (forged header)")
            h.update(chunk)
            dst.write(chunk)
            if size == entry.size:
                break
    if size != entry.size:
        raise _Refused(info.filename, f"holds {size} bytes, the manifest says {entry.size} (truncated)")
    if h.hexdigest() != entry.sha256:
        raise _Refused(info.filename, "sha256 differs from the manifest (the file was changed or damaged)")


def _check_dest(dest: Path) -> None:
    if dest.is_symlink():
        raise DataError(f"project import: {dest} is a symlink; choose a new folder (nothing was changed)")
    if dest.exists() and not dest.is_dir():
        raise DataError(f"project import: {dest} is a file; choose a new folder (nothing was changed)")
    if dest.is_dir() and any(dest.iterdir()):
        what = "a linesight project" if (dest / METADATA).exists() else "files"
        raise DataError(f"project import: {dest} already holds {what}; choose a new or empty folder "
                        "(nothing was changed)")
    if not dest.parent.is_dir():
        raise DataError(f"project import: folder {dest.parent} does not exist; create it first")


def import_project(zip_path: str | Path, dest: str | Path, *, max_bytes: int = MAX_IMPORT_BYTES) -> ImportReport:
    """Unpack a `project export` zip into a new project folder `dest`: checked whole before extraction, hashed
    during it, opened as a project before it is renamed into place. Any failure leaves nothing behind."""
    src, dest = Path(zip_path), Path(dest)
    _check_dest(dest)
    if not src.is_file():
        raise DataError(f"project import: {src} does not exist or is not a file")
    try:
        zf = zipfile.ZipFile(src)
    except (zipfile.BadZipFile, OSError, ValueError, EOFError) as exc:
        raise DataError(f"project import: {src}: not a readable zip file ({_one_line(exc)}); nothing was "
                        "changed") from None
    tmp: Path | None = None
    try:
        with zf:
            infos_list, problem = _check_members(zf, max_bytes)
            if problem is not None:
                raise DataError(f"project import: {src}: {problem}; nothing was changed")
            infos = {i.filename: i for i in infos_list}
            manifest = _read_manifest(zf, infos)
            _check_against_manifest(manifest, infos)
            total = sum(e.size for e in manifest.files.values())
            free = shutil.disk_usage(dest.parent).free
            if total > free:
                raise DataError(f"project import: {src}: needs {_gib(total)}, {dest.parent} has {_gib(free)} "
                                "free; nothing was changed")
            tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.importing-", dir=dest.parent))
            for name, entry in manifest.files.items():
                try:
                    _extract(zf, infos[name], entry, tmp)
                except (zipfile.BadZipFile, zlib.error, EOFError) as exc:
                    raise _Refused(name, f"damaged ({_one_line(exc)})") from None
        name = _validate(tmp, src)
        for sub in LAYOUT:  # empty folders are not in a zip
            (tmp / sub).mkdir(parents=True, exist_ok=True)
        Project(tmp).record("import", f"from {src.name}: {len(manifest.files)} files, exported "
                                      f"{manifest.created} by linesight {manifest.linesight}")
        try:
            os.rename(tmp, dest)  # replaces only a missing or still empty folder
        except OSError as exc:
            raise DataError(f"project import: cannot create {dest} ({exc.strerror}); did something write there "
                            "meanwhile? Nothing was changed") from None
        tmp = None
    except _Refused as exc:
        raise DataError(f"project import: {src}: {exc.member!r}: {exc.why}; nothing was changed") from None
    except (zipfile.BadZipFile, zlib.error, EOFError, NotImplementedError) as exc:
        raise DataError(f"project import: {src}: damaged zip ({_one_line(exc)}); nothing was changed") from None
    except OSError as exc:
        raise DataError(f"project import: {src} -> {dest}: {exc.strerror or _one_line(exc)}; nothing was "
                        "changed") from None
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)  # ours: made by mkdtemp above
    log.info("project import: %s -> %s (%d files)", src, dest, len(manifest.files))
    return ImportReport(project=dest, name=name, files=len(manifest.files), bytes=total, exported=manifest.created,
                        linesight=manifest.linesight)


def _validate(tmp: Path, src: Path) -> str:
    """The unpacked folder opens as a project and its metadata, train config and data index validate."""
    try:
        project = Project.open(tmp)
        project.train_config()
        project.data_index()
        return project.metadata().name
    except LinesightError as exc:
        text = _one_line(exc).replace(f"{tmp}/", "").replace(str(tmp), "the project")
        raise DataError(f"project import: {src}: the project inside is not valid: {text}; nothing was "
                        "changed") from None


def _one_line(exc: BaseException) -> str:
    return "; ".join(line.strip() for line in str(exc).splitlines() if line.strip()) or type(exc).__name__
