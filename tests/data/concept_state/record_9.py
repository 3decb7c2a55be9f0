"""Records concept_state rows of format 9 as the release that wrote them did, and what it did with them.

Run once against that release (the last of format 9, e1e63b0, checked out with
``git worktree add /tmp/concept-9 e1e63b0``):

    PYTHONPATH=/tmp/concept-9 .venv/bin/python tests/data/concept_state/record_9.py

Per scenario a stream runs through ``ErrorStreamMonitor`` up to a cut; its row (``state_values()``, what
``repo.save_concept_state`` stored, ``state_format`` 9) is recorded with that code's state right after
loading it and its alerts and state after the rest of the stream, in format9/<scenario>.json. The scenarios
cut episodes in each of format 9's phases: its level measured and watched (the main stream, the log loss),
its level being measured, and no episode open.
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
    "episode": ("regression", 9000, 23, 0.0, {3000: 1.5, 6000: 2.0}, 4700, {}),
    "measuring": ("regression", 9000, 23, 0.0, {3000: 1.5, 6000: 2.0}, 2800, {}),
    "scored_episode": ("scored", 9000, 24, 0.0, {3000: 0.15, 6000: 0.35}, 4700, {}),
    "quiet": ("regression", 6000, 22, 0.1, {4500: 1.0}, 2600, {"production_refine_labels": 4000}),
}
SMALL = {"pt_horizon_buckets": 120, "rolling_window": 200, "rolling_long_window": 600}  # small blobs


def _streams():
    spec = importlib.util.spec_from_file_location("concept_state_streams", HERE / "streams.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


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
    from undertow.models.drift.concept_state import CURRENT_FORMAT
    from undertow.models.drift.config import DriftConfig
    from undertow.models.reference import error_sample
    from undertow.worker.monitor import concept

    print("recording with", concept.__file__, "format", CURRENT_FORMAT, file=sys.stderr)
    if CURRENT_FORMAT != 9:
        raise SystemExit("run against the release that writes format 9")
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
        loaded = monitor(SimpleNamespace(**row))
        after_loading = loaded.state_values()
        alerts = feed(loaded, labels[cut:])
        record = {
            "scenario": name,
            "format": 9,
            "written_by": "e1e63b0",
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
            "row": row,
            "after_loading": after_loading,
            "continuation": {"alerts": alerts, "row": loaded.state_values()},
        }
        path = HERE / "format9" / f"{name}.json"
        path.write_text(json.dumps(record) + "\n")
        episode = json.loads(row["detectors"])["episode"]
        print(
            path.name,
            len(before),
            "alerts before,",
            len(alerts),
            "after; in episode",
            row["in_episode"],
            "level",
            episode["level"],
            "level_z",
            len(episode["level_z"]),
            file=sys.stderr,
        )


if __name__ == "__main__":
    main()
