"""The evaluation report in a real browser (Debian chromium via Playwright): the one inline script sorts and filters
the image table, the page raises no JavaScript error, and every chart SVG is laid out with a nonzero size.

The report is built like tests/test_report.py does (synthetic records -> metrics -> write_report, no evaluate run).
Each check is a function that the real page must pass and that a scratch copy with the script removed or broken,
or the charts hidden, must fail: that proves the checks observe the page, not the HTML source.
"""
from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from test_report import synthetic_records

from linesight.trainer import metrics as M
from linesight.trainer.report import SORT_JS, write_report


@dataclass
class Report:
    path: Path
    n_rows: int
    n_wrong: int
    n_charts: int


@dataclass
class Opened:
    page: object  # playwright.sync_api.Page
    errors: list[str] = field(default_factory=list)


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory) -> Report:
    recs = synthetic_records()
    metrics = M.summarize(recs, 0.9, threshold_policy="f1_optimal")
    path = write_report(tmp_path_factory.mktemp("browser") / "rep", metrics, recs, title="browser", notes=[],
                        provenance={}, loss_curve=[1.0, 0.6, 0.4, 0.35], n_train_images=12)
    cm = metrics["confusion_matrix"]
    n_wrong = cm["fp"] + cm["fn"]
    assert 0 < n_wrong < len(recs)  # the filter must hide some rows and keep some
    return Report(path, len(recs), n_wrong, path.read_text(encoding="utf-8").count('<svg class="chart '))


@pytest.fixture
def open_page(chromium_browser) -> Iterator[Callable[[Path], Opened]]:  # noqa: ANN001 - playwright Browser
    """Open a file in a fresh page that records uncaught exceptions and console errors (failed loads included)."""
    pages = []

    def open_(path: Path) -> Opened:
        page = chromium_browser.new_page()
        pages.append(page)
        opened = Opened(page)
        page.on("pageerror", lambda e: opened.errors.append(f"pageerror: {e}"))
        page.on("console", lambda m: opened.errors.append(f"console.error: {m.text}") if m.type == "error" else None)
        page.goto(path.as_uri(), wait_until="load")
        return opened

    yield open_
    for p in pages:
        p.close()


def scratch_copy(report: Report, name: str, old: str, new: str) -> Path:
    """A copy of the report beside it (so gallery/ still resolves) with one exact edit."""
    doc = report.path.read_text(encoding="utf-8")
    assert doc.count(old) == 1, old
    out = report.path.with_name(name)
    out.write_text(doc.replace(old, new), encoding="utf-8")
    return out


# ------------------------------------------------------------------------------- what the browser shows
def column(page, header: str) -> list[str]:  # noqa: ANN001
    """The sort key (data-v, else text) of every row of the image table's `header` column, in DOM order."""
    return page.evaluate("""h => {
        const t = document.querySelector('table.images');
        const i = Array.from(t.tHead.rows[0].cells).findIndex(c => c.textContent.trim() === h);
        if (i < 0) throw new Error('no column ' + h);
        return Array.from(t.tBodies[0].rows).map(r => {
            const c = r.cells[i]; return c.hasAttribute('data-v') ? c.getAttribute('data-v') : c.textContent; });
    }""", header)


def click_header(page, header: str) -> None:  # noqa: ANN001
    page.locator("table.images thead th").filter(has_text=header).filter(
        has_not_text=f"{header} /").first.click()  # "score", not "score / threshold"


def visible_rows(page) -> list[dict]:  # noqa: ANN001
    """Rows a user sees (laid out, i.e. not display:none): their class and 'correct' cell."""
    return page.evaluate("""() => Array.from(document.querySelectorAll('table.images tbody tr'))
        .filter(r => r.getClientRects().length > 0)
        .map(r => ({cls: r.className, correct: r.cells[7].textContent}))""")


# ------------------------------------------------------------------------------- the checks
def check_score_sort(page) -> None:  # noqa: ANN001
    """First click on "score" sorts ascending, the second descending; whole rows move (file keeps its score)."""
    before = [float(v) for v in column(page, "score")]
    pairs = sorted(zip(column(page, "file"), before))
    assert before != sorted(before) and before != sorted(before, reverse=True)  # else sorting proves nothing
    click_header(page, "score")
    asc = [float(v) for v in column(page, "score")]
    assert asc == sorted(before), f"first click on 'score' should sort ascending: {asc}"
    assert sorted(zip(column(page, "file"), asc)) == pairs, "cells moved without their row"
    click_header(page, "score")
    desc = [float(v) for v in column(page, "score")]
    assert desc == sorted(before, reverse=True), f"second click on 'score' should sort descending: {desc}"


def check_numeric_sort(page, n_rows: int) -> None:  # noqa: ANN001
    """"#" sorts as numbers (1, 2, ..., 10), not as text (1, 10, 11, ..., 2)."""
    click_header(page, "score")  # leave record order first, so "#" has something to restore
    click_header(page, "#")
    assert [int(v) for v in column(page, "#")] == list(range(1, n_rows + 1))


def check_only_wrong(page, n_rows: int, n_wrong: int) -> None:  # noqa: ANN001
    assert len(visible_rows(page)) == n_rows
    page.locator("#only-wrong").check()
    shown = visible_rows(page)
    assert len(shown) == n_wrong, f"'only wrong' shows {len(shown)} rows, {n_wrong} verdicts are wrong"
    assert all(r["cls"] == "wrong" and r["correct"] == "NO" for r in shown), shown
    page.locator("#only-wrong").uncheck()
    assert len(visible_rows(page)) == n_rows


def check_charts(page, n_charts: int) -> None:  # noqa: ANN001
    sizes = page.evaluate("""() => Array.from(document.querySelectorAll('svg.chart')).map(s => {
        const b = s.getBoundingClientRect(); return [s.getAttribute('class'), b.width, b.height]; })""")
    assert len(sizes) == n_charts >= 6, sizes
    assert all(w > 0 and h > 0 for _, w, h in sizes), f"charts without a rendered box: {sizes}"


def check_no_errors(opened: Opened) -> None:
    assert opened.errors == [], opened.errors


# ------------------------------------------------------------------------------- the tests
def test_score_header_sorts_rows_ascending_then_descending(report, open_page):
    opened = open_page(report.path)
    check_score_sort(opened.page)
    check_numeric_sort(opened.page, report.n_rows)
    check_no_errors(opened)


def test_only_wrong_filter_hides_correct_rows_even_after_sorting(report, open_page):
    opened = open_page(report.path)
    check_only_wrong(opened.page, report.n_rows, report.n_wrong)
    click_header(opened.page, "score")
    check_only_wrong(opened.page, report.n_rows, report.n_wrong)
    check_no_errors(opened)


def test_page_has_no_js_errors_and_every_chart_renders(report, open_page):
    opened = open_page(report.path)
    check_charts(opened.page, report.n_charts)
    opened.page.locator("table.images thead th").first.click()  # exercise the script's click path too
    check_no_errors(opened)


def test_checks_fail_on_broken_copies_of_the_page(report, open_page):
    """Controls: each check above fails when the page does not do what it checks."""
    no_script = open_page(scratch_copy(report, "no-script.html", f"<script>{SORT_JS}</script>", ""))
    with pytest.raises(AssertionError, match="ascending"):
        check_score_sort(no_script.page)  # the order did not change: the test watches the script's work
    with pytest.raises(AssertionError, match="'only wrong' shows"):
        check_only_wrong(no_script.page, report.n_rows, report.n_wrong)

    assert "nx-ny" in SORT_JS
    as_text = open_page(scratch_copy(report, "text-compare.html", "nx-ny", "String(nx).localeCompare(String(ny))"))
    check_score_sort(as_text.page)  # scores in [0, 2) sort the same as text...
    with pytest.raises(AssertionError):
        check_numeric_sort(as_text.page, report.n_rows)  # ...but row numbers do not

    throws = open_page(scratch_copy(report, "throws.html", "</script>",
                                    "\nconsole.error('control error');null.x;</script>"))
    with pytest.raises(AssertionError, match="control error"):
        check_no_errors(throws)
    assert any(e.startswith("pageerror:") for e in throws.errors), throws.errors

    hidden = open_page(scratch_copy(report, "hidden-charts.html", "</style>", "svg.chart{display:none}</style>"))
    with pytest.raises(AssertionError, match="charts without a rendered box"):
        check_charts(hidden.page, report.n_charts)
