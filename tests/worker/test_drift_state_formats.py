"""drift_state rows of every format load and continue as the release that wrote them continued them.

The rows and their outcomes are recorded in tests/data/drift_state/ (``tests.worker.drift_state_streams``):
each row goes into a fresh database with its ``state_format`` NULL, as the release before numbering left
it, and the same continuation follows; the window results and alerts must be those the old code gave, and
the window buffer it leaves the same. Rows of format 4 (``format4/``, written before the dependence check)
load with their number and continue as that release continued them, and so do rows of format 5
(``format5/``, written before the evidence across features). A row of the current format round-trips byte for
byte.
"""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest

from tests.numbers import assert_same
from tests.worker import drift_state_streams as streams
from undertow.models.drift.drift_state import CODEC, legacy_blob, load_state

DATA = Path(__file__).resolve().parent.parent / "data" / "drift_state"
CASES = sorted(path.name for path in DATA.glob("*.json"))
FEATURE_COLUMNS = {"housing": 6, "stable": 6, "scored": 4}  # inputs and the prediction


def _row(case: dict, state_format: int | None = None) -> SimpleNamespace:
    import base64

    columns = case["row"]
    return SimpleNamespace(
        **{
            **columns,
            "buffer": base64.b64decode(columns["buffer"]),
            "buffer_ts": base64.b64decode(columns["buffer_ts"]),
            "state_format": state_format,
        }
    )


@pytest.mark.parametrize("name", CASES)
def test_a_row_from_before_numbering_is_read_as_its_format(name):
    case = json.loads((DATA / name).read_text())
    blob, number = legacy_blob(_row(case), FEATURE_COLUMNS[case["model_id"]])
    assert number == case["format"]
    assert CODEC.dump(CODEC.load(blob, number))[0] == case["expected_state"]


@pytest.mark.parametrize("name", CASES)
def test_a_row_from_before_numbering_continues_as_the_old_code_continued_it(name, tmp_path):
    case = json.loads((DATA / name).read_text())
    recorded = json.loads((DATA / "outcomes" / name).read_text())
    got, left = streams.continue_from(tmp_path, case["model_id"], case["row"], None)
    assert_same(got["alerts"], recorded["outcome"]["alerts"])
    assert_same(got["window_results"], recorded["outcome"]["window_results"])
    before = recorded["row_after"]
    assert {k: v for k, v in left.items() if k != "episodes"} == {k: v for k, v in before.items() if k != "episodes"}


@pytest.mark.parametrize("model_id", sorted(FEATURE_COLUMNS))
def test_a_row_of_format_4_loads_without_a_dependence_episode_and_continues_as_that_release_did(model_id, tmp_path):
    case = json.loads((DATA / "format4" / f"{model_id}.json").read_text())
    row = _row(case, case["format"])
    assert row.state_format == 4
    state = load_state(row, FEATURE_COLUMNS[model_id])
    assert "__dependence__" not in state.checks and "__multivariate__" in state.checks
    blob, number = CODEC.dump(state)  # nothing else changed: the same entries, the evidence across features empty
    assert number == CODEC.current and json.loads(blob) == {**json.loads(row.episodes), "__dataset_evidence__": {}}
    got, left = streams.continue_from(tmp_path, model_id, case["row"], case["format"])
    recorded = json.loads((DATA / "outcomes" / f"written_{model_id}.json").read_text())
    assert_same(got, recorded["outcome"])  # no dependence alert on these streams: the format-4 code's results
    assert json.loads(left["episodes"])["__dependence__"][:3] == ["stable", 0, "stable"]  # the check runs
    assert left["buffer"] == recorded["row_after"]["buffer"]


@pytest.mark.parametrize("model_id", sorted(FEATURE_COLUMNS))
def test_a_row_of_format_5_loads_with_no_evidence_across_features_and_continues_as_that_release_did(model_id, tmp_path):
    case = json.loads((DATA / "format5" / f"{model_id}.json").read_text())
    row = _row(case, case["format"])
    assert row.state_format == 5
    state = load_state(row, FEATURE_COLUMNS[model_id])
    assert state.dataset_evidence == {} and state.evidence  # the per-feature sums kept, the new ones empty
    blob, number = CODEC.dump(state)
    assert number == 6 and json.loads(blob) == {**json.loads(row.episodes), "__dataset_evidence__": {}}
    got, left = streams.continue_from(tmp_path, model_id, case["row"], case["format"])
    current = json.loads((DATA / "current" / f"{model_id}.json").read_text())
    # The continuation of a format-5 row is that of the format-6 row written in its place by the same stream:
    # no evidence across features was pending in either (the recorded rows' sums differ from empty only where
    # no drift leans, and these streams raise no cumulative dataset alert).
    (tmp_path / "current").mkdir()
    again, _ = streams.continue_from(tmp_path / "current", model_id, current["row"], current["format"])
    assert got == again
    assert set(json.loads(left["episodes"])["__dataset_evidence__"]) == set(state.evidence)


def test_a_row_of_the_current_format_round_trips_byte_for_byte(tmp_path):
    case = json.loads((DATA / "current" / "scored.json").read_text())
    row = _row(case, case["format"])
    assert row.state_format == CODEC.current
    assert CODEC.dump(load_state(row, FEATURE_COLUMNS["scored"])) == (row.episodes, CODEC.current)
    got, left = streams.continue_from(tmp_path, "scored", case["row"], case["format"])
    recorded = json.loads((DATA / "outcomes" / "written_scored.json").read_text())["outcome"]
    assert_same(got, recorded)  # the same continuation as the row this one was written in place of
