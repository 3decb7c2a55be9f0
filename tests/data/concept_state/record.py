"""Records concept_state rows as the code of a release wrote them, and what that code did with them.

Run once against the release whose formats are recorded (here the last before formats were numbered, commit
e8601f9, checked out with ``git worktree add /tmp/concept-old e8601f9``):

    PYTHONPATH=/tmp/concept-old .venv/bin/python tests/data/concept_state/record.py

Per scenario a stream runs through ``ErrorStreamMonitor`` up to a cut; its row (``state_values()``, what
``repo.save_concept_state`` stored) is the newest unnumbered format (8). The older formats still read then
(1-7, dated from ``git log -p`` of worker/monitor/concept.py and models/drift/detectors.py) are made from it
by undoing each change in turn, as those releases wrote their rows. For every blob the old code loads it and
records its state right after loading and the alerts and state after the rest of the stream: what the new
code must reproduce.
"""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path
from types import SimpleNamespace

HERE = Path(__file__).resolve().parent

SCENARIOS = {
    # name: (stream kind, labels, seed, gap, shifts, cut, config overrides)
    "collecting": ("regression", 3000, 21, 0.1, {2000: 1.5}, 600, {}),
    "refining": ("regression", 6000, 22, 0.1, {4500: 1.0}, 2600, {"production_refine_labels": 4000}),
    "episode": ("regression", 9000, 23, 0.0, {3000: 1.5, 6000: 2.0}, 4700, {}),
    "scored": ("scored", 7000, 24, 0.0, {4500: 0.15}, 3200, {}),
    "validation_baseline": ("regression", 4000, 25, 0.0, {2500: 1.5}, 1500, {"production_baseline_labels": 0}),
}
SMALL = {"pt_horizon_buckets": 120, "rolling_window": 200, "rolling_long_window": 600}  # small blobs


def _streams():
    spec = importlib.util.spec_from_file_location("concept_state_streams", HERE / "streams.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# Each older format from the next one, undoing what its release changed (blob: the parsed "detectors" column).
def _to_7(blob):  # 6c67401 (2026-11-30 11:05) replaced settled_thresholds by tighten_at
    tighten = blob["production"].pop("tighten_at")
    blob["production"]["settled_thresholds"] = None if tighten is None else tighten[-1][1:]


def _to_6(blob):  # a727c2b (2026-11-30 06:16) dropped the arrival-order CUSUM and added the skewness
    del blob["production"]["skewness"]
    blob["detectors"]["cusum"] = [1.25, 0.0]


def _to_5(blob):  # eb77700 (2026-11-30 05:34) added settled_thresholds
    del blob["production"]["settled_thresholds"]


def _to_4(blob):  # ad3f48c (2026-11-29 23:47) added first_labels
    del blob["production"]["first_labels"]


def _to_3(blob):  # 9eb3365 (2026-11-29 20:09) added the k/2 CUSUM, its threshold and gap_pending
    del blob["detectors"]["prediction_time_cusum_small"], blob["production"]["small_cusum_h"]
    del blob["production"]["gap_pending"]


def _suffix(state):
    return state[:4] + [state[4] - p for p in state[5:]]


def _to_2(blob):  # 68fdf18 (2026-11-29 18:11) stored prefix sums and their total instead of suffix sums
    blob["detectors"]["prediction_time_cusum"] = _suffix(blob["detectors"]["prediction_time_cusum"])
    if blob["episode"]["escalation_pt"] is not None:
        blob["episode"]["escalation_pt"] = _suffix(blob["episode"]["escalation_pt"])


DOWNGRADES = {7: _to_7, 6: _to_6, 5: _to_5, 4: _to_4, 3: _to_3, 2: _to_2}


def _older(row: dict, format_number: int) -> dict:
    """The row as the release writing ``format_number`` (2-7) wrote it, from a format-8 row."""
    blob = json.loads(row["detectors"])
    for n in range(7, format_number - 1, -1):
        DOWNGRADES[n](blob)
        if "log_loss" in blob:
            inner = json.loads(blob["log_loss"]["detectors"])
            DOWNGRADES[n](inner)
            blob["log_loss"] = {**blob["log_loss"], "detectors": json.dumps(inner)}
    return {**row, "detectors": json.dumps(blob)}


def _format_1(row: dict) -> dict:
    """Before the production baseline (97fbaef, 2026-11-28 20:41): the detectors alone, three of them."""
    detectors = json.loads(row["detectors"])["detectors"]
    return {
        **row,
        "detectors": json.dumps(
            {"page_hinkley": detectors["page_hinkley"], "cusum": [2.5, 0.0], "rolling_mean": detectors["rolling_mean"]}
        ),
    }


def _alert(alert) -> dict:
    d = alert.data
    return {
        "id": alert.id,
        "episode": d.episode,
        "detector": d.detector,
        "metric": d.metric,
        "value": d.value,
        "threshold": d.threshold,
        "label_count": d.label_count,
        "change_started_at": d.change_started_at,
    }


def main() -> None:
    from undertow.models.drift.config import DriftConfig
    from undertow.models.reference import error_sample
    from undertow.worker.monitor import concept

    print("recording with", concept.__file__, file=sys.stderr)
    streams = _streams()
    for name, (kind, n, seed, gap, shifts, cut, overrides) in SCENARIOS.items():
        config = DriftConfig(**SMALL, **overrides)
        validation, labels = streams.labelled_stream(kind, n, seed, gap, shifts)
        metric = "absolute_error" if kind == "regression" else "misclassification"

        def monitor(state=None, config=config, validation=validation):
            return concept.ErrorStreamMonitor(
                "m", "1", config, float(validation.mean()), float(validation.std()), state, error_sample(validation)
            )

        def feed(m, part, metric=metric):
            alerts = []
            for error, loss, arrived, predicted in part:
                alerts += m.update(error, metric, arrived, predicted)
                if loss is not None:
                    alerts += m.update_log_loss(loss, arrived, predicted)
            return [_alert(a) for a in alerts]

        first = monitor()
        before = feed(first, labels[:cut])
        row = first.state_values()
        formats = {8: row, **{k: _older(row, k) for k in range(2, 8)}}
        if name == "validation_baseline":
            formats[1] = _format_1(row)
        for number, blob_row in sorted(formats.items()):
            loaded = monitor(SimpleNamespace(**blob_row))
            after_loading = loaded.state_values()
            alerts = feed(loaded, labels[cut:])
            record = {
                "scenario": name,
                "format": number,
                "state_format": None,
                "written_by": "e8601f9 (the format-8 row as written; older formats undone from it as their "
                "releases wrote them: see DOWNGRADES)",
                "stream": {
                    "kind": kind,
                    "labels": n,
                    "seed": seed,
                    "gap": gap,
                    "shifts": shifts,
                    "cut": cut,
                    "metric": metric,
                },
                "config": json.loads(config.model_dump_json()),
                "alerts_before_cut": before,
                "row": blob_row,
                "after_loading": after_loading,
                "continuation": {"alerts": alerts, "row": loaded.state_values()},
            }
            path = HERE / f"{name}_format{number}.json"
            path.write_text(json.dumps(record) + "\n")
            print(path.name, len(before), "alerts before,", len(alerts), "after", file=sys.stderr)


if __name__ == "__main__":
    main()
