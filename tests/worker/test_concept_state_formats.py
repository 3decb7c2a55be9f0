"""Concept state of every format in the wild loads and goes on as the code that wrote it did.

tests/data/concept_state/ holds rows recorded with the release before formats were numbered (record.py):
the format-8 rows it wrote and the older formats it still read, each with that code's state right after
loading it and its alerts and state after the rest of the stream; and format9/ the rows of format 9
(record_9.py), with the same. Here today's code loads each row (``state_format`` NULL: ``legacy_format``
names its format), and must give the same state after loading, the same alerts after it and the same state
at the end (compared in today's format: the old code's rows upgraded), and its own rows must read back byte
for byte.

An episode open in the row keeps the rule of the code that opened it (format 10 keeps format 9's escalation
as ``legacy`` until the episode ends); one opened after loading runs today's (the re-based detectors of
format 10), so there the end state's episode is today's and is left out of the comparison.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from types import SimpleNamespace

import pytest

from tests.numbers import assert_same
from undertow.models.drift.concept_state import CURRENT_FORMAT, legacy_format
from undertow.models.drift.config import DriftConfig
from undertow.models.reference import error_sample
from undertow.storage.errors import UndertowError
from undertow.worker.monitor.concept import ErrorStreamMonitor

DATA = Path(__file__).resolve().parent.parent / "data" / "concept_state"
RECORDED = sorted(DATA.glob("*_format*.json"))
NUMBERED = sorted((DATA / "format9").glob("*.json"))


def _streams():
    spec = importlib.util.spec_from_file_location("concept_state_streams", DATA / "streams.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


STREAMS = _streams()


def _world(record: dict):
    s = record["stream"]
    validation, labels = STREAMS.labelled_stream(s["kind"], s["labels"], s["seed"], s["gap"], s["shifts"])
    config = DriftConfig.model_validate(record["config"])

    def monitor(row: dict | None = None) -> ErrorStreamMonitor:
        state = None if row is None else SimpleNamespace(**{"state_format": None, **row})
        return ErrorStreamMonitor(
            "m", "1", config, float(validation.mean()), float(validation.std()), state, error_sample(validation)
        )

    return monitor, labels[s["cut"] :], s["metric"]


def _feed(monitor: ErrorStreamMonitor, labels, metric: str) -> list[dict]:
    alerts = []
    for error, loss, arrived, predicted in labels:
        alerts += monitor.update(error, metric, arrived, predicted)
        if loss is not None:
            alerts += monitor.update_log_loss(loss, arrived, predicted)
    return [
        {
            "id": a.id,
            "episode": a.data.episode,
            "detector": a.data.detector,
            "metric": a.data.metric,
            "value": a.data.value,
            "threshold": a.data.threshold,
            "label_count": a.data.label_count,
            "change_started_at": a.data.change_started_at,
        }
        for a in alerts
    ]


def _as_today(monitor_of, old_row: dict) -> dict:
    """A row the old code wrote, as today's code stores it."""
    return monitor_of(old_row).state_values()


def _but_episodes_opened(values: dict, alerts: list[dict]) -> dict:
    """The row with the episode of each stream that started one in ``alerts`` (after loading) left out:
    today's rule runs it."""
    blob = json.loads(values["detectors"])
    for metric in {a["metric"] for a in alerts if a["episode"] == "started"}:
        stream = blob["log_loss"] if metric == "log_loss" else blob
        stream["episode"] = "opened after loading: today's rule"
    return {**values, "detectors": blob}


def _assert_goes_on_as_recorded(loaded: ErrorStreamMonitor, record: dict, expected_end: dict, rest, metric) -> None:
    alerts = _feed(loaded, rest, metric)
    assert_same(alerts, record["continuation"]["alerts"])
    assert_same(_but_episodes_opened(loaded.state_values(), alerts), _but_episodes_opened(expected_end, alerts))


@pytest.mark.parametrize("path", RECORDED, ids=lambda p: p.stem)
def test_a_recorded_row_loads_and_continues_as_the_code_that_wrote_it(path):
    record = json.loads(path.read_text())
    monitor_of, rest, metric = _world(record)
    row = record["row"]
    assert legacy_format(row["detectors"], record["config"]["pt_horizon_buckets"]) == record["format"]
    loaded = monitor_of(row)
    assert_same(loaded.state_values(), _as_today(monitor_of, record["after_loading"]))
    _assert_goes_on_as_recorded(loaded, record, _as_today(monitor_of, record["continuation"]["row"]), rest, metric)


@pytest.mark.parametrize("path", NUMBERED, ids=lambda p: p.stem)
def test_a_format_9_row_loads_and_continues_as_the_code_that_wrote_it(path):
    record = json.loads(path.read_text())
    monitor_of, rest, metric = _world(record)
    assert record["row"]["state_format"] == 9
    loaded = monitor_of(record["row"])
    assert_same(loaded.state_values(), _as_today(monitor_of, record["after_loading"]))
    _assert_goes_on_as_recorded(loaded, record, _as_today(monitor_of, record["continuation"]["row"]), rest, metric)


def test_the_format_9_rows_cover_each_phase_of_its_episodes():
    episodes = {}
    for path in NUMBERED:
        blob = json.loads(json.loads(path.read_text())["row"]["detectors"])
        for stream in (blob, blob.get("log_loss") or {}):
            if "episode" in stream:
                episode = stream["episode"]
                phase = "watching" if episode["level"] is not None else "measuring" if episode["level_z"] else "none"
                episodes.setdefault(phase, []).append(path.stem)
    assert {"watching", "measuring", "none"} <= set(episodes), episodes


@pytest.mark.parametrize("path", [p for p in RECORDED if p.stem.endswith("format8")], ids=lambda p: p.stem)
def test_todays_rows_read_back_byte_for_byte_and_go_on_identically(path):
    record = json.loads(path.read_text())
    monitor_of, rest, metric = _world(record)
    today = monitor_of(record["row"]).state_values()
    assert today["state_format"] == CURRENT_FORMAT
    again = monitor_of(today)
    assert again.state_values() == today  # load -> dump: the same bytes
    assert_same(_feed(again, rest, metric), record["continuation"]["alerts"])


@pytest.mark.parametrize("path", NUMBERED, ids=lambda p: p.stem)
def test_todays_rows_mid_episode_read_back_byte_for_byte_and_go_on_identically(path):
    record = json.loads(path.read_text())
    monitor_of, rest, metric = _world(record)
    whole = monitor_of(record["row"])
    half = len(rest) // 2
    _feed(whole, rest[:half], metric)
    today = whole.state_values()
    again = monitor_of(today)
    assert again.state_values() == today  # load -> dump: the same bytes
    assert _feed(again, rest[half:], metric) == _feed(whole, rest[half:], metric)
    assert again.state_values() == whole.state_values()


def test_a_format_newer_than_this_release_is_refused():
    record = json.loads((DATA / "episode_format8.json").read_text())
    monitor_of, _, _ = _world(record)
    row = {**monitor_of(record["row"]).state_values(), "state_format": CURRENT_FORMAT + 1}
    with pytest.raises(UndertowError, match="newer than this release"):
        monitor_of(row)
