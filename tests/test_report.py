"""Report rendering from synthetic records: the HTML carries the numbers, the gallery PNGs decode."""
import re

import cv2
import numpy as np
import pytest

from linesight.export.overlay import colour_bar
from linesight.trainer import metrics as M
from linesight.trainer.compare import compare
from linesight.trainer.report import ReportRecord, advice, render_panel, write_report


def synthetic_records(seed: int = 0) -> list[ReportRecord]:
    rng = np.random.default_rng(seed)
    recs = []
    for i in range(10):
        img = rng.integers(0, 255, (48, 64), dtype=np.uint8)
        recs.append(ReportRecord(f"good/{i:03d}.png", 0, "good", float(rng.random()), img,
                                 rng.random((48, 64)).astype(np.float32), None))
    for t, shift in (("crack", 1.0), ("fray", 0.15)):
        for i in range(6):
            img = rng.integers(0, 4095, (48, 64, 3), dtype=np.uint16) if t == "crack" else \
                rng.integers(0, 255, (48, 64), dtype=np.uint8)
            k = np.zeros((48, 64), np.uint8)
            k[10:25, 20:40] = 255
            m = (rng.random((48, 64)) + shift * (k > 0)).astype(np.float32)
            recs.append(ReportRecord(f"{t}/{i:03d}.png", 1, t, float(rng.random() + shift), img, m, k))
    recs.append(ReportRecord("good/<script>.png", 0, "good", 0.05, None, None, None))  # no pixels at all
    return recs


def test_write_report_contents_and_gallery(tmp_path):
    recs = synthetic_records()
    thr = 0.9
    metrics = M.summarize(recs, thr, threshold_policy="f1_optimal")
    metrics["thresholds"]["bundle"] = {"image": thr, "policy": "f1_optimal"}  # nested extras are tolerated
    note = "features not pretrained: accuracy will be poor <b>"
    path = write_report(tmp_path / "rep", metrics, recs, title="magnetic tile <v1>", notes=[note],
                        provenance={"model_id": "abc123", "backbone": "wide_resnet50", "dataset": {"n": 29}},
                        loss_curve=[1.0, 0.6, 0.4, 0.35], n_train_images=12)
    assert path == tmp_path / "rep" / "report.html" and path.is_file()
    doc = path.read_text(encoding="utf-8")
    assert "<svg" in doc and 'id="roc"' in doc and f"AUROC {metrics['image_auroc']:.4f}" in doc
    assert "stroke-dasharray=\"4 3\"" in doc  # diagonal chance line
    assert "Training loss" in doc and "hist-good" in doc and "hist-defective" in doc
    cm = metrics["confusion_matrix"]
    conf = re.search(r"<table class='confusion'>.*?</table>", doc).group(0)
    assert re.findall(r"<td>(\d+)</td>", conf) == [str(cm[k]) for k in ("tn", "fp", "fn", "tp")]
    for t, d in metrics["per_type"].items():
        assert f"<tr><td>{t}</td><td>{d['n']}</td><td>{d['image_auroc']:.4f}</td>" in doc
    assert "<div class='warn'>&#9888; features not pretrained: accuracy will be poor &lt;b&gt;</div>" in doc
    assert "magnetic tile &lt;v1&gt;" in doc and "abc123" in doc
    assert doc.count("<script>") == 1 and "&lt;script&gt;.png" in doc  # only the table sorter; names escaped
    assert "Only 12 training images" in doc
    pngs = sorted((tmp_path / "rep" / "gallery").glob("*.png"))
    assert len(pngs) == 8 + 8  # 10 good with pixels -> top 8; 12 defects -> bottom 8
    for p in pngs:
        img = cv2.imread(str(p))
        assert img is not None and img.shape[1] == 2 * 64 + 8 + colour_bar(48, 1.0).shape[1]
        assert f"gallery/{p.name}" in doc


def test_panel_overlay_shows_map_and_mask_contour():
    m = np.zeros((40, 40), np.float32)
    m[5:15, 5:15] = 1.0
    k = np.zeros((40, 40), np.uint8)
    k[20:30, 20:30] = 1
    rec = ReportRecord("x.png", 1, "crack", 1.0, np.full((40, 40), 100, np.uint8), m, k)
    panel = render_panel(rec, 0.0, 1.0)
    over = panel[:, 44:84]
    assert np.array_equal(panel[:, 88:], colour_bar(40, 0.5, offset=0.0))  # the key of this scale, beside it
    assert over[10, 10, 2] > over[10, 10, 0] + 50  # hot region red in JET
    assert over[35, 35, 0] > over[35, 35, 2] + 50  # cold region blue
    assert (over[20, 20:30] == 255).all()  # white contour on the mask border
    big = ReportRecord("y.png", 0, "good", 0.1, np.zeros((1000, 500), np.uint16),
                       np.zeros((1000, 500), np.float32), None)
    assert render_panel(big, 0.0, 1.0).shape[0] == 256


def _metrics(type_aucs: dict, image_auroc: float, thresholds: dict, at: dict, n_good=50, n_def=40) -> dict:
    return {"image_auroc": image_auroc, "pixel_auroc": 0.95, "n_good": n_good, "n_defect": n_def,
            "per_type": {t: {"n": 20, "image_auroc": a, "recall_at_threshold": 1.0} for t, a in type_aucs.items()},
            "thresholds": thresholds, "at_thresholds": at, "confusion_matrix": {"tp": 40, "fp": 3, "tn": 47, "fn": 0},
            "chosen_threshold": 0.5, "threshold_policy": "no_miss"}


def test_advice_flags_low_auroc_type_only():
    m = _metrics({"fray": 0.62, "crack": 0.97}, 0.9, {"no_false_reject": 0.4, "no_miss": 0.6}, {})
    tips = advice(m)
    assert any(t.startswith("fray scores overlap good (AUROC 0.62") for t in tips)
    assert not any("crack" in t for t in tips)
    assert not any("barely separates" in t for t in tips)
    assert any("every threshold in [0.4, 0.6]" in t for t in tips)


def test_advice_low_overall_auroc_and_tradeoff():
    at = {"no_miss": {"tp": 40, "fp": 17, "tn": 33, "fn": 0}, "no_false_reject": {"tp": 31, "fp": 0, "tn": 50, "fn": 9}}
    m = _metrics({"fray": 0.9}, 0.6, {"no_false_reject": 0.8, "no_miss": 0.3}, at)
    tips = advice(m, n_train_images=200)
    assert any("barely separates" in t and "0.60" in t for t in tips)
    trade = [t for t in tips if "No threshold passes every good image" in t]
    assert trade and "17 of 50 good images (34.0%)" in trade[0] and "9 of 40 defects" in trade[0]
    assert not any("training images" in t for t in tips)
    assert any("Defects are localised well" in t for t in tips)


@pytest.mark.parametrize("n", [0, 1])
def test_report_without_maps_or_defects(tmp_path, n):
    recs = [ReportRecord(f"g{i}.png", 0, "good", 0.1 * i, None, None, None) for i in range(5)]
    recs += [ReportRecord("d.png", 1, "crack", 0.9, None, None, None)] * n
    metrics = M.summarize(recs, 0.3)
    doc = write_report(tmp_path, metrics, recs, title="t", notes=[], provenance={}).read_text()
    assert ("ROC not available" in doc) == (n == 0)
    assert "No images or maps were supplied" in doc


def _report(tmp_path, recs, thr=0.9, **kw):
    metrics = M.summarize(recs, thr, threshold_policy="f1_optimal")
    doc = write_report(tmp_path / "rep", metrics, recs, title="t", notes=[], provenance={}, **kw).read_text()
    return metrics, doc


def _svg(doc: str, cls: str) -> str:
    start = doc.index(f'<svg class="chart {cls}"')
    return doc[start:doc.index("</svg>", start)]


def test_report_leads_with_production_figures_at_every_policy(tmp_path):
    recs = synthetic_records()
    metrics, doc = _report(tmp_path, recs)
    order = [doc.index(h) for h in ("Production figures", "Choosing an operating point", "Findings",
                                    "Model quality (ML figures)", "Gallery", "All images", "How this was measured")]
    assert order == sorted(order)
    table = doc[doc.index("<table class='production'>"):]
    table = table[:table.index("</table>")]
    rows = re.findall(r"<tr[^>]*><td>(.*?)</td><td>(.*?)</td><td>(.*?)</td>.*?<td>(\d+) of (\d+)</td>", table)
    cm = metrics["confusion_matrix"]
    assert "chosen" in rows[0][0] and rows[0][2] == f"{cm['fp']} of {metrics['n_good']}"
    assert rows[0][3:] == (str(cm["fn"]), str(metrics["n_defect"]))
    at = metrics["at_thresholds"]
    assert [re.search(r"<small>\((\w+)\)</small>", r[0]).group(1) for r in rows[1:]] == list(at)
    for (_, _thr, fr, esc, _n_def), policy in zip(rows[1:], at):
        assert fr == f"{at[policy]['fp']} of {metrics['n_good']}" and int(esc) == at[policy]["fn"], policy
    fr_ppm = f"{1e6 * cm['fp'] / metrics['n_good']:,.0f} ppm"
    assert fr_ppm in doc[:doc.index("<table class='production'>")]  # the headline figures above the table


def test_report_charts_with_legends_outside_the_data(tmp_path):
    recs = synthetic_records()
    metrics, doc = _report(tmp_path, recs)
    for cls in ("tradeoff", "strip", "roc", "pr", "pro", "hist"):
        svg = _svg(doc, cls)
        width = float(re.search(r'width="(\d+)"', svg).group(1))
        frame = re.search(r'<rect x="(\d+)" y="\d+" width="(\d+)" height="\d+" fill="none" stroke="#888"/>', svg)
        right_edge = float(frame.group(1)) + float(frame.group(2))
        legend_x = [float(x) for x in re.findall(r'<tspan x="([\d.]+)"', svg)]
        assert legend_x and min(legend_x) > right_edge and max(legend_x) < width, cls
    trade = _svg(doc, "tradeoff")
    assert 'class="fr"' in trade and 'class="escape"' in trade and ">chosen<" in trade
    letters = re.findall(r'font-weight="bold">([A-H])</text>', trade)
    assert len(letters) == len(set(metrics["thresholds"].values()))  # one lettered line per distinct alternative
    strip = _svg(doc, "strip")
    assert strip.count('class="pt-') == len(recs)  # every image is a dot
    n_wrong = metrics["confusion_matrix"]["fp"] + metrics["confusion_matrix"]["fn"]
    assert strip.count('class="pt-wrong"') == n_wrong
    for name in ("good", "crack", "fray"):
        assert f">{name}: " in strip
    def words(svg: str) -> str:
        return " ".join(re.findall(r">([^<]+)<", svg))

    assert f"AUPRO {metrics['aupro']:.3f}" in words(_svg(doc, "pro"))
    ap = M.average_precision([r.score for r in recs], [r.label for r in recs])
    assert f"average precision {ap:.3f}" in words(_svg(doc, "pr"))


def test_image_table_lists_every_image_sortably(tmp_path):
    recs = synthetic_records()
    metrics, doc = _report(tmp_path, recs)
    table = doc[doc.index("<table class='sortable images'>"):]
    table = table[:table.index("</table>")]
    rows = re.findall(r"<tr class='(ok|wrong)'>(.*?)</tr>", table)
    assert len(rows) == len(recs) > 2 * 8  # all of them, not only the gallery's 8 + 8
    assert sum(c == "wrong" for c, _ in rows) == metrics["confusion_matrix"]["fp"] + metrics["confusion_matrix"]["fn"]
    scores = [float(v) for v in re.findall(r"<td data-v='([^']+)'>[^<]*</td><td data-v=", table)]
    assert scores == [r.score for r in recs]  # exact values to sort on, not the rounded text
    assert table.count(">view</a>") == 16  # gallery members link to their panel
    assert "addEventListener('click'" in doc and "only-wrong" in doc


def test_compare_shows_old_new_and_coloured_changes(tmp_path):
    recs = synthetic_records()
    old = M.summarize(recs, 0.9, threshold_policy="f1_optimal")
    new = M.summarize(recs, 0.5, threshold_policy="no_miss")
    c = compare(old, new, "previous evaluation old/metrics.json")
    rows = {r.name: r for r in c.rows}
    fr = rows["false-reject rate (good parts rejected)"]
    assert fr.delta > 0 and fr.change == "worse"  # a lower threshold rejects more good parts
    assert rows["escape rate (defective parts passed)"].change in ("better", "same")
    assert rows["image AUROC"].change == "same" and rows["threshold"].change is None
    assert len(c.notes) == 1 and "do not record which images" in c.notes[0]  # summarize alone keeps no set
    _, doc = _report(tmp_path, recs, comparison=c)
    table = doc[doc.index("<table class='compare'>"):]
    table = table[:table.index("</table>")]
    old_fr, new_fr = old["confusion_matrix"]["fp"] / old["n_good"], new["confusion_matrix"]["fp"] / new["n_good"]
    assert (f"<tr class='worse'><td>false-reject rate (good parts rejected)</td><td>{100 * old_fr:.1f}%</td>"
            f"<td>{100 * new_fr:.1f}%</td><td>{100 * (new_fr - old_fr):+.1f} pp (worse)</td></tr>") in table
    assert doc.index("Compared with the previous evaluation") < doc.index("Choosing an operating point")
