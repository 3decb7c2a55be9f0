"""Data drift end to end: register a reference, stream predictions through the monitor."""

from __future__ import annotations

import json

import pytest

from undertow.worker.dev.sample import SampleStream


def _alerts(env) -> list[dict]:
    from sqlalchemy import text

    with env.engine.connect() as conn:
        return [json.loads(v) for (v,) in conn.execute(text("SELECT cloudevent FROM alerts ORDER BY event_ts, id"))]


def _windows(env) -> list[tuple]:
    from sqlalchemy import text

    with env.engine.connect() as conn:
        return [
            tuple(r)
            for r in conn.execute(
                text(
                    "SELECT model_id, version, window_index, feature, start_ts, end_ts, n, psi, ks_statistic, "
                    "ks_pvalue, "
                    "chi2_statistic, chi2_pvalue, missing_share, severity FROM window_results "
                    "ORDER BY model_id, version, window_index, feature"
                )
            )
        ]


def _started(alerts, kind="undertow.drift.data"):
    return [a for a in alerts if a["type"] == kind and a["data"]["episode"] == "started"]


@pytest.mark.slow
def test_stationary_stream_of_100k_predictions_raises_no_alert(env):
    stream = SampleStream(seed=21)
    env.register_reference(stream)
    env.send_events(stream.events(100_000), labels=False)
    env.drain()
    assert len({w[2] for w in _windows(env)}) == 100
    assert _alerts(env) == []
    assert env.read_all(env.topics.alerts, expected=1, timeout=3) == []


def test_abrupt_shift_of_one_feature_is_named_within_one_window(env):
    stream = SampleStream(seed=22)
    env.register_reference(stream)
    change = 3500  # inside window 3 (3000..3999)
    env.send_events(stream.events(change), labels=False)
    env.send_events(stream.events(3000, start_index=change, shift=1.0, shift_feature=2), labels=False)
    env.drain()
    started = _started(_alerts(env))
    inputs = {a["data"]["feature"] for a in started} - {"__prediction__"}
    assert inputs == {"x2"}
    first = min(a["data"]["window"]["index"] for a in started if a["data"]["feature"] == "x2")
    assert first <= 4  # the window containing the change, or the next one
    x2 = next(a for a in started if a["data"]["feature"] == "x2")
    assert x2["data"]["severity"] in ("moderate", "significant") and x2["data"]["psi"] >= 0.1
    assert x2["specversion"] == "1.0" and x2["subject"] == "housing" and x2["source"] == "/undertow/monitor"
    # a persisting drift does not re-alert every window
    assert len([a for a in started if a["data"]["feature"] == "x2"]) == 1
    published = env.read_all(env.topics.alerts, expected=len(_alerts(env)))
    assert {json.loads(r.value)["id"] for r in published} == {a["id"] for a in _alerts(env)}
    assert all(dict(r.headers)["content-type"] == b"application/cloudevents+json" for r in published)


def test_categorical_drift_with_an_unseen_category_is_detected(env):
    stream = SampleStream(seed=23)
    env.register_reference(stream)
    env.send_events(stream.events(2000), labels=False)
    env.send_events(stream.events(2000, start_index=2000, new_region="atlantis"), labels=False)
    env.drain()
    region = [a for a in _started(_alerts(env)) if a["data"]["feature"] == "region"]
    assert region and region[0]["data"]["window"]["index"] == 2
    assert region[0]["data"]["chi2_pvalue"] < 1e-6
    assert region[0]["data"]["psi"] > 0.25


def test_episode_ends_when_the_drift_goes_away(env):
    stream = SampleStream(seed=24)
    env.register_reference(stream)
    env.send_events(stream.events(1000), labels=False)
    env.send_events(stream.events(2000, start_index=1000, shift=2.0), labels=False)
    env.send_events(stream.events(3000, start_index=3000), labels=False)
    env.drain()
    x0 = [a["data"]["episode"] for a in _alerts(env) if a["data"].get("feature") == "x0"]
    assert x0 == ["started", "ended"]


def test_predictions_before_a_reference_exists_are_counted_but_not_checked(env):
    stream = SampleStream(seed=25)
    env.send_events(stream.events(1500), labels=False)
    env.drain(idle=2.0)
    assert env.scalar("SELECT predictions FROM model_stats") == 1500
    assert _windows(env) == []
    env.register_reference(stream)
    env.send_events(stream.events(1000, start_index=1500), labels=False)
    env.drain(idle=2.0)
    assert {w[2] for w in _windows(env)} == {0}


@pytest.mark.postgres
@pytest.mark.slow
def test_sigkill_during_a_drifted_stream_gives_the_uninterrupted_results(make_env):
    def stream_pairs():
        stream = SampleStream(seed=26)
        yield from stream.events(3000)
        yield from stream.events(3000, start_index=3000, shift=1.5, shift_feature=1)
        yield from stream.events(2000, start_index=6000, new_region="atlantis")
        yield from stream.events(4000, start_index=8000)

    uninterrupted, crashed = make_env(), make_env()
    for world in (uninterrupted, crashed):
        world.register_reference(SampleStream(seed=26))
    uninterrupted.send_events(stream_pairs(), labels=False)
    uninterrupted.drain()
    kills = crashed.run_with_kills(
        lambda: crashed.send_events(stream_pairs(), rate=250, labels=False),
        seed=5,
        env={"UNDERTOW_BATCH_MAX_RECORDS": "150"},
    )
    assert kills >= 3
    expected_windows = _windows(uninterrupted)
    assert len(expected_windows) == 12 * 6
    assert _windows(crashed) == expected_windows
    expected_ids = {a["id"] for a in _alerts(uninterrupted)}
    assert len(expected_ids) >= 3
    assert {a["id"] for a in _alerts(crashed)} == expected_ids
    published = {json.loads(r.value)["id"] for r in crashed.read_all(crashed.topics.alerts, len(expected_ids))}
    assert published == expected_ids
