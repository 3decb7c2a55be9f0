"""Storage against a real database (SQLite, or PostgreSQL via UNDERTOW_DB_URL)."""

from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import inspect

from undertow.errors import ConfigError, StaleOffsets
from undertow.storage import db, repo
from undertow.storage.tables import Base, ModelStats

pytestmark = pytest.mark.postgres


HEAD = ScriptDirectory.from_config(db.alembic_config()).get_current_head()
LEGACY = Path(__file__).resolve().parent.parent / "data"


def _schema_differences(engine) -> list:
    with engine.connect() as conn:
        return compare_metadata(MigrationContext.configure(conn, opts={"compare_type": True}), Base.metadata)


def test_migrate_is_idempotent_and_matches_the_tables(engine):
    assert db.migrate(engine) == HEAD
    assert db.migrate(engine) == HEAD
    assert {"consumer_offsets", "seen_blocks", "outbox", "alembic_version"} <= set(inspect(engine).get_table_names())
    assert _schema_differences(engine) == []


def test_a_database_of_the_last_hand_written_schema_upgrades_in_place(db_url):
    """Offsets, counts and detector state of a version-3 database survive the move to Alembic."""
    engine = db.make_engine(db_url)
    ddl = (LEGACY / f"legacy_v3_{engine.dialect.name}.sql").read_text()
    with engine.begin() as conn:
        for statement in ddl.split(";\n"):
            body = "\n".join(line for line in statement.splitlines() if not line.startswith("--")).strip()
            if body:
                conn.exec_driver_sql(body)
        conn.exec_driver_sql(
            "INSERT INTO consumer_offsets (group_id, topic, partition, next_offset) "
            "VALUES ('undertow-monitor', 'undertow.predictions', 0, 12345)"
        )
        conn.exec_driver_sql(
            "INSERT INTO model_stats (model_id, predictions, labels, duplicates) VALUES ('housing', 12000, 11000, 7)"
        )
        conn.exec_driver_sql(
            "INSERT INTO concept_state (model_id, version, labels, error_sum, in_episode, episodes, "
            "silenced_alarms, calm_evaluations, detectors) VALUES ('housing', '1', 11000, 4321.5, FALSE, 1, 2, 0, "
            "'{\"page_hinkley\": [11000.0, 0.1, 3.0, 4.0, -1.0, 5.0, 0.0]}')"
        )
    try:
        assert db.migrate(engine) == HEAD
        with engine.connect() as conn:
            assert conn.exec_driver_sql("SELECT next_offset, topic_id FROM consumer_offsets").one() == (12345, None)
            assert conn.exec_driver_sql("SELECT predictions, labels, duplicates FROM model_stats").one() == (
                12000,
                11000,
                7,
            )
            assert conn.exec_driver_sql("SELECT labels, error_sum, detectors FROM concept_state").one() == (
                11000,
                4321.5,
                '{"page_hinkley": [11000.0, 0.1, 3.0, 4.0, -1.0, 5.0, 0.0]}',
            )
        tables = set(inspect(engine).get_table_names())
        assert "schema_version" not in tables and "partition_gaps" in tables
        assert _schema_differences(engine) == []
    finally:
        engine.dispose()


def test_stored_evidence_budgets_are_rescaled_to_the_model_so_alert_rates_stay(db_url):
    """Revision 0005: a budget per feature (20,000, the old default) becomes one per model (20,000 / 4 inputs)."""
    import json

    from alembic import command

    engine = db.make_engine(db_url)
    config = db.alembic_config()
    profile = json.dumps({"rows": 10, "features": {"a": {}, "b": {}, "c": {}, "d": {}, "__prediction__": {}}})
    try:
        with engine.begin() as conn:
            config.attributes["connection"] = conn
            command.upgrade(config, "0004")
            conn.exec_driver_sql(
                "INSERT INTO model_versions (model_id, version, stage, created_at, profile, drift_config, "  # noqa: UP031 - the SQL holds braces
                "feature_schema, model_card) VALUES ('m', '1', 'champion', 0, %s, %s, '{}', '{}')"
                % (_quote(profile), _quote(json.dumps({"window_size": 1000, "evidence_false_alarm_windows": 20000})))
            )
        assert db.migrate(engine) == HEAD
        with engine.connect() as conn:
            stored = json.loads(conn.exec_driver_sql("SELECT drift_config FROM model_versions").scalar_one())
        assert stored == {"window_size": 1000, "evidence_false_alarm_windows": 5000.0}
    finally:
        engine.dispose()


def _quote(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def test_bad_url_is_a_config_error():
    with pytest.raises(ConfigError, match="invalid database URL"):
        db.make_engine("not a url")
    with pytest.raises(ConfigError):
        db.make_engine("nosuchdialect://x")


def test_offsets_compare_and_set_fences_a_stale_writer(engine):
    sessions = db.make_session_factory(engine)
    with sessions.begin() as s:
        repo.advance_offsets(s, "g", {("t", 0): (None, 10)})
    with sessions.begin() as s:
        repo.advance_offsets(s, "g", {("t", 0): (10, 25)})
    with pytest.raises(StaleOffsets):
        with sessions.begin() as s:
            repo.add_model_counts(s, "m", predictions=5)
            repo.advance_offsets(s, "g", {("t", 0): (10, 40)})
    with pytest.raises(StaleOffsets):
        with sessions.begin() as s:
            repo.advance_offsets(s, "g", {("t", 0): (None, 1)})
    with engine.connect() as conn:
        assert repo.load_offsets(conn, "g", [("t", 0), ("t", 1)]) == {("t", 0): 25}
    with sessions.begin() as s:
        assert s.get(ModelStats, "m") is None  # rolled back with the failed offset move


def test_outbox_round_trip_keeps_bytes_and_headers(engine):
    sessions = db.make_session_factory(engine)
    with sessions.begin() as s:
        repo.enqueue(s, "a", b"k", b"\x00\xffvalue", [("h", b"\x01\x02")])
        repo.enqueue(s, "b", None, None)
    with sessions.begin() as s:
        pending = repo.pending_outbox(s, 10)
        assert [(m.topic, m.key, m.value) for m in pending] == [("a", b"k", b"\x00\xffvalue"), ("b", None, None)]
        assert repo.decode_headers(pending[0]) == [("h", b"\x01\x02")]
        repo.delete_outbox(s, [pending[0].id])
    with sessions.begin() as s:
        assert [m.topic for m in repo.pending_outbox(s, 10)] == ["b"]


def test_model_counts_accumulate_with_event_time_bounds(engine):
    sessions = db.make_session_factory(engine)
    with sessions.begin() as s:
        repo.add_model_counts(s, "m", predictions=3, min_ts=100.0, max_ts=200.0)
    with sessions.begin() as s:
        repo.add_model_counts(s, "m", labels=2, duplicates=1, min_ts=50.0, max_ts=150.0)
    with sessions.begin() as s:
        (stats,) = repo.model_stats(s)
        assert (stats.predictions, stats.labels, stats.duplicates) == (3, 2, 1)
        assert (stats.first_event_ts, stats.last_event_ts) == (50.0, 200.0)
