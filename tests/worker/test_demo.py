"""The README's first command, shortened: the whole loop through the real services, then the report in a
headless Chromium."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text

from tests.conftest import REPO

ARTIFACTS = Path(os.environ.get("UNDERTOW_TEST_ARTIFACTS", REPO / "test-artifacts"))


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("demo")
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "undertow.worker.cli",
            "--log-level",
            "WARNING",
            "demo",
            "--events",
            "6000",
            "--workdir",
            str(workdir),
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return workdir, done.stdout


def test_the_demo_shows_data_drift_concept_drift_retraining_the_gate_and_the_promotion_in_that_order(demo):
    workdir, output = demo
    engine = create_engine(f"sqlite:///{workdir / 'undertow.db'}")
    with engine.connect() as conn:
        first = {
            kind: conn.execute(text("SELECT min(event_ts) FROM alerts WHERE type = :t"), {"t": kind}).scalar()
            for kind in ("undertow.drift.data", "undertow.drift.concept")
        }
        concept = [
            json.loads(c)["data"]
            for (c,) in conn.execute(
                text("SELECT cloudevent FROM alerts WHERE type = 'undertow.drift.concept' ORDER BY event_ts")
            )
        ]
        requested = conn.execute(text("SELECT min(created_ts) FROM retrain_requests")).scalar()
        run = conn.execute(
            text(
                "SELECT status, accepted_at, finished_at, metrics, candidate_version "
                "FROM training_runs WHERE request_id IS NOT NULL"
            )
        ).one()
        promoted = conn.execute(
            text("SELECT changed_at, version FROM champion_history WHERE action = 'promoted'")
        ).one()
        served = dict(conn.execute(text("SELECT version, count(*) FROM labelled_pairs GROUP BY version")).all())
    engine.dispose()
    started = next(c for c in concept if c["episode"] == "started")
    assert first["undertow.drift.data"] < first["undertow.drift.concept"] <= requested
    assert run.status == "promoted" and requested <= run.accepted_at <= run.finished_at <= promoted.changed_at + 1
    gate = json.loads(run.metrics)["gate"]
    assert gate["improvement_low"] > 0 and gate["candidate_mean_error"] < gate["champion_mean_error"]
    assert promoted.version == run.candidate_version == "2"
    assert served.get("2", 0) > 0  # the server answered with version 2 after the promotion: labelled pairs of it
    assert started["detector"] in ("page_hinkley", "rolling_mean", "rolling_mean_long", "prediction_time_cusum")
    for words in (
        "data drift: median_income",
        "concept drift started",
        "retrain requested",
        "gate passed",
        "version 2 is champion",
        "the server answers with version 2",
        "report:",
    ):
        assert words in output, output
    assert (workdir / "report.html").stat().st_size < 2_000_000


def test_the_report_renders_every_figure_offline_in_headless_chromium(demo):
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        if os.environ.get("UNDERTOW_REQUIRE_BROWSER"):
            pytest.fail("UNDERTOW_REQUIRE_BROWSER is set and no chromium is installed")
        pytest.skip("Debian's chromium is not installed (.ci/run installs it)")
    playwright = pytest.importorskip("playwright.sync_api")
    workdir, _ = demo
    report = workdir / "report.html"
    requests = []
    with playwright.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 1200, "height": 900})
        page.on("request", lambda r: requests.append(r.url))
        page.goto(report.as_uri())
        page.wait_for_load_state("networkidle")
        sizes = {
            fig: page.eval_on_selector(
                f"#fig-{fig} svg",
                "e => { const r = e.getBoundingClientRect(); "
                "return [r.width, r.height, e.querySelectorAll"
                "('path, rect, use, line').length]; }",
            )
            for fig in ("distributions", "psi", "error")
        }
        rows = page.eval_on_selector_all("#alerts tr", "rows => rows.length")
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(ARTIFACTS / "report.png"), full_page=True)
        browser.close()
    for fig, (width, height, marks) in sizes.items():
        assert width > 300 and height > 150 and marks > 20, (fig, width, height, marks)
    assert rows > 2
    assert requests == [report.as_uri()], requests  # the page itself, and nothing from the network
    assert (ARTIFACTS / "report.png").stat().st_size > 10_000
