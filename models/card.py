"""Model cards (Mitchell et al., 2019) generated from what the registry knows, as JSON and Markdown.

What the registry cannot know (intended use, out-of-scope uses, caveats)
comes from the user at training or registration and is stored with the
version; everything else is read from the version, its training run and
the champion history, so the card never disagrees with the registry.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

from undertow.storage.tables import ChampionChange, ModelVersion, TrainingRun


def _iso(ts: float | None) -> str | None:
    # RFC 3339 with "Z", as every other time Undertow prints.
    return None if ts is None else datetime.fromtimestamp(ts, UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def model_card(row: ModelVersion, run: TrainingRun | None, changes: list[ChampionChange]) -> dict[str, Any]:
    stored = json.loads(row.model_card or "{}")
    details = stored.get("model_details", {})
    training_data = dict(stored.get("training_data", {}))
    evaluation = dict(stored.get("evaluation", {}))
    caveats = list(stored.get("caveats", []))
    if run is not None:
        data = json.loads(run.data)
        training_data |= {
            k: data[k]
            for k in (
                "train_rows",
                "holdout_rows",
                "gap_rows",
                "train_from",
                "train_to",
                "holdout_from",
                "holdout_to",
                "sha256",
            )
            if k in data
        }
        evaluation["gate"] = json.loads(run.metrics).get("gate")
        evaluation["candidate_metrics"] = json.loads(run.metrics).get("candidate")
        if data.get("train_to"):
            caveats.append(
                f"trained by run {run.run_id} ({json.loads(run.trigger).get('reason')}) on labelled "
                f"pairs predicted up to {data['train_to']}; it has not seen later data"
            )
    if row.baseline_error_mean is None:
        caveats.append("no baseline error: concept drift is not checked for this version")
    return {
        "model_details": {
            "model_id": row.model_id,
            "version": row.version,
            "stage": row.stage,
            "task": row.task,
            "algorithm": details.get("algorithm"),
            "registered_at": _iso(row.created_at),
            "artifact_sha256": row.artifact_sha256,
            "training_run": row.run_id,
        },
        "intended_use": stored.get("intended_use", {}),
        "training_data": training_data,
        "evaluation": {
            "baseline_error_mean": row.baseline_error_mean,
            "baseline_error_std": row.baseline_error_std,
            **evaluation,
        },
        "caveats": caveats,
        "champion_history": [
            {"at": _iso(c.changed_at), "action": c.action, "actor": c.actor, "reason": c.reason}
            for c in changes
            if c.version == row.version
        ],
        "environment": stored.get("environment", {}),
        # Each input's share of the permutation importance on the held-out rows (models.importance), most first.
        "feature_importance": stored.get("feature_importance", {}),
    }


def markdown(card: dict[str, Any]) -> str:
    details = card["model_details"]
    lines = [f"# Model card: {details['model_id']} version {details['version']}", ""]
    for title, section in (
        ("Model details", details),
        ("Intended use", card["intended_use"]),
        ("Training data", card["training_data"]),
        ("Evaluation", card["evaluation"]),
        # Only where it was measured (an artifact and held-out rows at registration).
        *([("Feature importance", card["feature_importance"])] if card.get("feature_importance") else []),
        ("Environment", card["environment"]),
    ):
        lines += [f"## {title}", ""]
        if not section:
            lines += ["Not stated.", ""]
            continue
        for key, value in section.items():
            if value is None:  # unknown to the registry (e.g. no training run): left out, never "None"
                continue
            shown = json.dumps(value, sort_keys=True) if isinstance(value, (dict, list)) else value
            lines.append(f"- **{key.replace('_', ' ')}**: {shown}")
        lines.append("")
    lines += ["## Caveats", ""] + ([f"- {c}" for c in card["caveats"]] or ["None stated."]) + [""]
    lines += ["## Champion history", ""] + (
        [f"- {c['at']}: {c['action']} by {c['actor']}: {c['reason']}" for c in card["champion_history"]]
        or ["Never champion."]
    )
    return "\n".join(lines) + "\n"
