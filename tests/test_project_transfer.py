"""`project export` / `project import`: a real project round-trips byte for byte, and every way a zip can be
bad (traversal, absolute names, symlinks, added/missing/changed members, bombs, corruption) is refused in one
line with nothing written; an import never lands on an existing project or folder, an export never on a file
that is not ours."""
from __future__ import annotations

import hashlib
import json
import os
import stat
import zipfile
from pathlib import Path

import pytest

from helpers import need_data
from linesight.cli import main
from linesight.config.project import ProjectMetadata
from linesight.errors import DataError
from linesight.project.data import add_images
from linesight.project.transfer import MANIFEST, export_project, import_project
from linesight.project.workspace import Project


def tree(root: Path) -> dict[str, bytes]:
    """Every file under root (dot-named ones too) -> its bytes."""
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> Project:
    """A real project: three magnetic_tile images, a fake version folder, a detection result, and the dot-named
    temporaries an interrupted fit or write leaves behind."""
    good = need_data() / "train" / "good"
    p = Project.init(tmp_path_factory.mktemp("src") / "tiles", name="magnetic tile, line 3")
    report = add_images(p, sorted(good.iterdir())[:3])
    assert report.added == 3
    (p.models_dir / "v1" / "bundle").mkdir(parents=True)
    (p.models_dir / "v1" / "bundle" / "weights.bin").write_bytes(os.urandom(4096))
    (p.results_dir / "run1").mkdir()
    (p.results_dir / "run1" / "verdicts.jsonl").write_text('{"verdict": "ok"}\n')
    (p.models_dir / ".building-v2").mkdir()
    (p.models_dir / ".building-v2" / "half.onnx").write_bytes(b"partial")
    (p.root / ".metadata.json.x1y2").write_text("{")
    return p


@pytest.fixture(scope="module")
def exported(project, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("zip") / "tiles.zip"
    r = export_project(project, out)
    assert r.files == len(json.loads(zipfile.ZipFile(out).read(MANIFEST))["files"])
    assert sorted(r.skipped) == [".metadata.json.x1y2", "models/.building-v2/"]
    return out


def refused(zip_path: Path, dest: Path, **kw) -> str:
    """Import must fail with a one-line DataError and leave neither dest nor a temporary folder behind."""
    before = sorted(dest.parent.iterdir())
    with pytest.raises(DataError) as e:
        import_project(zip_path, dest, **kw)
    msg = str(e.value)
    assert "\n" not in msg and "nothing was changed" in msg.lower()
    assert sorted(dest.parent.iterdir()) == before  # no dest, no .<dest>.importing-* left
    return msg


def rezip(src: Path, dst: Path, *, add: dict[str, bytes] | None = None, drop: tuple[str, ...] = (),
          change: dict[str, bytes] | None = None, list_added: bool = True,
          attrs: dict[str, int] | None = None) -> Path:
    """A copy of an export with members added (listed in the manifest unless list_added=False), dropped (still
    listed) or changed (manifest left as it was): what a tampered or damaged export looks like."""
    with zipfile.ZipFile(src) as zf:
        members = {n: zf.read(n) for n in zf.namelist()}
    manifest = json.loads(members.pop(MANIFEST))
    for name, data in (add or {}).items():
        members[name] = data
        if list_added:
            manifest["files"][name] = {"sha256": hashlib.sha256(data).hexdigest(), "size": len(data)}
    for name, data in (change or {}).items():
        members[name] = data
    for name in drop:
        del members[name]
    with zipfile.ZipFile(dst, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr(MANIFEST, json.dumps(manifest))
        for name, data in members.items():
            info = zipfile.ZipInfo(name)
            info.compress_type = zipfile.ZIP_DEFLATED
            info.external_attr = (attrs or {}).get(name, (stat.S_IFREG | 0o644) << 16)
            zf.writestr(info, data)
    return dst


# ---------------------------------------------------------------------------------------------- round trip
def test_round_trip_keeps_every_byte_and_records_the_import(project, exported, tmp_path):
    r = import_project(exported, tmp_path / "copy")
    assert r.project == tmp_path / "copy" and r.name == "magnetic tile, line 3"
    src, dst = tree(project.root), tree(tmp_path / "copy")
    expect = {k: v for k, v in src.items() if not k.startswith(".") and "/." not in k}
    assert sorted(expect) == sorted(dst)
    assert "models/v1/bundle/weights.bin" in dst and "detect_results/run1/verdicts.jsonl" in dst
    assert len([k for k in dst if k.startswith("train_data/images/")]) == 3
    manifest = json.loads(zipfile.ZipFile(exported).read(MANIFEST))
    assert manifest["schema"] == "linesight.project-export/1" and sorted(manifest["files"]) == sorted(expect)
    for name, data in expect.items():
        if name != "metadata.json":
            assert dst[name] == data, name
            assert hashlib.sha256(dst[name]).hexdigest() == manifest["files"][name]["sha256"]
    before = ProjectMetadata.model_validate_json(src["metadata.json"])
    after = Project.open(tmp_path / "copy").metadata()
    assert after.history[:-1] == before.history and after.history[-1].action == "import"
    assert "tiles.zip" in after.history[-1].detail
    assert Project.open(tmp_path / "copy").data_index() == project.data_index()
    assert (tmp_path / "copy" / "feedback").is_dir()  # empty layout folders come back
    assert sorted(p.name for p in tmp_path.iterdir()) == ["copy"]


def test_into_an_empty_folder(exported, tmp_path):
    (tmp_path / "empty").mkdir()
    import_project(exported, tmp_path / "empty")
    assert Project.open(tmp_path / "empty").metadata().name == "magnetic tile, line 3"


def test_no_results_leaves_detect_results_out(project, tmp_path):
    r = export_project(project, tmp_path / "lean.zip", results=False)
    assert not r.results
    names = zipfile.ZipFile(tmp_path / "lean.zip").namelist()
    assert names[0] == MANIFEST and not [n for n in names if n.startswith("detect_results")]
    assert "models/v1/bundle/weights.bin" in names
    import_project(tmp_path / "lean.zip", tmp_path / "lean")
    assert list((tmp_path / "lean" / "detect_results").iterdir()) == []


def test_cli_export_import_and_a_refusal(project, tmp_path, capsys):
    assert main(["project", "export", "-p", str(project.root), str(tmp_path / "p.zip")]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["zip"] == str(tmp_path / "p.zip") and out["detect_results"] is True
    assert main(["project", "import", str(tmp_path / "p.zip"), str(tmp_path / "p"), "--max-size-gb", "1"]) == 0
    assert json.loads(capsys.readouterr().out)["name"] == "magnetic tile, line 3"
    assert main(["project", "import", str(tmp_path / "p.zip"), str(tmp_path / "p")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "already holds a linesight project" in err


# ---------------------------------------------------------------------------------------------- export refusals
def test_export_of_a_folder_that_is_not_a_project(tmp_path, capsys):
    (tmp_path / "plain").mkdir()
    (tmp_path / "plain" / "notes.txt").write_text("hi")
    with pytest.raises(DataError, match="is not a linesight project"):
        export_project(Project(tmp_path / "plain"), tmp_path / "x.zip")
    assert main(["project", "export", "-p", str(tmp_path / "plain"), str(tmp_path / "x.zip")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "is not a linesight project (no metadata.json)" in err
    assert not (tmp_path / "x.zip").exists()


def test_export_refuses_a_symlink_in_the_project(tmp_path):
    p = Project.init(tmp_path / "p")
    (tmp_path / "secret").write_text("outside")
    os.symlink(tmp_path / "secret", p.results_dir / "link.txt")
    with pytest.raises(DataError, match=r"detect_results/link.txt is a symlink; linesight does not follow"):
        export_project(p, tmp_path / "x.zip")
    assert sorted(q.name for q in tmp_path.iterdir()) == ["p", "secret"]  # no zip, no temporary


def test_export_never_overwrites_a_file_that_is_not_ours(tmp_path, capsys):
    p = Project.init(tmp_path / "p")
    precious = tmp_path / "precious.zip"
    precious.write_bytes(b"my thesis")
    with pytest.raises(DataError, match="exists and is not a linesight project export; choose another name or "
                                        "pass --force"):
        export_project(p, precious)
    assert precious.read_bytes() == b"my thesis"
    zipfile.ZipFile(tmp_path / "other.zip", "w").writestr("a.txt", "a zip, but not ours")
    with pytest.raises(DataError, match="not a linesight project export"):
        export_project(p, tmp_path / "other.zip")
    export_project(p, precious, force=True)
    assert MANIFEST in zipfile.ZipFile(precious).namelist()
    export_project(p, precious)  # an earlier export of ours is simply replaced
    assert main(["project", "export", "-p", str(tmp_path / "p"), str(tmp_path / "other.zip")]) == 2
    assert capsys.readouterr().err.count("\n") == 1
    assert sorted(q.name for q in tmp_path.iterdir()) == ["other.zip", "p", "precious.zip"]


def test_export_refuses_a_file_named_like_its_manifest(tmp_path):
    p = Project.init(tmp_path / "p")
    (p.root / MANIFEST).write_text("{}")
    with pytest.raises(DataError, match="is the name of the export's manifest; rename that file"):
        export_project(p, tmp_path / "x.zip")
    assert not (tmp_path / "x.zip").exists()


def test_export_refuses_a_zip_inside_the_project(tmp_path):
    p = Project.init(tmp_path / "p")
    with pytest.raises(DataError, match="is inside the project"):
        export_project(p, p.results_dir / "me.zip")
    assert list(p.results_dir.iterdir()) == []


# ---------------------------------------------------------------------------------------------- import refusals
def test_import_over_an_existing_project_changes_nothing(project, exported):
    before = tree(project.root)
    msg = refused(exported, project.root)
    assert "already holds a linesight project already" not in msg
    assert f"{project.root} already holds a linesight project; choose a new or empty folder" in msg
    assert tree(project.root) == before


def test_import_over_a_non_empty_folder_changes_nothing(exported, tmp_path):
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "notes.txt").write_text("keep me")
    msg = refused(exported, tmp_path / "busy")
    assert "busy already holds files; choose a new or empty folder (nothing was changed)" in msg
    assert tree(tmp_path / "busy") == {"notes.txt": b"keep me"}


@pytest.mark.parametrize("how", ["truncated", "random"])
def test_a_corrupt_zip_is_one_line(exported, tmp_path, how):
    bad = tmp_path / "bad.zip"
    data = exported.read_bytes()
    bad.write_bytes(data[: len(data) // 2] if how == "truncated" else os.urandom(5000))
    msg = refused(bad, tmp_path / "out")
    assert msg.startswith(f"project import: {bad}: not a readable zip file (")


def test_a_flipped_byte_inside_a_member_is_one_line(exported, tmp_path):
    data = bytearray(exported.read_bytes())
    with zipfile.ZipFile(exported) as zf:
        info = max(zf.infolist(), key=lambda i: i.compress_size)
    data[info.header_offset + 30 + len(info.filename) + info.compress_size // 2] ^= 0xFF
    (tmp_path / "flip.zip").write_bytes(bytes(data))
    msg = refused(tmp_path / "flip.zip", tmp_path / "out")
    assert info.filename in msg or "damaged zip" in msg


@pytest.mark.parametrize("name, why", [
    ("../evil", "'..' in its path (path traversal)"),
    ("models/../../evil", "'..' in its path (path traversal)"),
    ("/tmp/evil", "an absolute path"),
    ("C:/evil", "an absolute path"),
    ("models\\evil", "a backslash in its name"),
    ("models//evil", "an empty or '.' path component"),
    ("models/", "a folder entry"),
])
def test_bad_member_names(exported, tmp_path, name, why):
    bad = rezip(exported, tmp_path / "bad.zip", add={name: b"pwned"})
    msg = refused(bad, tmp_path / "out")
    assert f"{name!r}: {why}" in msg
    assert not (tmp_path / "evil").exists()


def test_a_symlink_member(exported, tmp_path):
    bad = rezip(exported, tmp_path / "bad.zip", add={"models/link": b"/etc/passwd"},
                attrs={"models/link": (stat.S_IFLNK | 0o777) << 16})
    assert "'models/link': a symlink (refused: it could point outside the project)" in refused(bad, tmp_path / "o")


def test_a_duplicate_member(exported, tmp_path):
    bad = tmp_path / "dup.zip"
    with zipfile.ZipFile(exported) as src, zipfile.ZipFile(bad, "w") as dst:
        for i in src.infolist():
            dst.writestr(i, src.read(i))
        with pytest.warns(UserWarning, match="Duplicate name"):
            dst.writestr("metadata.json", b"{}")
    assert "'metadata.json': a duplicate name" in refused(bad, tmp_path / "o")


def test_a_member_missing_from_the_manifest(exported, tmp_path):
    bad = rezip(exported, tmp_path / "bad.zip", add={"feedback/extra.txt": b"hi"}, list_added=False)
    assert "'feedback/extra.txt': not listed in the manifest" in refused(bad, tmp_path / "o")


def test_a_manifest_file_missing_from_the_zip(exported, tmp_path):
    bad = rezip(exported, tmp_path / "bad.zip", drop=("train_config.json",))
    assert "'train_config.json': listed in the manifest but missing from the zip" in refused(bad, tmp_path / "o")


def test_no_manifest_at_all(exported, tmp_path):
    bad = tmp_path / "plain.zip"
    with zipfile.ZipFile(bad, "w") as zf:
        zf.writestr("metadata.json", b"{}")
    assert f"'{MANIFEST}': missing: this is not a linesight project export" in refused(bad, tmp_path / "o")


def test_a_changed_byte_fails_the_hash(exported, tmp_path):
    with zipfile.ZipFile(exported) as zf:
        image = next(n for n in zf.namelist() if n.startswith("train_data/images/"))
        data = bytearray(zf.read(image))
    data[len(data) // 2] ^= 0x01
    bad = rezip(exported, tmp_path / "bad.zip", change={image: bytes(data)})
    msg = refused(bad, tmp_path / "o")
    assert f"{image!r}: sha256 differs from the manifest (the file was changed or damaged)" in msg


def test_a_size_that_differs_from_the_manifest(exported, tmp_path):
    bad = rezip(exported, tmp_path / "bad.zip", change={"train_config.json": b"{}"})
    assert "'train_config.json': 2 bytes in the zip" in refused(bad, tmp_path / "o")


def test_a_zip_bomb_past_the_size_limit(exported, tmp_path):
    bad = rezip(exported, tmp_path / "bomb.zip", add={"models/v1/zeros.bin": bytes(50 * 1024**2)})
    assert bad.stat().st_size < 1024**2
    msg = refused(bad, tmp_path / "o", max_bytes=10 * 1024**2)
    assert "the members expand to more than the limit of 0.00977 GiB" in msg and "--max-size-gb" in msg


def test_a_zip_bomb_by_ratio(exported, tmp_path):
    bad = rezip(exported, tmp_path / "bomb.zip", add={"models/v1/zeros.bin": bytes(50 * 1024**2)})
    msg = refused(bad, tmp_path / "o")  # within the default size limit: the ratio rule stops it
    assert "'models/v1/zeros.bin': compressed" in msg and ":1, more than 200:1 (a zip bomb?)" in msg


def test_a_forged_size_gets_no_more_through(exported, tmp_path):
    """Central directory and manifest both claim 10 bytes for a 100 kB member: refused, never extracted whole."""
    real = bytes(range(256)) * 400
    bad = rezip(exported, tmp_path / "bad.zip", add={"feedback/big.bin": real})
    with zipfile.ZipFile(bad) as zf:
        manifest = json.loads(zf.read(MANIFEST))
        members = [(i, zf.read(i)) for i in zf.infolist() if i.filename != MANIFEST]
    manifest["files"]["feedback/big.bin"]["size"] = 10
    forged = tmp_path / "forged.zip"
    with zipfile.ZipFile(forged, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr(MANIFEST, json.dumps(manifest))
        for info, data in members:
            zf.writestr(info, data)
    raw = bytearray(forged.read_bytes())
    with zipfile.ZipFile(forged) as zf:
        info = zf.getinfo("feedback/big.bin")
    at = raw.find(b"PK\x01\x02")
    while raw[at + 46:at + 46 + len(info.filename)] != info.filename.encode():
        at = raw.find(b"PK\x01\x02", at + 4)
    raw[at + 24:at + 28] = (10).to_bytes(4, "little")  # uncompressed size in the central directory
    forged.write_bytes(bytes(raw))
    msg = refused(forged, tmp_path / "o")
    assert "'feedback/big.bin'" in msg


def test_extraction_reads_at_most_the_declared_size_plus_one(exported, tmp_path):
    """Whatever a header claims, the manifest's size bounds what is written: one byte more and it stops."""
    from linesight.config.project import ExportedFile
    from linesight.project.transfer import _extract, _Refused

    with zipfile.ZipFile(exported) as zf:
        info = zf.getinfo("models/v1/bundle/weights.bin")  # 4096 bytes
        with pytest.raises(_Refused, match="expands beyond its declared 100 bytes"):
            _extract(zf, info, ExportedFile(sha256="0" * 64, size=100), tmp_path)
    assert (tmp_path / "models/v1/bundle/weights.bin").stat().st_size <= 100  # the extra byte is never written
