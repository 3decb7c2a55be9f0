"""What ``undertow status`` shows of each spread model's merge: per source partition its watermarks and
whether the merge waits for it, what is held back, what came late."""

from __future__ import annotations

from sqlalchemy.orm import Session

from undertow.models import registry
from undertow.storage import spread as spread_repo
from undertow.worker.monitor.spread.merge_state import FORMAT, MergeProgress, ModelMerge
from undertow.worker.runtime.cloudevents import rfc3339


def spread_status(session: Session, wait_seconds: float) -> list[dict]:
    """One entry per spread model (and per model with a merge left from when it was spread)."""
    merges = {row.model_id: row for row in spread_repo.merge_states(session)}
    out = []
    for model_id in sorted(registry.spread_models(session) | set(merges)):
        row = merges.get(model_id)
        if row is None or row.state_format != FORMAT:
            out.append({"model_id": model_id, "merged": False, "partitions": []})
            continue
        progress = MergeProgress.model_validate_json(row.state)
        passed, silent = ModelMerge(model_id, progress, [], wait_seconds).waited_for()
        newest = max(progress.watermarks.values(), default=0.0)
        out.append(
            {
                "model_id": model_id,
                "merged": True,
                "merged_to": None if passed is None else rfc3339(passed),
                "partials": progress.partials,
                "duplicate_partials": progress.duplicate_partials,
                "held_rows": progress.held_rows,
                "held_pairs": progress.held_pairs,
                "late_rows": progress.late_rows,
                "late_pairs": progress.late_pairs,
                "partitions": [
                    {
                        "partition": n,
                        "watermark": None if n not in progress.watermarks else rfc3339(progress.watermarks[n]),
                        "label_watermark": (
                            None if n not in progress.label_watermarks else rfc3339(progress.label_watermarks[n])
                        ),
                        "behind_seconds": None if n not in progress.watermarks else newest - progress.watermarks[n],
                        "waited_for": n not in silent,
                    }
                    for n in range(progress.partitions)
                ],
            }
        )
    return out


def print_spread(entries: list[dict], wait_seconds: float) -> None:
    for s in entries:
        if not s["merged"]:
            print(f"spread model {s['model_id']}: nothing merged yet")
            continue
        silent = [p["partition"] for p in s["partitions"] if not p["waited_for"]]
        note = f"; not waited for (over {wait_seconds:g} s behind): {silent}" if silent else ""
        print(
            f"spread model {s['model_id']}: merged to {s['merged_to'] or '-'}, {s['partials']} partials "
            f"(and {s['duplicate_partials']} sent again, dropped), held "
            f"{s['held_rows']} rows and {s['held_pairs']} pairs, late {s['late_rows']}/{s['late_pairs']}{note}"
        )
        for p in s["partitions"]:
            behind = "-" if p["behind_seconds"] is None else f"{p['behind_seconds']:.1f} s behind"
            print(
                f"    partition {p['partition']}: predictions to {p['watermark'] or '(none yet)'} ({behind}), "
                f"labels to {p['label_watermark'] or '(none yet)'}"
            )
