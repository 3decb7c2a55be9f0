"""Retention (storage/retention.py) against a real database: each table's rule deletes what it should and keeps
what is still needed; a dry run counts exactly what a prune deletes; pruning twice deletes nothing more."""

from __future__ import annotations

import json

import pytest
from sqlalchemy import func, select

from undertow.storage import db, retention
from undertow.storage.retention import DAY, Pruner, Retention
from undertow.storage.tables import (
    Alert,
    ModelStats,
    ModelVersion,
    PartitionGap,
    RetrainRequest,
    TrainingRun,
    WindowResult,
)

pytestmark = pytest.mark.postgres

T = 1_900_000_000.0  # the model's newest event (event time)
WALL = 1_950_000_000.0  # the wall clock of the pruner: far past T, which event-time rules must ignore
OLD = T - 100 * DAY  # older than every default event-time retention but the requests' 180 days
ANCIENT = T - 400 * DAY


@pytest.fixture
def sessions(engine):
    return db.make_session_factory(engine)


def pruner(sessions, **kwargs) -> Pruner:
    return Pruner(sessions, Retention(), clock=lambda: WALL, **kwargs)


def ids(sessions, column) -> set:
    with sessions() as session:
        return set(session.scalars(select(column)))


def add(sessions, *rows) -> None:
    with sessions.begin() as session:
        session.add_all(rows)


def version(model_id: str, name: str, stage: str, run_id: str | None = None) -> ModelVersion:
    return ModelVersion(
        model_id=model_id, version=name, stage=stage, created_at=0.0, profile="{}", drift_config="{}", run_id=run_id
    )


def stats(model_id: str = "m", last: float = T) -> ModelStats:
    return ModelStats(model_id=model_id, predictions=1, labels=0, duplicates=0, first_event_ts=0.0, last_event_ts=last)


def window(version: str, index: int, end_ts: float, model_id: str = "m", feature: str = "x0") -> WindowResult:
    return WindowResult(
        model_id=model_id,
        version=version,
        window_index=index,
        feature=feature,
        start_ts=end_ts - 60,
        end_ts=end_ts,
        n=1000,
        psi=0.01,
        ks_statistic=None,
        ks_pvalue=None,
        chi2_statistic=1.0,
        chi2_pvalue=0.5,
        missing_share=0.0,
        severity="none",
    )


def alert(alert_id: str, version: str, ts: float, episode: str, feature: str = "x0", **data) -> Alert:
    event = {"id": alert_id, "data": {"model_id": "m", "model_version": version, "episode": episode, **data}}
    return Alert(
        id=alert_id,
        model_id="m",
        version=version,
        type="undertow.drift.data",
        feature=feature,
        severity="significant",
        event_ts=ts,
        cloudevent=json.dumps(event),
    )


def request(request_id: str, ts: float, status: str, alert_ids: list[str] = ()) -> RetrainRequest:  # type: ignore[assignment]
    return RetrainRequest(
        request_id=request_id,
        model_id="m",
        version="1",
        status=status,
        created_ts=ts,
        alert_ids=json.dumps(list(alert_ids)),
        cloudevent="{}",
    )


def run(run_id: str, status: str, finished_at: float | None) -> TrainingRun:
    return TrainingRun(
        run_id=run_id, model_id="m", status=status, trigger="{}", accepted_at=0.0, finished_at=finished_at
    )


def test_windows_older_than_the_retention_go_but_each_versions_newest_stays(sessions):
    add(
        sessions,
        stats(),
        # Version 1 ended long ago: all but its newest window go (status and the report show that one).
        window("1", 0, ANCIENT),
        window("1", 1, ANCIENT + 60),
        window("1", 1, ANCIENT + 60, feature="x1"),
        # Version 2: two old windows go, the recent ones stay.
        window("2", 0, OLD),
        window("2", 1, OLD + 60),
        window("2", 2, T - 29 * DAY),
        window("2", 3, T),
        # Another model whose newest event is as old as these windows: its clock, not m's, judges them.
        stats("backfill", last=ANCIENT + DAY),
        window("1", 0, ANCIENT, model_id="backfill"),
        window("1", 1, ANCIENT + DAY, model_id="backfill"),
    )
    assert pruner(sessions).dry_run()["window_results"] == 3
    deleted, finished = pruner(sessions).prune()
    assert (deleted["window_results"], finished) == (3, True)
    with sessions() as session:
        left = set(session.execute(select(WindowResult.model_id, WindowResult.version, WindowResult.window_index)))
    assert left == {("m", "1", 1), ("m", "2", 2), ("m", "2", 3), ("backfill", "1", 0), ("backfill", "1", 1)}
    assert pruner(sessions).prune()[0]["window_results"] == 0  # idempotent


def test_a_model_without_an_event_clock_keeps_its_windows(sessions):
    """No model_stats row (no event counted yet): nothing says how old its rows are, so nothing goes."""
    add(sessions, window("1", 0, ANCIENT), window("1", 1, ANCIENT + 60))
    assert pruner(sessions).prune()[0]["window_results"] == 0


def test_alerts_go_after_the_retention_unless_an_open_episode_or_an_open_request_needs_them(sessions):
    add(
        sessions,
        stats(),
        version("m", "1", "archived"),
        version("m", "2", "champion"),
        # An episode of the champion that started and ended long ago: both go.
        alert("ended-start", "2", OLD, "started", feature="x0"),
        alert("ended-end", "2", OLD + 1, "ended", feature="x0"),
        # An episode of the champion still open: its start and escalation stay, however old.
        alert("open-start", "2", OLD, "started", feature="x1"),
        alert("open-up", "2", OLD + 1, "escalated", feature="x1"),
        # The same feature in another segment ended: a stream of its own, which does not end x1's.
        alert("seg-start", "2", OLD, "started", feature="x1", segment={"region": "north"}),
        alert("seg-end", "2", OLD + 2, "ended", feature="x1", segment={"region": "north"}),
        # An open episode of an archived version never ends: it goes.
        alert("archived-open", "1", ANCIENT, "started", feature="x2"),
        # Named by an open retrain request (the trainer reads it): stays.
        alert("requested", "2", OLD, "started", feature="x3"),
        alert("requested-end", "2", OLD + 1, "ended", feature="x3"),
        request("r-open", OLD, "open", ["requested"]),
        # Recent: stays.
        alert("recent", "2", T - DAY, "started", feature="x4"),
    )
    doomed = {"ended-start", "ended-end", "seg-start", "seg-end", "archived-open", "requested-end"}
    assert pruner(sessions).dry_run()["alerts"] == len(doomed)
    assert pruner(sessions).prune()[0]["alerts"] == len(doomed)
    assert ids(sessions, Alert.id) == {"open-start", "open-up", "requested", "recent"}
    assert pruner(sessions).prune()[0]["alerts"] == 0


def test_closed_retrain_requests_go_but_open_ones_and_each_models_newest_stay(sessions):
    add(
        sessions,
        stats(),
        request("closed-old", ANCIENT, "closed"),
        request("open-old", ANCIENT + 1, "open"),
        request("closed-recent", T - DAY, "closed"),
        stats("n"),
        RetrainRequest(
            request_id="n-newest",
            model_id="n",
            version="1",
            status="closed",
            created_ts=ANCIENT,
            alert_ids="[]",
            cloudevent="{}",
        ),
    )
    assert pruner(sessions).dry_run()["retrain_requests"] == 1
    assert pruner(sessions).prune()[0]["retrain_requests"] == 1
    # n's only request is older than the retention, but the cooldown is measured from it.
    assert ids(sessions, RetrainRequest.request_id) == {"open-old", "closed-recent", "n-newest"}


def test_finished_training_runs_go_after_the_retention_unless_they_made_a_registered_version(sessions):
    long_ago = WALL - 400 * DAY
    add(
        sessions,
        run("rejected-old", "rejected", long_ago),
        run("failed-old", "failed", long_ago),
        run("promoted-old", "promoted", long_ago),
        version("m", "2", "champion", run_id="promoted-old"),
        run("waiting-old", "waiting", None),
        run("rejected-recent", "rejected", WALL - DAY),
    )
    assert pruner(sessions).prune()[0]["training_runs"] == 2
    assert ids(sessions, TrainingRun.run_id) == {"promoted-old", "waiting-old", "rejected-recent"}


def test_partition_gaps_go_after_the_retention_by_wall_clock(sessions):
    def gap(detected_at: float) -> PartitionGap:
        return PartitionGap(
            group_id="g",
            topic="t",
            partition=0,
            kind="log_reset",
            stored_offset=5,
            resumed_at=0,
            detail="",
            detected_at=detected_at,
        )

    add(sessions, gap(WALL - 91 * DAY), gap(WALL - 89 * DAY))
    assert pruner(sessions).prune()[0]["partition_gaps"] == 1
    with sessions() as session:
        assert session.scalars(select(PartitionGap.detected_at)).all() == [WALL - 89 * DAY]


def test_a_backlog_is_deleted_in_chunks_across_calls(sessions):
    add(sessions, stats(), *(window("1", i, OLD + i) for i in range(10)), window("1", 10, T))
    chunked = pruner(sessions, tables=("window_results",), chunk_rows=3)
    deleted, finished = chunked.prune(max_chunks=2)
    assert (deleted["window_results"], finished) == (6, False)
    deleted, finished = chunked.prune(max_chunks=2)
    assert (deleted["window_results"], finished) == (4, True)  # 3 then 1: less than a chunk, so done
    with sessions() as session:
        assert session.scalar(select(func.count()).select_from(WindowResult)) == 1


def test_a_dry_run_deletes_nothing(sessions):
    add(sessions, stats(), window("1", 0, OLD), window("1", 1, T))
    assert pruner(sessions).dry_run() == {
        "window_results": 1,
        "alerts": 0,
        "retrain_requests": 0,
        "training_runs": 0,
        "partition_gaps": 0,
    }
    with sessions() as session:
        assert session.scalar(select(func.count()).select_from(WindowResult)) == 2


def test_an_unknown_table_is_refused_in_one_line(sessions):
    with pytest.raises(ValueError, match="no retention rule for labelled_pairs"):
        Pruner(sessions, Retention(), tables=("labelled_pairs",))


def test_database_size_is_the_bytes_on_disk(sessions):
    with sessions() as session:
        size = retention.database_size(session)
    assert size is not None and size > 0


@pytest.mark.parametrize(
    ("size", "text"), [(None, "unknown"), (512, "512 B"), (2048, "2.0 KiB"), (5 * 1024**3, "5.0 GiB")]
)
def test_human_bytes(size, text):
    assert retention.human_bytes(size) == text
