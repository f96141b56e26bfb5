"""The UI's project pages' API (issue 16): projects, versions, reports, diff, activate / rollback, uploads, and
training jobs run as real `linesight project fit|learn` child processes followed through their JSON log lines.
Real projects fitted on real tiles (random-init features, tiny input: machinery, not accuracy)."""
from __future__ import annotations

import io
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
from fastapi.testclient import TestClient
from ui_harness import TOKEN, fitted_project

from helpers import need_data
from linesight.config.ui import UiConfig
from linesight.project.workspace import Project
from linesight.ui.app import create_app

AUTH = {"Authorization": f"Bearer {TOKEN}"}
TINY = {"weights": "none", "input_size": 96, "embedding_dim": 64}


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> Project:
    """v1 (active) and v2 (another calibration target), both fitted on real tiles; cracks labeled for the rates."""
    from linesight.config.project import TrainConfig
    from linesight.project.data import add_images
    from linesight.project.training import fit_version

    p = fitted_project(tmp_path_factory.mktemp("ui-proj") / "tiles")
    cracks = sorted((need_data() / "test" / "crack").iterdir())[:3]
    add_images(p, cracks, "crack", need_data() / "ground_truth" / "crack")
    fit_version(p, TrainConfig(fit=TINY, test_fraction=0.3, calibration={"max_false_reject": 0.2}))
    return p


def client(p: Project, monkeypatch: pytest.MonkeyPatch) -> TestClient:
    monkeypatch.setenv("UI_TOKEN", TOKEN)
    cfg = UiConfig.model_validate({"projects": [{"name": "tiles", "dir": str(p.root)}],
                                   "auth": {"tokens_env": "UI_TOKEN"}})
    return TestClient(create_app(cfg))


def copy(p: Project, dst: Path) -> Project:
    import shutil

    shutil.copytree(p.root, dst)
    return Project(dst)


def test_projects_versions_diff_and_reports_read_as_the_cli_does(project, monkeypatch) -> None:
    with client(project, monkeypatch) as c:
        [s] = c.get("/api/v1/projects").json()
        assert (s["name"], s["active"], s["versions"], s["images"]["crack"]) == ("tiles", 1, 2, 3)
        d = c.get("/api/v1/projects/tiles").json()
        assert d["metadata"]["schema"] == "linesight.project/1" and [h["action"] for h in d["metadata"]["history"]][
            :2] == ["init", "add"]
        rows = c.get("/api/v1/projects/tiles/versions").json()
        assert [(r["info"]["version"], r["active"]) for r in rows] == [(2, False), (1, True)]
        assert rows[0]["report"] and rows[0]["info"]["metrics"]["n_defective"] == 3
        diff = {r["field"]: (r["a"], r["b"]) for r in c.get("/api/v1/projects/tiles/diff?a=1&b=2").json()}
        assert diff["calibration.max_false_reject"] == (0.01, 0.2)  # the default target, then 20 %
        r = c.get("/api/v1/projects/tiles/versions/2/report/report.html")
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
        for bad in ("../version.json", "..%2Fversion.json", "../bundle/manifest.json", "report.html/../../x.json",
                    "%2e%2e/%2e%2e/metadata.json"):
            assert c.get(f"/api/v1/projects/tiles/versions/2/report/{bad}").status_code == 404, bad
        assert c.get("/api/v1/projects/tiles/versions/9/report/report.html").status_code == 404
        assert c.get("/api/v1/projects/nope").json()["detail"] == "no project 'nope' (projects: tiles)"
        schema = c.get("/api/v1/projects/tiles/train-config").json()["schema"]
        assert "test_fraction" in schema["properties"]


def test_activate_and_rollback_need_the_header_token_and_change_what_stations_follow(project, tmp_path,
                                                                                      monkeypatch) -> None:
    p = copy(project, tmp_path / "tiles")
    with client(p, monkeypatch) as c:
        r = c.post("/api/v1/projects/tiles/activate", json={"version": 2})
        assert r.status_code == 401 and p.metadata().active == 1
        c.cookies.set("linesight_token", TOKEN)  # the pages' read cookie never authorises a change
        assert c.post("/api/v1/projects/tiles/activate", json={"version": 2}).status_code == 401
        r = c.post("/api/v1/projects/tiles/activate", json={"version": 2}, headers=AUTH)
        assert r.status_code == 200 and r.json()["active"] == 2 and p.metadata().active == 2
        assert c.post("/api/v1/projects/tiles/activate", json={"version": 7}, headers=AUTH).status_code == 404
        assert c.post("/api/v1/projects/tiles/activate", json={"version": "2"}, headers=AUTH).status_code == 422
        r = c.post("/api/v1/projects/tiles/rollback", headers=AUTH)
        assert r.json()["active"] == 1 and p.metadata().active == 1
        assert p.metadata().history[-1].action == "rollback"


def _png(value: int) -> bytes:
    ok, buf = cv2.imencode(".png", np.full((64, 64), value, np.uint8))
    assert ok
    return buf.tobytes()


def test_uploads_are_added_content_addressed_and_bad_ones_named(project, tmp_path, monkeypatch) -> None:
    p = copy(project, tmp_path / "tiles")
    before = len(p.data_index().images)
    with client(p, monkeypatch) as c:
        files = [("files", ("a.png", io.BytesIO(_png(10)), "image/png")),
                 ("files", ("b.png", io.BytesIO(_png(20)), "image/png")),
                 ("files", ("a-again.png", io.BytesIO(_png(10)), "image/png")),
                 ("files", ("notes.png", io.BytesIO(b"not an image"), "image/png"))]
        r = c.post("/api/v1/projects/tiles/images?label=scratch", files=files, headers=AUTH)
        assert r.status_code == 200, r.text
        body = r.json()
        assert (body["added"], body["duplicates"], body["project"]["images"]["scratch"]) == (2, 1, 2)
        assert len(body["unreadable"]) == 1 and body["unreadable"][0].startswith("notes.png: ")
        assert "linesight-upload" not in body["unreadable"][0]  # the server's temporary folder is not shown
        assert len(p.data_index().images) == before + 2
        r = c.post("/api/v1/projects/tiles/images?label=Bad%20Label", files=files[:1], headers=AUTH)
        assert r.status_code == 400 and "label 'Bad Label'" in r.json()["detail"]
        r = c.post("/api/v1/projects/tiles/images", content=_png(30), headers={**AUTH, "Content-Type": "image/png"})
        assert r.status_code == 415
        assert c.post("/api/v1/projects/tiles/images", files=files[:1]).status_code == 401


def wait_job(c: TestClient, job_id: str, timeout: float = 240.0) -> dict:
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        job = c.get(f"/api/v1/jobs/{job_id}").json()
        if job["state"] != "running":
            return job
        time.sleep(0.5)
    raise AssertionError(f"job {job_id} still running after {timeout} s: {job}")


def test_a_fit_job_runs_the_cli_reports_progress_and_makes_the_next_version(project, tmp_path, monkeypatch) -> None:
    p = copy(project, tmp_path / "tiles")
    with client(p, monkeypatch) as c:
        body = {"kind": "fit", "config": {"fit": {**TINY, "coreset": {"ratio": 0.1}}, "test_fraction": 0.3}}
        assert c.post("/api/v1/projects/tiles/jobs", json=body).status_code == 401
        r = c.post("/api/v1/projects/tiles/jobs", json={"kind": "fit", "config": {"fit": {"nope": 1}}}, headers=AUTH)
        assert (r.status_code, r.json()["detail"]) == (400, "config: fit: Value error, fit.nope: Extra inputs are not "
                                                            "permitted")
        r = c.post("/api/v1/projects/tiles/jobs", json={"kind": "learn", "config": {}}, headers=AUTH)
        assert r.status_code == 400 and r.json()["detail"] == "config is for fit jobs only"
        r = c.post("/api/v1/projects/tiles/jobs", json=body, headers=AUTH)
        assert r.status_code == 202, r.text
        job = r.json()
        assert (job["state"], job["kind"], job["by"]) == ("running", "fit", None)
        busy = c.post("/api/v1/projects/tiles/jobs", json={"kind": "learn"}, headers=AUTH)
        assert busy.status_code == 409 and f"job {job['id']} (fit of tiles) is running" in busy.json()["detail"]
        done = wait_job(c, job["id"])
        assert done["state"] == "done", done
        assert done["result"]["version"] == 3 and p.version_numbers() == [1, 2, 3]  # what `project fit` prints
        assert p.version(3).train_config.fit["coreset"] == {"ratio": 0.1}  # the page's config, recorded
        stages = {s["stage"] for s in done["stages"]}
        assert stages and all(s["done"] == s["total"] for s in done["stages"]), done["stages"]
        assert any(line.startswith("INFO ") for line in done["log"])
        assert [j["id"] for j in c.get("/api/v1/jobs").json()] == [job["id"]]
        learn = c.post("/api/v1/projects/tiles/jobs", json={"kind": "learn"}, headers=AUTH).json()
        failed = wait_job(c, learn["id"])
        assert failed["state"] == "failed" and "no pending feedback" in failed["error"], failed


def test_a_cancelled_fit_leaves_no_version(project, tmp_path, monkeypatch) -> None:
    p = copy(project, tmp_path / "tiles")
    with client(p, monkeypatch) as c:
        job = c.post("/api/v1/projects/tiles/jobs", json={"kind": "fit", "config": {"fit": TINY}},
                     headers=AUTH).json()
        assert c.post(f"/api/v1/jobs/{job['id']}/cancel").status_code == 401
        time.sleep(1.0)
        assert c.post(f"/api/v1/jobs/{job['id']}/cancel", headers=AUTH).status_code == 200
        done = wait_job(c, job["id"], 30)
        assert done["state"] == "cancelled" and p.version_numbers() == [1, 2]
        assert c.post("/api/v1/jobs/nope/cancel", headers=AUTH).status_code == 404


def test_projects_need_a_token_source_and_an_existing_folder(tmp_path) -> None:
    from pydantic import ValidationError

    from linesight.config.ui import load_ui_config
    from linesight.errors import ConfigError

    with pytest.raises(ValidationError, match="projects .activate, rollback, training jobs. need a token"):
        UiConfig.model_validate({"projects": [{"name": "t", "dir": str(tmp_path)}]})
    cfg = tmp_path / "ui.yaml"
    cfg.write_text("auth:\n  tokens_env: UI_TOKEN\nprojects:\n  - name: t\n    dir: missing\n")
    with pytest.raises(ConfigError, match=r"ui.yaml:5: projects\[0\]\.dir: .*missing does not exist"):
        load_ui_config(cfg)



def test_threshold_preview_applies_the_calibration_rule_to_the_evaluation_scores(project, monkeypatch) -> None:
    import json

    import numpy as np

    from linesight.config.manifest import CalibrationTarget
    from linesight.trainer.calibration import choose_image_threshold

    scores = json.loads((project.version_dir(2) / "report" / "metrics.json").read_text())["scores"]
    s, y = np.array([r["score"] for r in scores]), np.array([r["label"] for r in scores])
    with client(project, monkeypatch) as c:
        p = c.get("/api/v1/projects/tiles/versions/2/tune?max_false_reject=0.5").json()
        want = choose_image_threshold(s, y, CalibrationTarget(max_false_reject=0.5))
        assert (p["threshold"], p["policy"], p["false_reject"]["count"]) == (want.threshold, want.policy,
                                                                              want.false_reject.count)
        now = project.version(2).image_threshold
        flipped = {f["file"] for f in p["flips"]}
        assert flipped == {r["file"] for r in scores if (r["score"] >= now) != (r["score"] >= want.threshold)}
        assert all(f["now"] != f["then"] for f in p["flips"])
        t = float(np.median(s))
        q = c.get(f"/api/v1/projects/tiles/versions/2/tune?threshold={t}").json()
        assert (q["policy"], q["false_reject"]["count"], q["escape"]["count"]) == (
            "threshold", int((s[y == 0] >= t).sum()), int((s[y == 1] < t).sum()))
        assert c.get(f"/api/v1/projects/tiles/versions/2/tune?threshold={t}&max_escape=0.1").status_code == 400
        r = c.get("/api/v1/projects/tiles/versions/1/tune")
        assert r.status_code == 404 and "run `linesight project evaluate v1`" in r.json()["detail"]
        if flipped:
            assert c.get(f"/api/v1/projects/tiles/images/{sorted(flipped)[0]}").status_code == 200
        assert c.get("/api/v1/projects/tiles/images/..%2Fmetadata.json").status_code == 404
        assert c.get("/api/v1/projects/tiles/images/metadata.json").status_code == 404


def test_names_no_file_can_have_are_404_and_non_finite_numbers_are_422(project, monkeypatch) -> None:
    """Found by the OpenAPI fuzz (tests/test_ui_fuzz.py), each a 500 before: a report file name with a NUL or longer
    than the system allows; NaN / Infinity in a JSON body (Python's parser takes them; FastAPI's 422 then could
    not be encoded); a NaN or infinite threshold to preview (answered with a null threshold)."""
    with client(project, monkeypatch) as c:
        for bad in ("a%00b.html", "a" * 300 + ".html", "a/" * 3000 + "x.html"):
            r = c.get(f"/api/v1/projects/tiles/versions/2/report/{bad}")
            assert r.status_code == 404 and "v2 has no report file" in r.json()["detail"], bad[:20]
        for raw, shown in (('{"version": NaN}', "nan"), ('{"version": Infinity}', "inf"),
                           ('{"version": 1e400}', "inf")):
            r = c.post("/api/v1/projects/tiles/activate", content=raw,
                       headers={**AUTH, "Content-Type": "application/json"})
            assert r.status_code == 422, (raw, r.status_code)
            assert (r.json()["detail"][0]["loc"], r.json()["detail"][0]["input"]) == (["body", "version"], shown)
        r = c.post("/api/v1/projects/tiles/jobs", content='{"kind": "tune", "version": 2, "target": '
                   '{"max_false_reject": NaN}}', headers={**AUTH, "Content-Type": "application/json"})
        assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["body", "target", "max_false_reject"]
        for t in ("nan", "inf", "-inf", "1e400"):
            r = c.get(f"/api/v1/projects/tiles/versions/2/tune?threshold={t}")
            assert r.status_code == 422 and r.json()["detail"][0]["type"] == "finite_number", t
    assert project.metadata().active == 1  # nothing was activated


def test_a_tune_job_makes_a_tuned_version(project, tmp_path, monkeypatch) -> None:
    p = copy(project, tmp_path / "tiles")
    with client(p, monkeypatch) as c:
        body = {"kind": "tune", "version": 2, "target": {"max_false_reject": 0.5}}
        assert c.post("/api/v1/projects/tiles/jobs", json={"kind": "tune", "version": 2},
                      headers=AUTH).status_code == 400
        assert c.post("/api/v1/projects/tiles/jobs", json={**body, "version": 9}, headers=AUTH).status_code == 404
        job = c.post("/api/v1/projects/tiles/jobs", json=body, headers=AUTH).json()
        done = wait_job(c, job["id"], 120)
        assert done["state"] == "done", done
        v = p.version(3)
        assert (v.how, v.parent, v.train_config.calibration.max_false_reject) == ("tune", 2, 0.5)


def test_a_frame_archived_on_the_line_is_captured_into_the_project(project, tmp_path, monkeypatch) -> None:
    from ui_harness import archived

    p = copy(project, tmp_path / "tiles")
    sent = archived(tmp_path / "archive", 6)
    monkeypatch.setenv("UI_TOKEN", TOKEN)
    cfg = UiConfig.model_validate({"projects": [{"name": "tiles", "dir": str(p.root)}],
                                   "stations": [{"name": "line3", "verdict_endpoint": "tcp://127.0.0.1:1",
                                                 "archive_dir": str(tmp_path / "archive")},
                                                {"name": "bare", "verdict_endpoint": "tcp://127.0.0.1:1"}],
                                   "auth": {"tokens_env": "UI_TOKEN"}})
    with TestClient(create_app(cfg)) as c:
        record = c.get("/api/v1/stations/line3/archive?verdict=NG").json()["records"][0]
        body = {"station": "line3", "record": record["id"], "label": "spot"}
        url = "/api/v1/projects/tiles/images/from-archive"
        assert c.post(url, json=body).status_code == 401
        r = c.post(url, json=body, headers=AUTH)
        assert r.status_code == 200, r.text
        assert (r.json()["added"], r.json()["project"]["images"]["spot"]) == (1, 1)
        entry = next(e for e in p.data_index().images if e.label == "spot")
        assert entry.name == f"line3_{record['id']}.png" and (p.data_dir / entry.file).is_file()
        assert c.post(url, json=body, headers=AUTH).json()["duplicates"] == 1  # the same bytes: one image
        for bad in ({**body, "record": "2026-01-01_000000000001_P-1_NG"}, {**body, "record": "../../metadata.json"},
                    {**body, "station": "bare"}, {**body, "station": "nope"}):
            assert c.post(url, json=bad, headers=AUTH).status_code == 404, bad
        assert c.post(url, json={**body, "label": "Bad"}, headers=AUTH).status_code == 400
    assert len(sent) == 6


def test_a_folder_that_is_no_project_shows_in_the_list_with_why(project, tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("UI_TOKEN", TOKEN)
    (tmp_path / "empty").mkdir()
    cfg = UiConfig.model_validate({"projects": [{"name": "tiles", "dir": str(project.root)},
                                                {"name": "gone", "dir": str(tmp_path / "empty")}],
                                   "auth": {"tokens_env": "UI_TOKEN"}})
    with TestClient(create_app(cfg)) as c:
        tiles, gone = c.get("/api/v1/projects").json()
        assert (tiles["name"], tiles["problem"], gone["name"], gone["versions"]) == ("tiles", None, "gone", 0)
        assert "is not a linesight project" in gone["problem"]
        assert c.get("/api/v1/projects/gone").status_code == 409
