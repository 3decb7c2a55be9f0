"""The README's first command, shortened: the whole loop through the real services, then the report in a
headless Chromium."""

import json
import subprocess
import sys

import pytest
from sqlalchemy import create_engine, text

from tests.conftest import REPO
from tests.worker.test_report_browser import check_report, chromium, expected_legends


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


def test_the_demo_s_report_reads_cleanly_in_headless_chromium(demo, tmp_path):
    """The checks of tests/worker/test_report_browser.py on the report of a real run: verdict first, no
    overlapping text in any figure, complete legends, cards as sections, nothing from the network; its
    screenshot kept as test-artifacts/report.png."""
    chromium()
    workdir, _ = demo
    engine = create_engine(f"sqlite:///{workdir / 'undertow.db'}")
    with engine.connect() as conn:
        version, profile = conn.execute(
            text("SELECT version, profile FROM model_versions WHERE model_id = 'housing' AND stage = 'champion'")
        ).one()
    engine.dispose()
    features = list(json.loads(profile)["features"])
    legends = expected_legends(features, classifier=False, champion=version)
    legends["error"] |= {"concept alarm (estimated start)", "champion changed (new reference)"}
    seen = check_report(workdir / "report.html", tmp_path / "report.png", legends)
    assert seen["features"][: len(features)] == [f for f in features if f != "__prediction__"] + ["__prediction__"]
    assert seen["headline"] == f"No drift on version {version}, the champion"  # retrained on the new market
    assert len(seen["cards"]) == 2


def test_ctrl_c_stops_the_demo_and_its_services_within_seconds_without_a_traceback(tmp_path):
    """Ctrl-C (SIGINT to the terminal's process group: the demo and the services it started) while the
    requests go out: the demo stops its services and exits 130 saying where the state is, instead of
    waiting minutes for a decision that no service is left to make."""
    import os
    import signal
    import time

    from tests.conftest import wait_for

    out = tmp_path / "out.txt"
    with open(out, "w") as sink:
        proc = subprocess.Popen(
            [sys.executable, "-m", "undertow.worker.cli", "demo", "--workdir", str(tmp_path / "state")],
            cwd=REPO,
            stdout=sink,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,  # its own process group, as a terminal gives it
        )
    try:
        wait_for(lambda: "-- stationary" in out.read_text() or proc.poll() is not None, 180, "requests to start")
        assert proc.poll() is None, out.read_text()[-3000:]
        os.killpg(proc.pid, signal.SIGINT)
        asked = time.monotonic()
        assert proc.wait(timeout=90) == 130, out.read_text()[-3000:]
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    text_out = out.read_text()
    assert "Traceback" not in text_out, text_out[-3000:]
    assert f"interrupted: the services are stopped; the state so far is in {tmp_path / 'state'}" in text_out
    assert "waiting for the trainer's decision" not in text_out
    assert time.monotonic() - asked < 90
