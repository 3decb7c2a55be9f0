"""The report as a reader sees it, in a headless Chromium (Debian's ``chromium``, driven by playwright): the
verdict is the first thing on the page; no two texts of a figure overlap (each ``<text>`` of the inline SVG
measured with getBoundingClientRect, every pair compared); every figure's legend has an entry for each line
(the PSI figure one per feature and one for the model output); the model cards are sections, with no JSON;
nothing is fetched from the network. A screenshot of each page is kept as a test artifact: in the test's
tmp dir and in ``$UNDERTOW_TEST_ARTIFACTS`` (default ``test-artifacts/`` in the repository, ignored by git).

``check_report`` is shared with tests/worker/test_demo.py, which runs it on the demo's report."""

import os
import re
import shutil
from pathlib import Path

import pytest

from tests.conftest import REPO
from tests.worker.test_report_tables import scenario
from undertow.models.profile import PREDICTION_FEATURE
from undertow.worker.report.build import write_report

ARTIFACTS = Path(os.environ.get("UNDERTOW_TEST_ARTIFACTS", REPO / "test-artifacts"))
OVERLAP_PX = 0.5  # boxes touching by less than this are not overlapping (rounding of glyph extents)

# Every <text> of every figure: its figure, its text, its box; and the legend entries (texts under the
# legend group, whose id is "<figure>-legend").
MEASURE = """() => [...document.querySelectorAll('figure[id^="fig-"]')].map(f => ({
  figure: f.id.slice(4),
  texts: [...f.querySelectorAll('svg text')].map(t => {
    const r = t.getBoundingClientRect();
    return {text: t.textContent.trim(), x: r.left, y: r.top, w: r.width, h: r.height};
  }).filter(t => t.text && t.w > 0 && t.h > 0),
  legend: [...f.querySelectorAll('svg g[id$="-legend"] text')].map(t => t.textContent.trim()),
}))"""

PAGE = """() => ({
  first: document.querySelector('main').firstElementChild.id,
  verdictTop: document.getElementById('verdict').getBoundingClientRect().top,
  otherTops: [...document.querySelectorAll('main > h2, main > table, main > figure')]
    .map(e => e.getBoundingClientRect().top),
  headline: document.getElementById('headline').textContent,
  cards: [...document.querySelectorAll('details.card')].map(c => ({
    id: c.id,
    sections: [...c.querySelectorAll('section.card-section > h3')].map(h => h.textContent),
    text: c.textContent,
  })),
  pre: document.querySelectorAll('pre').length,
  features: [...document.querySelectorAll('#features tr[data-feature]')].map(r => r.dataset.feature),
})"""


def chromium() -> str:
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found is None:
        if os.environ.get("UNDERTOW_REQUIRE_BROWSER"):
            pytest.fail("UNDERTOW_REQUIRE_BROWSER is set and no chromium is installed")
        pytest.skip("Debian's chromium is not installed (.ci/run installs it)")
    return found


def overlaps(texts: list[dict]) -> list[tuple[str, str]]:
    """Pairs of texts whose boxes intersect by more than OVERLAP_PX both ways."""
    found = []
    for i, a in enumerate(texts):
        for b in texts[i + 1 :]:
            across = min(a["x"] + a["w"], b["x"] + b["w"]) - max(a["x"], b["x"])
            down = min(a["y"] + a["h"], b["y"] + b["h"]) - max(a["y"], b["y"])
            if across > OVERLAP_PX and down > OVERLAP_PX:
                found.append((a["text"], b["text"]))
    return found


def check_report(report: Path, screenshot: Path, legends: dict[str, set[str]]) -> dict:
    """Open ``report``, assert what every report must show, keep its screenshot (``screenshot`` and the same
    name under ARTIFACTS); ``legends``: entries each figure's legend must have. What was measured, for
    the caller's own checks."""
    playwright = pytest.importorskip("playwright.sync_api")
    executable = chromium()
    requests: list[str] = []
    with playwright.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=executable, args=["--no-sandbox"])
        try:
            page = browser.new_page(viewport={"width": 1200, "height": 900})
            page.on("request", lambda r: requests.append(r.url))
            page.goto(report.as_uri())
            page.wait_for_load_state("load")
            figures = page.evaluate(MEASURE)
            layout = page.evaluate(PAGE)
            page.screenshot(path=str(screenshot), full_page=True)
        finally:
            browser.close()
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(screenshot, ARTIFACTS / screenshot.name)
    assert screenshot.stat().st_size > 50_000

    assert requests == [report.as_uri()], requests  # the page itself, and nothing from the network
    assert layout["first"] == "verdict" and all(layout["verdictTop"] < top for top in layout["otherTops"]), layout
    by_name = {f["figure"]: f for f in figures}
    assert set(legends) <= set(by_name), (set(legends), set(by_name))
    for name, figure in by_name.items():
        assert len(figure["texts"]) > 5, figure
        assert overlaps(figure["texts"]) == [], (name, overlaps(figure["texts"]))
        assert legends.get(name, set()) <= set(figure["legend"]), (name, figure["legend"])
    assert layout["pre"] == 0 and layout["cards"], layout["cards"]
    for card in layout["cards"]:
        assert {"Model", "Data", "Training", "Evaluation", "Lineage"} <= set(card["sections"]), card
        assert "{" not in card["text"] and not re.search(r"\b(null|None)\b", card["text"]), card["text"]
    return {"figures": by_name, **layout}


def expected_legends(features: list[str], classifier: bool, champion: str = "1") -> dict[str, set[str]]:
    """What each figure's legend must list for a model with these features (the profile's, output included)
    and this champion version."""
    psi = {f for f in features if f != PREDICTION_FEATURE} | {"model output (__prediction__)"}
    legends = {
        "psi": psi | {"moderate band (0.1)", "significant band (0.25)"},
        "error": {"mean error (bucketed)", "baseline", "rolling-mean threshold"},
        "distributions": {f"reference (version {champion}'s reference sample)"},
        "prediction": {"reference sample"},
    }
    if classifier:
        legends["performance"] = {
            "realised accuracy (joined labels, bucketed)",
            "estimated accuracy (monitor, no labels)",
            "validation accuracy",
        }
    return legends


@pytest.mark.parametrize("task", ["regression", "classification"])
def test_a_drifting_model_s_report_reads_cleanly_in_headless_chromium(engine, tmp_path, task):
    chromium()
    s = scenario(engine, tmp_path, task, drifting=True)
    report = write_report(engine.url.render_as_string(hide_password=False), s.model_id, tmp_path / "report.html")
    legends = expected_legends(["x0", "x1", "plan", PREDICTION_FEATURE], task == "classification")
    legends["psi"] |= {"past 0.5: value written under the mark"}  # x0 and x1 run past the clip
    legends["error"] |= {"concept alarm (estimated start)"}
    seen = check_report(report, tmp_path / f"report-drifting-{task}.png", legends)
    assert seen["headline"].startswith(
        "Drift on version 1, the champion, since 05 Dec 2026 20:50:00 UTC: inputs x0, x1;"
    )
    assert seen["features"][:4] == ["x0", "x1", "plan", PREDICTION_FEATURE]
    psi_texts = {t["text"] for t in seen["figures"]["psi"]["texts"]}
    assert "3.1" in psi_texts  # the largest PSI, past the clip, is written out
