"""Shared test helpers: the real magnetic_tile data and small MVTec-layout subsets of it."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

DATA = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "magnetic_tile"


def need_data() -> Path:
    if not (DATA / "train" / "good").is_dir():
        pytest.skip(f"real dataset not found at {DATA}: lay it out there with "
                    "`linesight data prepare-magnetic-tile SRC DST` (docs/data.md)")
    return DATA


def make_subset(dst: Path, n_train: int = 16, n_good: int = 4, defects: dict[str, int] | None = None) -> Path:
    """Symlink a few real images into an MVTec layout (train/good, test/<type>, ground_truth/<type>)."""
    src = need_data()
    defects = defects or {"blowhole": 3, "crack": 3}
    (dst / "train" / "good").mkdir(parents=True)
    for p in sorted((src / "train" / "good").iterdir())[:n_train]:
        os.symlink(p, dst / "train" / "good" / p.name)
    (dst / "test" / "good").mkdir(parents=True)
    for p in sorted((src / "test" / "good").iterdir())[:n_good]:
        os.symlink(p, dst / "test" / "good" / p.name)
    for kind, n in defects.items():
        (dst / "test" / kind).mkdir(parents=True)
        (dst / "ground_truth" / kind).mkdir(parents=True)
        for p in sorted((src / "test" / kind).iterdir())[:n]:
            os.symlink(p, dst / "test" / kind / p.name)
            mask = src / "ground_truth" / kind / f"{p.stem}_mask.png"
            os.symlink(mask, dst / "ground_truth" / kind / mask.name)
    return dst


def corrupt_zip(src: Path, dst: Path, how: str) -> Path:
    """A copy of a zip bundle broken the ways byte flips break real files: `deflate` (an invalid deflate block:
    zlib.error inside zipfile) or `method` (an unknown compression method: NotImplementedError)."""
    import struct
    import zipfile

    data = bytearray(src.read_bytes())
    with zipfile.ZipFile(src) as zf:
        info = next(i for i in zf.infolist() if i.compress_type == zipfile.ZIP_DEFLATED and i.compress_size > 64)
    if how == "deflate":
        name_len, extra_len = struct.unpack("<HH", data[info.header_offset + 26: info.header_offset + 30])
        start = info.header_offset + 30 + name_len + extra_len
        data[start] = 0xFF  # BTYPE 11: reserved, "invalid block type"
    elif how == "method":
        central = data.find(b"PK\x01\x02")
        while central != -1:  # every central-directory entry: method field at +10
            data[central + 10: central + 12] = struct.pack("<H", 77)
            central = data.find(b"PK\x01\x02", central + 46)
    else:
        raise ValueError(how)
    dst.write_bytes(bytes(data))
    return dst
