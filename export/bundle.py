"""Versioned bundle: manifest.json + backbone.onnx + memory_bank.npy (+ golden/*.png), as a folder or a .zip.

No pickle: the bank is read with allow_pickle=False and every file is checked against its sha256.
"""
from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import shutil
import stat
import tempfile
import zipfile
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
from pydantic import ValidationError

from linesight.config.manifest import BUNDLE_SCHEMA, Manifest
from linesight.errors import BundleError, validation_problems

log = logging.getLogger(__name__)

ONNX_FILE = "backbone.onnx"
BANK_FILE = "memory_bank.npy"
ROI_FILE = "roi_mask.png"
MANIFEST_FILE = "manifest.json"
LOCATIONS_FILE = "memory_locations.npy"  # int32 (N, 3): training image index, patch y, patch x per bank row
TRAIN_IMAGES_FILE = "train_images.json"  # names of the training images, by index
MAX_BUNDLE_BYTES = 4 << 30  # refused unread above this: no line model is that large, /dev/zero is endless


@dataclass
class Bundle:
    manifest: Manifest
    onnx: bytes
    bank: np.ndarray
    golden: dict[str, bytes] = field(default_factory=dict)
    extras: dict[str, bytes] = field(default_factory=dict)  # other hashed files, e.g. roi_mask.png
    path: Path | None = None

    @property
    def label(self) -> str:
        return f"{self.manifest.model.id} v{self.manifest.model.version}"

    @property
    def digest(self) -> str:
        """sha256 of the manifest, which lists every file's sha256: the bundle's content identity."""
        return sha256(manifest_bytes(self.manifest))

    @property
    def identity(self) -> dict:
        """What verdicts, alarms and metrics carry: id, version and the first 16 hex digits of the digest."""
        return {"id": self.manifest.model.id, "version": self.manifest.model.version, "hash": self.digest[:16]}


def new_revision(manifest: Manifest, change: str) -> None:
    """Any change to a bundle (calibrate, roi, types) is a new version, so no two contents share one."""
    manifest.model.version += 1
    manifest.model.created_at = datetime.now(UTC).isoformat(timespec="seconds")
    log.info("bundle %s: %s -> version %d", manifest.model.id, change, manifest.model.version)


def json_default(obj):
    """json.dumps(default=...) for numpy values (bundle metadata and verdict messages alike)."""
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    raise TypeError(f"value of type {type(obj).__name__} is not JSON-serialisable")


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def bank_bytes(bank: np.ndarray, dtype: type = np.float32) -> bytes:
    buf = io.BytesIO()
    np.save(buf, np.ascontiguousarray(bank, dtype=dtype), allow_pickle=False)
    return buf.getvalue()


def check_target(path: str | Path, force: bool = False) -> None:
    """Refuse to replace anything at `path` but a linesight bundle: a folder that is not one is never
    deleted; a file that is not one is replaced only with `force`."""
    path = Path(path)
    if not path.exists() and not path.is_symlink():
        return
    if path.is_dir():
        if path.suffix == ".zip":
            raise BundleError(f"{path} is a folder, but a path ending in .zip is written as a zip file; choose "
                              "another output path (nothing was changed)")
        if (path / MANIFEST_FILE).is_file() or not any(path.iterdir()):
            return
        raise BundleError(f"{path} is a folder that is not a linesight bundle (no {MANIFEST_FILE}); linesight "
                          "never deletes folders it did not write: choose another output path (nothing was changed)")
    if not path.is_file():
        raise BundleError(f"{path} is not a regular file or folder; choose another output path")
    if path.suffix != ".zip":
        raise BundleError(f"{path} is a file; a bundle is written as a folder or a .zip: choose another output path")
    if force or _is_bundle_zip(path):
        return
    raise BundleError(f"{path} exists and is not a linesight bundle; pass --force to replace it (nothing was changed)")


def _is_bundle_zip(path: Path) -> bool:
    try:
        with zipfile.ZipFile(path) as zf:
            return MANIFEST_FILE in zf.namelist()
    except (zipfile.BadZipFile, OSError, ValueError, RuntimeError, NotImplementedError):
        return False


def write_bundle(path: str | Path, bundle: Bundle, force: bool = False) -> Path:
    """Write atomically (temp then rename) so a daemon watching the path never sees half a bundle. Only a
    bundle (or, with `force`, a non-bundle .zip file) is ever replaced (check_target)."""
    path = Path(path)
    check_target(path, force)
    files = {ONNX_FILE: bundle.onnx, BANK_FILE: bank_bytes(bundle.bank)}
    files.update({f"golden/{name}": data for name, data in bundle.golden.items()})
    files.update(bundle.extras)
    bundle.manifest.files = {name: sha256(data) for name, data in files.items()}
    files[MANIFEST_FILE] = manifest_bytes(bundle.manifest)
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".zip":
        fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".zip.tmp")
        with os.fdopen(fd, "wb") as fh, zipfile.ZipFile(fh, "w", zipfile.ZIP_DEFLATED) as zf:
            for name, data in files.items():
                zf.writestr(name, data)
        os.chmod(tmp, 0o644)  # mkstemp makes 0600: the daemon's service user must be able to read it
        os.replace(tmp, path)
    else:
        tmp_dir = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}."))
        os.chmod(tmp_dir, 0o755)  # mkdtemp makes 0700
        for name, data in files.items():
            (tmp_dir / name).parent.mkdir(parents=True, exist_ok=True)
            (tmp_dir / name).write_bytes(data)
        if path.exists():
            old = path.with_name(f".{path.name}.old")
            _rmtree(old)
            os.replace(path, old)
            os.replace(tmp_dir, path)
            _rmtree(old)
        else:
            os.replace(tmp_dir, path)
    bundle.path = path
    log.info("bundle written", extra={"bundle": str(path), "model": bundle.label})
    return path


def manifest_bytes(manifest: Manifest) -> bytes:
    return json.dumps(manifest.model_dump(mode="json", by_alias=True), indent=2).encode() + b"\n"


def _rmtree(p: Path) -> None:
    shutil.rmtree(p, ignore_errors=True)


def _read_files(path: Path, limit: int) -> dict[str, bytes]:
    """Every file of a bundle folder or .zip, read only from regular files and never more than `limit` bytes
    in all (a FIFO would block, /dev/zero or a zip bomb would fill memory)."""
    try:
        st = path.stat()
    except FileNotFoundError:
        raise BundleError(f"bundle {path} does not exist") from None
    except OSError as exc:
        raise BundleError(f"bundle {path} cannot be read: {exc.strerror}") from exc
    if stat.S_ISDIR(st.st_mode):
        entries = [p for p in path.rglob("*") if not p.is_dir()]
        odd = [p for p in entries if not stat.S_ISREG(p.lstat().st_mode)]
        if odd:
            raise BundleError(f"bundle {path}: {odd[0].relative_to(path)} is not a regular file")
        if sum(p.stat().st_size for p in entries) > limit:
            raise BundleError(f"bundle {path} is larger than {limit >> 20} MiB: refused unread")
        return {str(p.relative_to(path)): p.read_bytes() for p in entries}
    if not stat.S_ISREG(st.st_mode):
        raise BundleError(f"bundle {path} is not a regular file nor a folder: refused unread")
    if st.st_size > limit:
        raise BundleError(f"bundle {path} is larger than {limit >> 20} MiB: refused unread")
    try:
        with zipfile.ZipFile(path) as zf:
            infos = [i for i in zf.infolist() if not i.is_dir()]
            if sum(i.file_size for i in infos) > limit:
                raise BundleError(f"bundle {path} unpacks to more than {limit >> 20} MiB: refused")
            return {i.filename: zf.read(i) for i in infos}
    except BundleError:
        raise
    except Exception as exc:  # zipfile raises BadZipFile, zlib.error, NotImplementedError, EOFError, ...
        raise BundleError(f"bundle {path} is not a bundle folder nor a readable .zip "
                          f"({type(exc).__name__}: {exc})") from exc


def load_bundle(path: str | Path, max_bytes: int = MAX_BUNDLE_BYTES) -> Bundle:
    """Read and verify: schema, every hash, bank shape and dtype. Any failure -> BundleError, never another
    exception: a daemon's reload thread relies on that to keep the old model."""
    path = Path(path)
    try:
        return _load(path, max_bytes)
    except BundleError:
        raise
    except Exception as exc:  # a corruption no check above anticipated
        raise BundleError(f"bundle {path} cannot be loaded ({type(exc).__name__}: {exc})") from exc


def _load(path: Path, max_bytes: int) -> Bundle:
    files = _read_files(path, max_bytes)
    if MANIFEST_FILE not in files:
        raise BundleError(f"bundle {path} has no {MANIFEST_FILE}: not a linesight bundle or truncated")
    try:
        raw = json.loads(files[MANIFEST_FILE])
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise BundleError(f"bundle {path}: {MANIFEST_FILE} is not valid JSON ({exc})") from exc
    schema = raw.get("schema") if isinstance(raw, dict) else None
    if schema != BUNDLE_SCHEMA:
        raise BundleError(f"bundle {path} has schema {schema!r}; this linesight reads {BUNDLE_SCHEMA!r}. "
                          "Re-export the model with a matching linesight version.")
    try:
        manifest = Manifest.model_validate(raw)
    except ValidationError as exc:
        raise BundleError(f"bundle {path}: invalid manifest: {validation_problems(exc, 'manifest')}") from exc
    for name, digest in manifest.files.items():
        if name not in files:
            raise BundleError(f"bundle {path} is missing {name} (listed in the manifest)")
        if sha256(files[name]) != digest:
            raise BundleError(f"bundle {path}: {name} does not match its sha256 in the manifest "
                              "(file changed, corrupted or truncated)")
    for required in (ONNX_FILE, BANK_FILE):
        if required not in manifest.files:
            raise BundleError(f"bundle {path}: manifest lists no hash for {required}")
    try:
        bank = np.load(io.BytesIO(files[BANK_FILE]), allow_pickle=False)
    except ValueError as exc:
        raise BundleError(f"bundle {path}: {BANK_FILE} is not a plain numpy array ({exc})") from exc
    dim = manifest.features.embedding_dim
    if bank.dtype != np.float32 or bank.ndim != 2 or bank.shape[1] != dim or bank.shape[0] != manifest.memory.n_bank:
        raise BundleError(f"bundle {path}: memory bank is {bank.dtype} {bank.shape}, manifest says float32 "
                          f"({manifest.memory.n_bank}, {dim})")
    golden = {n.removeprefix("golden/"): files[n] for n in manifest.files if n.startswith("golden/")}
    extras = {n: files[n] for n in manifest.files if n not in (ONNX_FILE, BANK_FILE) and not n.startswith("golden/")}
    return Bundle(manifest=manifest, onnx=files[ONNX_FILE], bank=bank, golden=golden, extras=extras, path=path)


def rewrite_manifest(path: str | Path, manifest: Manifest) -> None:
    """Replace only manifest.json (thresholds after calibration); data files and their hashes stay."""
    bundle = load_bundle(path)
    manifest.files = bundle.manifest.files
    bundle.manifest = manifest
    write_bundle(path, bundle)
