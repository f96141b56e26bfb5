"""Where linesight writes: its own output folders, never through a file or over folders it did not make."""
from __future__ import annotations

from pathlib import Path

from linesight.errors import DataError


def output_folder(path: str | Path, what: str, marker: str | None = None) -> Path:
    """Make `path` a folder for `what`'s outputs. A file there is an error, not a traceback. With `marker`, a
    folder that already holds anything must carry that marker (our earlier output), and it is written."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise DataError(f"{what}: output {path} is a file, not a folder; choose a folder path")
    if marker and path.is_dir() and any(path.iterdir()) and not (path / marker).exists():
        raise DataError(f"{what}: output folder {path} already holds files that linesight did not write; "
                        "choose a new or empty folder (nothing was changed)")
    try:
        path.mkdir(parents=True, exist_ok=True)
        if marker:
            (path / marker).touch()
    except OSError as exc:
        raise DataError(f"{what}: cannot create output folder {path}: {exc.strerror}") from exc
    return path
