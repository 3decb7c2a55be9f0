"""``undertow db prune`` and the services' prune step on a real database; ``undertow status`` shows its size."""

from __future__ import annotations

import json

import pytest
from sqlalchemy import func, select

from undertow.storage import db
from undertow.storage.tables import ModelStats, TrainingRun, WindowResult
from undertow.worker.cli import main
from undertow.worker.dev.broker import free_port
from undertow.worker.runtime.service import Service, ServiceRunner
from undertow.worker.runtime.settings import MonitorSettings, TrainerSettings, load_settings

pytestmark = pytest.mark.postgres

T = 1_900_000_000.0
DAY = 86_400.0


def _window(index: int, end_ts: float) -> WindowResult:
    return WindowResult(
        model_id="m", version="1", window_index=index, feature="x0", start_ts=end_ts - 60, end_ts=end_ts, n=1000,
        psi=0.0, chi2_statistic=0.0, chi2_pvalue=1.0, missing_share=0.0, severity="none",
    )  # fmt: skip


@pytest.fixture
def sessions(engine):
    sessions = db.make_session_factory(engine)
    with sessions.begin() as session:
        session.add(ModelStats(model_id="m", predictions=1, labels=0, duplicates=0, last_event_ts=T))
        session.add_all([_window(0, T - 40 * DAY), _window(1, T - 35 * DAY), _window(2, T)])
    return sessions


def _windows(sessions) -> int:
    with sessions() as session:
        return int(session.scalar(select(func.count()).select_from(WindowResult)))


def test_db_prune_dry_run_counts_and_deletes_nothing_then_prune_deletes(db_url, sessions, capsys):
    assert main(["db", "prune", "--dry-run", "--db-url", db_url]) == 0
    out = capsys.readouterr().out
    assert "window_results     would delete          2 rows" in out
    assert "database size: " in out
    assert _windows(sessions) == 3
    assert main(["db", "prune", "--json", "--db-url", db_url]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["dry_run"] is False and report["rows"]["window_results"] == 2 and report["database_bytes"] > 0
    assert _windows(sessions) == 1
    assert main(["db", "prune", "--db-url", db_url]) == 0  # idempotent
    assert "window_results     deleted          0 rows" in capsys.readouterr().out


def test_db_prune_takes_the_retention_from_the_environment_and_refuses_a_bad_value(
    db_url, sessions, capsys, monkeypatch
):
    monkeypatch.setenv("UNDERTOW_RETAIN_WINDOWS_SECONDS", str(36 * DAY))
    assert main(["db", "prune", "--dry-run", "--json", "--db-url", db_url]) == 0
    assert json.loads(capsys.readouterr().out)["rows"]["window_results"] == 1  # only the 40-day-old window
    monkeypatch.setenv("UNDERTOW_RETAIN_WINDOWS_SECONDS", "-1")
    assert main(["db", "prune", "--db-url", db_url]) == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert "UNDERTOW_RETAIN_WINDOWS_SECONDS" in line and "greater than 0" in line
    for odd in ("nan", "inf", "-inf"):  # refused as what they are, not by the bound NaN fails by accident
        monkeypatch.setenv("UNDERTOW_RETAIN_WINDOWS_SECONDS", odd)
        assert main(["db", "prune", "--db-url", db_url]) == 2
        (line,) = capsys.readouterr().err.strip().splitlines()
        assert "UNDERTOW_RETAIN_WINDOWS_SECONDS" in line and "finite number" in line, odd
    assert _windows(sessions) == 3  # nothing deleted by a refused setting


def test_status_shows_the_database_size(db_url, sessions, capsys):
    broker = f"127.0.0.1:{free_port()}"  # nobody listens: status still answers, lag unknown
    assert main(["--log-level", "ERROR", "status", "--db-url", db_url, "--bootstrap-servers", broker]) == 0
    assert "database size: " in capsys.readouterr().out.splitlines()[-1]
    assert main(["--log-level", "ERROR", "status", "--json", "--db-url", db_url, "--bootstrap-servers", broker]) == 0
    assert json.loads(capsys.readouterr().out)["database_bytes"] > 0


def _runner(db_url: str, name: str, cls=MonitorSettings, **settings) -> ServiceRunner:
    values = {"db_url": db_url, "kafka_bootstrap_servers": "127.0.0.1:9"} | settings
    return ServiceRunner(load_settings(values, cls), Service(name=name, topics=[], parse=lambda r: r, stages=[]))


def test_the_monitors_prune_step_runs_at_most_once_per_interval(db_url, sessions):
    runner = _runner(db_url, "monitor")
    runner.prune_if_due()
    assert _windows(sessions) == 1
    with sessions.begin() as session:
        session.add(_window(1, T - 35 * DAY))  # due again, but the interval (300 s) has not passed
    runner.prune_if_due()
    assert _windows(sessions) == 2
    runner.engine.dispose()


def test_a_prune_interval_of_zero_turns_the_services_pruning_off(db_url, sessions):
    runner = _runner(db_url, "monitor", prune_interval_seconds=0)
    runner.prune_if_due()
    assert _windows(sessions) == 3
    runner.engine.dispose()


def test_the_trainer_prunes_its_runs_and_not_the_monitors_tables(db_url, sessions):
    with sessions.begin() as session:
        session.add(TrainingRun(run_id="old", model_id="m", status="rejected", trigger="{}", accepted_at=0.0,
                                finished_at=1.0))  # fmt: skip
    runner = _runner(db_url, "trainer", TrainerSettings)
    runner.prune_if_due()
    with sessions() as session:
        assert session.scalar(select(func.count()).select_from(TrainingRun)) == 0
    assert _windows(sessions) == 3
    runner.engine.dispose()
