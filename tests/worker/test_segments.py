"""Drift per segment (models.segments, worker.monitor.segments, worker.monitor.concept.segments): a drift
confined to a segment of 10 % of the traffic, and a model worse for one segment only, each found and named,
through the real broker and monitor."""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
from sqlalchemy import text

from undertow.worker.dev.sample import SampleStream, write_reference_csv

REPO = Path(__file__).resolve().parents[2]
WEST = {"region": "west"}  # 10 % of SampleStream's predictions


def _register(env, stream: SampleStream, by: str = "region", top: int = 20, **config) -> None:
    """A champion profiled from ``stream``'s pre-drift rows, segmented by ``by``, as the CLI registers one."""
    _register_into(env.engine, stream, by, top, **config)


def _register_into(engine, stream: SampleStream, by: str = "region", top: int = 20, **config) -> None:
    from undertow.models import registry
    from undertow.models.dataset import read_table
    from undertow.models.reference import load_reference
    from undertow.models.segments import build_segmentation
    from undertow.storage import db

    path = Path(tempfile.mkdtemp()) / "reference.csv"
    write_reference_csv(stream, path, 5000)
    reference = load_reference(path, target="target", prediction="prediction")
    segments = build_segmentation(
        read_table(path), by.split(","), reference.profile, top, target="target", prediction="prediction"
    )
    with db.make_session_factory(engine).begin() as session:
        registry.register(
            session,
            model_id="housing",
            profile=reference.profile,
            artifacts_dir=path.parent,
            drift_config=registry.DriftConfig(**config),
            baseline_error=reference.baseline_error,
            error_sample=reference.error_sample,
            test_set=reference.test_set,
            data_sha256=reference.data_sha256,
            segments=segments,
        )


def _in_segment(pairs, segment: dict, feature_shift: float = 0.0, label_shift: float = 0.0):
    """``SampleStream`` pairs with the inputs of one segment's predictions moved (``feature_shift`` sd on x0),
    or their labels (``label_shift``: the model is that much worse there); the rest untouched."""
    for prediction, label in pairs:
        if all(prediction["features"].get(c) == v for c, v in segment.items()):
            prediction["features"]["x0"] = round(prediction["features"]["x0"] + feature_shift, 6)
            label["label"] = round(label["label"] + label_shift, 6)
        yield prediction, label


def _alerts(env) -> list[dict]:
    with env.engine.connect() as conn:
        rows = conn.execute(text("SELECT cloudevent FROM alerts ORDER BY event_ts, id"))
        return [json.loads(value) for (value,) in rows]


def _started(alerts: list[dict], kind: str) -> list[dict]:
    return [a for a in alerts if a["type"] == kind and a["data"]["episode"] == "started"]


def test_a_drift_confined_to_a_10_percent_segment_is_found_and_the_segment_named(env):
    stream = SampleStream(seed=61)
    _register(env, stream, window_size=500)
    env.send_events(stream.events(2000), labels=False)
    env.send_events(_in_segment(stream.events(14_000, start_index=2000), WEST, feature_shift=0.35), labels=False)
    env.drain()
    alerts = _alerts(env)
    data = _started(alerts, "undertow.drift.data")
    # The whole stream's x0 moves by 0.035 sd: no window of it reaches the moderate PSI band (0.1) ...
    assert env.scalar("SELECT MAX(psi) FROM window_results WHERE feature = 'x0'") < 0.1
    assert [a for a in data if "segment" not in a["data"] and a["data"]["feature"] == "x0"] == []
    # ... west's own windows (500 of its predictions each) find it within two, named; no other segment alarms.
    in_segments = [a for a in data if "segment" in a["data"]]
    assert [(a["data"]["feature"], a["data"]["segment"]) for a in in_segments] == [("x0", WEST)]
    assert in_segments[0]["data"]["window"]["index"] <= 1
    assert in_segments[0]["data"]["severity"] in ("moderate", "significant")
    ids = [a["id"] for a in alerts]
    assert len(set(ids)) == len(ids)
    published = {json.loads(r.value)["id"] for r in env.read_all(env.topics.alerts, expected=len(alerts))}
    assert published == set(ids)
    # Its state is a row of its own beside the version's, one per segment that had predictions.
    segments = env.scalar("SELECT COUNT(*) FROM segment_drift_state WHERE model_id = 'housing' AND version = '1'")
    assert segments == 4 and env.scalar("SELECT COUNT(*) FROM drift_state") == 1
    # status shows it open in west only (and every segment with its reference rows) ...
    shown = {json.dumps(s["segment"]): s for s in env.status()["segments"]}
    assert list(shown) == [json.dumps({"region": r}) for r in ("north", "south", "east", "west", "__other__")]
    assert list(shown[json.dumps(WEST)]["open_data_episodes"]) == ["x0"]
    assert all(not s["open_data_episodes"] for k, s in shown.items() if k != json.dumps(WEST))
    assert shown[json.dumps({"region": "__other__"})]["monitored"] is False  # no reference row outside the top 4
    # ... and the report in its segment table and episodes, not among the whole stream's episodes ...
    _check_report(env)
    # ... and `undertow alerts` on the alert's line.
    listed = subprocess.run(
        [sys.executable, "-m", "undertow", "alerts", "--model-id", "housing", "--db-url", env.db_url],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert [line for line in listed.stdout.splitlines() if "[region=west]" in line], listed.stdout + listed.stderr


def _check_report(env) -> None:
    from undertow.worker.report.build import write_report

    page = write_report(env.db_url, "housing", Path(tempfile.mkdtemp()) / "report.html").read_text()
    segments = page[page.index('<table id="segments">') : page.index('<table id="segment-episodes">')]
    west = next(row for row in segments.split("<tr") if "region=west" in row)
    assert "x0 (" in west and 'class="drifted"' in west
    episodes = page[page.index('<table id="segment-episodes">') :].split("</table>")[0]
    assert "region=west" in episodes and "x0" in episodes and "region=north" not in episodes
    whole = page[page.index('<table id="episodes">') :].split("</table>")[0]
    assert "x0" not in whole


def test_a_model_worse_for_one_segment_only_is_found_and_the_segment_named(env):
    from undertow.worker.dev.sample import START
    from undertow.worker.runtime import cloudevents

    stream = SampleStream(seed=71)
    _register(env, stream)
    change = 12_000  # west's baseline (its first 1,000 labels) is set before it
    env.send_events(stream.events(change))
    env.send_events(_in_segment(stream.events(8000, start_index=change), WEST, label_shift=1.0))
    env.drain()
    concept = [a for a in _alerts(env) if a["type"] == "undertow.drift.concept"]
    in_segments = [a for a in concept if "segment" in a["data"]]
    # Only west's stream alarms (2 sd of the label noise, in 10 % of the traffic), and it is named ...
    assert {json.dumps(a["data"]["segment"]) for a in in_segments} == {json.dumps(WEST)}
    assert in_segments[0]["data"]["episode"] == "started"
    # ... within 500 predictions of the change (about 50 of west's labels); labels come an hour after.
    found = cloudevents.epoch(in_segments[0]["data"]["detected_at"]) - START.timestamp() - 3600
    assert change <= found <= change + 500
    # The whole stream's error moves by a tenth as much: found later, if at all.
    whole = [cloudevents.epoch(a["data"]["detected_at"]) for a in concept if "segment" not in a["data"]]
    assert all(t - START.timestamp() - 3600 > found for t in whole)
    rows = env.scalar("SELECT COUNT(*) FROM segment_concept_state WHERE model_id = 'housing' AND version = '1'")
    assert rows == 4
    # The metrics: one series per watched segment and kind, west's error stream in its episode.
    episodes = _segment_metrics(env)
    assert episodes == {
        **{
            (segment, kind): 0.0
            for segment in ("region=north", "region=south", "region=east")
            for kind in ("data", "concept")
        },
        ("region=west", "data"): 0.0,
        ("region=west", "concept"): 1.0,
    }
    # The sinks name the segment: Alertmanager keeps it apart by a label, Slack says it.
    _check_notices(in_segments[0])


def _segment_metrics(env) -> dict:
    from undertow.worker.runtime.metrics import DatabaseCollector

    collector = DatabaseCollector(env.engine, "monitor", env.group_id, lambda partitions: {}, [])
    try:
        (family,) = [f for f in collector.collect() if f.name == "undertow_segment_open_episodes"]
    finally:
        collector.close()
    assert all(s.labels["model_id"] == "housing" for s in family.samples)
    return {(s.labels["segment"], s.labels["kind"]): s.value for s in family.samples}


def _check_notices(alert: dict) -> None:
    from undertow.worker.notify import alertmanager, slack
    from undertow.worker.notify.config import AlertmanagerSink
    from undertow.worker.notify.notice import NoContext, notice
    from undertow.worker.notify.request import Message
    from undertow.worker.runtime.output_events import parse_event

    event = parse_event(json.dumps(alert))
    labels = alertmanager.labels_of(AlertmanagerSink(url="http://127.0.0.1:9093"), event, notice(event, NoContext()))
    assert labels["segment"] == "region=west" and labels["alertname"] == "UndertowConceptDrift"
    unsegmented = event.model_copy(update={"data": event.data.model_copy(update={"segment": None})})
    assert "segment" not in alertmanager.labels_of(
        AlertmanagerSink(url="http://127.0.0.1:9093"), unsegmented, notice(unsegmented, NoContext())
    )
    message = slack.payload(Message("d1", [json.dumps(alert)]), NoContext())
    assert "in segment region=west" in message["text"] and "in segment region=west" in json.dumps(message["blocks"])


def _parsed(pairs) -> list:
    """Prediction and label events as the monitor parses them, each prediction followed by its label."""
    from undertow.worker.dev.sample import encode
    from undertow.worker.runtime.events import parse_label, parse_prediction

    events = []
    for prediction, label in pairs:
        events += [parse_prediction(encode(prediction), 1 << 20), parse_label(encode(label), 1 << 20)]
    return events


class _Monitor:
    """The data-drift and concept stages on a real database, fed batches as the runner feeds them: a batch
    that fails is rolled back and the stages reset (their caches dropped), then it comes again."""

    def __init__(self, engine):
        from undertow.storage import db
        from undertow.worker.monitor.concept import ConceptStage
        from undertow.worker.monitor.data_drift import DataDriftStage
        from undertow.worker.monitor.retrain_policy import RetrainPolicy

        self.sessions = db.make_session_factory(engine)
        policy = RetrainPolicy("retrain")
        self.stages = [
            DataDriftStage("alerts", policy),
            ConceptStage("alerts", policy, join_ttl_seconds=86_400, join_max_pending=100_000, pairs_retention=10**6),
        ]

    def apply(self, events: list, fail: bool = False) -> None:
        from undertow.worker.runtime.batch import Batch, Position

        batch = Batch(events=[(Position("t", 0, i), e) for i, e in enumerate(events)])
        if fail:
            with pytest.raises(RuntimeError), self.sessions.begin() as session:
                for stage in self.stages:
                    stage.apply(session, batch)
                raise RuntimeError("the commit fails")  # as a lost database connection would
            for stage in self.stages:
                stage.reset()
            batch = Batch(events=batch.events)  # the runner polls the records again: a new batch
        with self.sessions.begin() as session:
            for stage in self.stages:
                stage.apply(session, batch)

    def state(self) -> dict:
        with self.sessions() as session:
            tables = ("segment_drift_state", "segment_concept_state")
            rows = {
                t: [tuple(r) for r in session.execute(text(f"SELECT * FROM {t} ORDER BY model_id, version, segment"))]
                for t in tables
            }
            rows["alerts"] = sorted(session.execute(text("SELECT id, cloudevent FROM alerts")).all())
        return rows


def _drifting_stream(seed: int) -> list:
    stream = SampleStream(seed=seed)
    pairs = list(stream.events(12_000))
    pairs += _in_segment(stream.events(6000, start_index=12_000), WEST, feature_shift=1.0, label_shift=1.0)
    return _parsed(pairs)


@pytest.mark.postgres
def test_a_failed_batch_replayed_and_other_batch_boundaries_give_the_same_segment_state(new_db_url):
    from undertow.storage import db

    worlds = []
    for batch_size, failing in ((1000, ()), (377, (3, 17, 40, 71))):
        engine = db.make_engine(new_db_url())
        db.migrate(engine)
        _register_into(engine, SampleStream(seed=81), window_size=500)
        monitor, events = _Monitor(engine), _drifting_stream(81)
        for n, start in enumerate(range(0, len(events), batch_size)):
            monitor.apply(events[start : start + batch_size], fail=n in failing)
        worlds.append(monitor.state())
        engine.dispose()
    uninterrupted, replayed = worlds
    assert len(uninterrupted["segment_drift_state"]) == len(uninterrupted["segment_concept_state"]) == 4
    segment_alerts = [a for a in uninterrupted["alerts"] if '"segment"' in a[1]]
    assert {json.loads(a[1])["type"] for a in segment_alerts} == {"undertow.drift.data", "undertow.drift.concept"}
    assert replayed == uninterrupted


def test_values_outside_the_top_segments_go_to_other_and_the_state_stays_bounded(engine):
    from undertow.worker.monitor.data_drift import DataDriftStage

    _register_into(engine, SampleStream(seed=91), top=2, window_size=500)  # north, south; east and west: other
    stream = SampleStream(seed=91)
    pairs = list(stream.events(3000))
    for i, (prediction, _) in enumerate(pairs):  # production sends 1,500 values never seen, and missing ones
        if i % 2:
            prediction["features"]["region"] = f"new-{i}"
        elif i % 10 == 0:
            del prediction["features"]["region"]
    expected_other = sum(p["features"].get("region") not in ("north", "south") for p, _ in pairs)
    monitor = _Monitor(engine)
    for start in range(0, 6000, 1000):
        monitor.apply(_parsed(pairs)[start : start + 1000])
    state = {row[2]: row for row in monitor.state()["segment_drift_state"]}
    assert sorted(state) == ["__other__", "region=north", "region=south"]  # at most top + 1, whatever came
    drift_stage = next(s for s in monitor.stages if isinstance(s, DataDriftStage))
    (version,) = drift_stage._segments._versions.values()
    assert sorted(version.monitors) == sorted(state)
    with monitor.sessions() as session:
        other = session.execute(
            text("SELECT next_window, rows FROM segment_drift_state WHERE segment = '__other__'")
        ).one()
    assert other.next_window * 500 + other.rows == expected_other  # every such prediction, counted once there


def _register_cli(env, path: Path, *extra: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "undertow.worker.cli",
            "models",
            "register",
            "--db-url",
            env.db_url,
            "--artifacts-dir",
            str(env.artifacts_dir),
            "--model-id",
            "housing",
            "--reference",
            str(path),
            "--target",
            "target",
            "--prediction-column",
            "prediction",
            *extra,
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_segment_by_takes_categorical_inputs_and_refuses_others_in_one_line(env):
    path = Path(tempfile.mkdtemp()) / "reference.csv"
    write_reference_csv(SampleStream(seed=95), path, 2000)
    cases = {
        ("--segment-by", "x0"): "--segment-by: 'x0' is numeric; segments need categorical inputs",
        ("--segment-by", "channel"): "--segment-by: 'channel' is not an input of the reference",
        ("--segment-by", "target"): "--segment-by: 'target' is not an input of the reference",
        ("--segment-by", "region", "--segments-top", "0"): "--segments-top: between 1 and 200, not 0",
        ("--segments-top", "3"): "--segments-top: only with --segment-by",
    }
    for flags, message in cases.items():
        done = _register_cli(env, path, *flags)
        assert done.returncode != 0, flags
        lines = [line for line in done.stderr.splitlines() if not line.startswith("task:")]
        assert len(lines) == 1 and message in lines[0], (flags, done.stderr)
    assert env.scalar("SELECT COUNT(*) FROM model_versions") == 0
    done = _register_cli(env, path, "--segment-by", "region", "--segments-top", "3")
    assert done.returncode == 0, done.stderr
    summary = json.loads(done.stdout)["segments"]
    assert summary["by"] == ["region"]
    assert [s["segment"] for s in summary["segments"]] == [
        {"region": "north"},
        {"region": "south"},
        {"region": "east"},
        {"region": "__other__"},
    ]
    assert sum(s["reference_rows"] for s in summary["segments"]) == 2000
    # Other holds west alone here: fewer than 200 reference rows, too few for a profile of its own.
    assert [s["watched"] for s in summary["segments"]] == [True, True, True, False]
    assert summary["segments"][-1]["reference_rows"] < 200
    shown = subprocess.run(
        [
            sys.executable,
            "-m",
            "undertow.worker.cli",
            "models",
            "show",
            "--db-url",
            env.db_url,
            "--model-id",
            "housing",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert json.loads(shown.stdout)["segments"] == summary


@pytest.mark.postgres
@pytest.mark.slow
def test_sigkill_during_a_segment_drift_gives_the_uninterrupted_segment_state(make_env):
    def stream():
        source = SampleStream(seed=101)
        pairs = list(source.events(12_000))
        pairs += _in_segment(source.events(4000, start_index=12_000), WEST, feature_shift=1.0, label_shift=1.0)
        for prediction, label in pairs:
            yield "prediction", prediction
            yield "label", label

    uninterrupted, crashed = make_env(), make_env()
    for world in (uninterrupted, crashed):
        _register(world, SampleStream(seed=101), window_size=500)
    uninterrupted.send_sequence(stream())
    uninterrupted.drain()
    kills = crashed.run_with_kills(
        lambda: crashed.send_sequence(stream(), rate=1500), seed=11, env={"UNDERTOW_BATCH_MAX_RECORDS": "300"}
    )
    assert kills >= 3
    queries = [
        "SELECT * FROM segment_drift_state ORDER BY model_id, version, segment",
        "SELECT * FROM segment_concept_state ORDER BY model_id, version, segment",
        "SELECT id, cloudevent FROM alerts ORDER BY id",
    ]
    with uninterrupted.engine.connect() as a, crashed.engine.connect() as b:
        for sql in queries:
            assert [tuple(r) for r in b.execute(text(sql))] == [tuple(r) for r in a.execute(text(sql))], sql
    assert {(a["type"], json.dumps(a["data"].get("segment"))) for a in _alerts(uninterrupted)} >= {
        ("undertow.drift.data", json.dumps(WEST)),
        ("undertow.drift.concept", json.dumps(WEST)),
    }


def test_a_retrained_version_is_segmented_as_the_champion_it_replaces():
    """The trainer's candidate keeps the champion's --segment-by (and top count), its segments fixed from its
    own held-out rows; one whose inputs no longer allow them is watched as a whole (no failure)."""
    from undertow.models.dataset import read_table
    from undertow.models.reference import load_reference
    from undertow.models.segments import build_segmentation, segmentation_like

    path = Path(tempfile.mkdtemp()) / "reference.csv"
    write_reference_csv(SampleStream(seed=71), path, 5000)
    reference = load_reference(path, target="target", prediction="prediction")
    champion = build_segmentation(read_table(path), ["region"], reference.profile, 3, "target", "prediction")
    held_out = reference.test_set  # features (region among them), targets and the model's predictions
    retrained = segmentation_like(champion, held_out, held_out["predictions"], reference.profile, classes=False)
    assert retrained is not None and (retrained.by, retrained.top) == (["region"], 3)
    assert [s.key for s in retrained.segments] == [s.key for s in champion.segments]  # the same top 3, and other
    assert all(s.baseline_error is not None for s in retrained.segments if s.profile is not None)

    without_region = {
        **held_out,
        "features": [{k: v for k, v in row.items() if k != "region"} for row in held_out["features"]],
    }
    numeric_only = reference.profile.model_copy(
        update={"features": {k: v for k, v in reference.profile.features.items() if k != "region"}}
    )
    assert segmentation_like(champion, without_region, held_out["predictions"], numeric_only, classes=False) is None
