"""The monitor's rules on their own, against a real database: the retrain cooldown, the join's bounds, the
duplicate filter."""

import json
import random
from collections import deque

import pytest
from sqlalchemy import select

from undertow.models.drift.config import DriftConfig
from undertow.storage import db, repo
from undertow.storage.tables import LabelledPair, OutboxMessage, PendingEvent
from undertow.worker.monitor.concept import ConceptStage, Pair
from undertow.worker.monitor.duplicates import DuplicateFilter
from undertow.worker.monitor.retrain_policy import RetrainPolicy
from undertow.worker.runtime import cloudevents
from undertow.worker.runtime.batch import Batch, Position
from undertow.worker.runtime.events import parse_label, parse_prediction
from undertow.worker.runtime.output_events import Baseline, ConceptDrift, ConceptDriftAlert

pytestmark = pytest.mark.postgres
T0 = 1_800_000_000.0


def _alert(at: float, n: int) -> ConceptDriftAlert:
    return ConceptDriftAlert(
        id=f"alert-{n}",
        subject="m",
        time=cloudevents.rfc3339(at),
        data=ConceptDrift(
            model_id="m",
            model_version="1",
            severity="significant",
            episode="started",
            detector="cusum",
            metric="absolute_error",
            value=9.0,
            threshold=5.0,
            unit="baseline_sd",
            baseline=Baseline(mean=1, sd=1),
            recent_mean_error=2.0,
            detected_at=cloudevents.rfc3339(at),
            label_count=n,
            change_started_at=None,
        ),
    )


def test_retrain_requests_wait_for_the_open_one_and_for_the_cooldown(engine):
    sessions = db.make_session_factory(engine)
    policy, config = RetrainPolicy("retrain"), DriftConfig(retrain_cooldown_seconds=3600)
    with sessions.begin() as session:
        first = policy.consider(session, _alert(T0, 1), config, reason="concept drift")
        assert first is not None
        assert policy.consider(session, _alert(T0 + 7200, 2), config, reason="concept drift") is None  # still open
        repo.close_retrain_request(session, first, "retrained")
        assert policy.consider(session, _alert(T0 + 3599, 3), config, reason="concept drift") is None  # cooldown
        second = policy.consider(session, _alert(T0 + 3600, 4), config, reason="concept drift")
        assert second not in (None, first)
    with sessions() as session:
        sent = [json.loads(m.value) for m in session.scalars(select(OutboxMessage).order_by(OutboxMessage.id))]
    assert [e["data"]["alert_ids"] for e in sent] == [["alert-1"], ["alert-4"]]
    assert [e["data"]["data_policy"] for e in sent] == [{"kind": "rolling", "max_pairs": 50_000}] * 2


def _prediction(n: int, at: float):
    raw = {
        "event_id": f"e{n}",
        "model_id": "m",
        "ts": cloudevents.rfc3339(at),
        "features": {"x": 1.0},
        "prediction": 1.0,
    }
    return parse_prediction(json.dumps(raw).encode(), 4096)


def _label(n: int, at: float):
    raw = {"event_id": f"e{n}", "model_id": "m", "ts": cloudevents.rfc3339(at), "label": 2.0}
    return parse_label(json.dumps(raw).encode(), 4096)


def _apply(sessions, stage, events, restore: bool = False) -> None:
    if restore:
        stage.reset()  # as after a restart: the join buffer comes back from the database
    batch = Batch(events=[(Position("t", 0, i), e) for i, e in enumerate(events)])
    with sessions.begin() as session:
        stage.apply(session, batch)


def _join(sessions) -> tuple[dict, set]:
    with sessions() as session:
        stats = repo.join_stats(session, "m")
        numbers = {
            k: getattr(stats, k)
            for k in (
                "pending_predictions",
                "pending_labels",
                "joined",
                "expired_predictions",
                "expired_labels",
                "evicted_predictions",
            )
        }
        waiting = {(p.kind, p.event_id) for p in session.scalars(select(PendingEvent))}
    return numbers, waiting


@pytest.mark.parametrize("restore", [False, True], ids=["in-memory", "restored-each-batch"])
def test_the_join_evicts_the_oldest_beyond_its_cap_and_expires_by_event_time(engine, restore):
    sessions = db.make_session_factory(engine)
    stage = ConceptStage(
        "alerts", RetrainPolicy("retrain"), join_ttl_seconds=100, join_max_pending=5, pairs_retention=1000
    )
    _apply(sessions, stage, [_prediction(n, T0 + n) for n in range(8)], restore)
    numbers, waiting = _join(sessions)
    assert numbers["pending_predictions"] == 5 and numbers["evicted_predictions"] == 3
    assert waiting == {("prediction", f"e{n}") for n in range(3, 8)}  # the oldest three went

    _apply(sessions, stage, [_label(1, T0 + 20), _label(6, T0 + 21)], restore)  # e1 was evicted: its label waits
    numbers, waiting = _join(sessions)
    assert numbers["joined"] == 1 and numbers["pending_labels"] == 1 and ("label", "e1") in waiting
    assert ("prediction", "e6") not in waiting

    _apply(sessions, stage, [_prediction(100, T0 + 110)], restore)  # the watermark passes T0 + 10 + ttl
    numbers, waiting = _join(sessions)
    assert waiting == {("label", "e1"), ("prediction", "e100")}  # T0 + 20 is still within the ttl
    assert numbers["expired_predictions"] == 4 and numbers["pending_predictions"] == 1
    _apply(sessions, stage, [_prediction(101, T0 + 121)], restore)
    numbers, waiting = _join(sessions)
    assert numbers["expired_labels"] == 1 and numbers["pending_labels"] == 0
    assert waiting == {("prediction", "e100"), ("prediction", "e101")}


def test_duplicate_filter_is_restored_from_its_blocks_and_expires_whole_blocks(engine):
    sessions = db.make_session_factory(engine)
    keys = [f"prediction\tm\te{i}" for i in range(10)]
    with sessions.begin() as s:
        live = DuplicateFilter.restore(s, "t", 0)
        assert live.take(s, keys[:5], 0, 5) == [True] * 5
        assert live.take(s, keys[3:10] + ["label\tm\te1", keys[9]], 5, 14) == [False, False] + [True] * 6 + [False]
    with sessions.begin() as s:
        restored = DuplicateFilter.restore(s, "t", 0)
        assert restored.take(s, keys + ["prediction\tm\tnew"], 14, 25) == [False] * 10 + [True]
        restored.expire(s, below_offset=6)  # the first block (offsets 0-4) is wholly behind
    with sessions.begin() as s:
        again = DuplicateFilter.restore(s, "t", 0)
        assert again.take(s, keys, 25, 35) == [True] * 5 + [False] * 5
        assert len(repo.seen_blocks(s, "t", 0)) == 3
        assert repo.seen_blocks(s, "t", 1) == []
        again.expire(s, below_offset=10**6)  # every block behind: nothing held, and every key new again
        assert len(again) == 0 and again._runs == []
        assert again.take(s, keys[:2], 10**6, 10**6 + 2) == [True, True]


def test_duplicate_filter_agrees_with_a_set_of_the_live_blocks_keys_and_with_its_restored_self(engine):
    """Random batches over a small key space (repeats within a batch, within the horizon and after it), the
    horizon moved as the monitor moves it: each key is new exactly when no block still in the horizon took
    it; a filter restored from SQL at any point answers the same; the runs stay within about twice the live
    keys, in a few runs."""
    rng = random.Random(7)
    sessions = db.make_session_factory(engine)
    horizon, offset = 3_000, 0
    live_blocks: deque[tuple[int, set[str]]] = deque()  # the reference: (next offset, keys taken)
    with sessions.begin() as s:
        live = DuplicateFilter.restore(s, "t", 0)
    for batch in range(300):
        keys = [f"prediction\tm\te{rng.randrange(4_000)}" for _ in range(rng.randrange(1, 120))]
        if batch == 200:  # a stretch of offsets with nothing for this filter: every block expires
            offset += 2 * horizon
        first, next_offset = offset, offset + len(keys)
        with sessions.begin() as s:
            if batch % 50 == 49:  # a restart, a rebalance or a failed batch: restored from its blocks
                live = DuplicateFilter.restore(s, "t", 0)
            taken = live.take(s, keys, first, next_offset)
            live.expire(s, next_offset - horizon)
        known = set().union(*(k for _, k in live_blocks))
        expected, new_keys = [], set()
        for key in keys:
            expected.append(key not in known and key not in new_keys)
            new_keys.add(key)
        assert taken == expected, batch
        live_blocks.append((next_offset, {k for k, t in zip(keys, taken) if t}))
        while live_blocks and live_blocks[0][0] <= next_offset - horizon:
            live_blocks.popleft()
        offset = next_offset
        assert len(live) == sum(len(k) for _, k in live_blocks)
        held = sum(run.fingerprints.size for run in live._runs)
        assert held <= 2 * len(live) and len(live._runs) <= 12, (batch, held, len(live), len(live._runs))


def test_a_pair_holds_the_labelled_pairs_columns_in_order_then_its_metric():
    # The insert takes a pair as it is, less its metric: a column added or moved must move here too.
    assert Pair._fields == (*(column.name for column in LabelledPair.__table__.columns), "metric")
