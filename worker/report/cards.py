"""Model cards as readable sections (Model, Intended use, Data, Training, Evaluation and gate, Caveats,
Lineage, Environment), from the card ``undertow models card`` prints (``models.card.model_card``) and the
version's training run: labelled fields, numbers to four significant digits, times as dates, nested
values (the gate's numbers) as nested lists. Never JSON: a reader should not have to parse braces.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any

from undertow.models.profile import PREDICTION_FEATURE
from undertow.worker.report.alerts import number
from undertow.worker.report.gather import Version
from undertow.worker.report.times import parse, readable

LABELS = {
    "r2": "R²",
    "mae": "MAE",
    "rmse": "RMSE",
    "sha256": "data sha256",
    "artifact_sha256": "artifact sha256",
    "holdout_pairs": "held-out pairs",
    "min_holdout": "held-out pairs needed",
    "min_gain": "minimum gain",
    "champion_mean_error": "champion's mean error",
    "candidate_mean_error": "candidate's mean error",
    "mean_improvement": "mean improvement",
    "improvement_low": "improvement, interval low",
    "improvement_high": "improvement, interval high",
    "champion_own_test_error": "champion's error on its own test set",
    "candidate_own_test_error": "candidate's error on the champion's test set",
    "own_test": "champion's own test set",
    "baseline_error_mean": "baseline error, mean",
    "baseline_error_std": "baseline error, sd",
    "holdout_rows": "held-out rows",
    "train_rows": "training rows",
    "gap_rows": "rows left out between training and holdout",
    "model_id": "model id",
    "registered_at": "registered",
}
RFC3339 = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?Z$")


@dataclass(frozen=True)
class Entry:
    label: str
    value: str = ""
    children: list[Entry] = field(default_factory=list)
    title: str = ""  # the full value where ``value`` is shortened (a hash)


@dataclass(frozen=True)
class Section:
    title: str
    entries: list[Entry] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # sentences: caveats, the champion history


def label(key: str) -> str:
    return LABELS.get(key, key.replace("_", " "))


def shown(value: Any) -> str:
    """One scalar as the page shows it."""
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        return number(value)
    text = str(value)
    if RFC3339.match(text):
        return readable(parse(text))
    return "model output (__prediction__)" if text == PREDICTION_FEATURE else text


def entries(values: dict[str, Any]) -> list[Entry]:
    """Fields of a card section; unknown (None) ones left out, as the Markdown card does."""
    out = []
    for key, value in values.items():
        if value is None or value == {} or value == []:
            continue
        if isinstance(value, dict):
            out.append(Entry(label(key), children=entries(value)))
        elif isinstance(value, list):
            out.append(Entry(label(key), ", ".join(shown(v) for v in value)))
        elif key.endswith("sha256") and isinstance(value, str) and len(value) > 16:
            out.append(Entry(label(key), value[:16] + "…", title=value))
        else:
            out.append(Entry(label(key), shown(value)))
    return out


def sections(version: Version) -> list[Section]:
    card = version.card
    details = dict(card["model_details"])
    if version.task_source and version.task_source != "registry":
        details["task"] = f"{version.task} ({version.task_source})"
    evaluation = dict(card["evaluation"])
    gate = evaluation.pop("gate", None)
    result = [
        Section("Model", entries(details)),
        Section("Intended use", entries(card["intended_use"]), [] if card["intended_use"] else ["Not stated."]),
        Section("Data", entries(card["training_data"])),
        _training(version),
        Section("Evaluation", entries(evaluation)),
    ]
    if gate:
        result.append(Section("Gate", entries(gate)))
    if card.get("feature_importance"):  # measured at registration where an artifact and held-out rows were given
        result.append(Section("Feature importance", entries(card["feature_importance"])))
    result += [
        Section("Caveats", notes=card["caveats"] or ["Not stated."]),
        _lineage(version),
        Section("Environment", entries(card["environment"])),
    ]
    return result


def _training(version: Version) -> Section:
    run = version.run
    if run is None:
        return Section("Training", notes=["No training run recorded: the version was registered from outside."])
    trigger = json.loads(run.trigger or "{}")
    values: dict[str, Any] = {
        "run": run.run_id,
        "status": run.status,
        "outcome": run.outcome,
        "reason": trigger.get("reason"),
        "accepted_at": _at(run.accepted_at),
        "finished_at": _at(run.finished_at),
        "parameters": json.loads(run.params or "{}"),
        "durations": json.loads(run.durations or "{}"),
    }
    return Section("Training", entries(values))


def _at(ts: float | None) -> str | None:
    return None if ts is None else readable(ts)


def _lineage(version: Version) -> Section:
    """Where the version came from: the run and request that made it, the champion it was judged against,
    and its turns as champion."""
    run = version.run
    values: dict[str, Any] = {}
    if run is not None:
        values["trained by run"] = run.run_id
        values["retrain request"] = run.request_id
        values["judged against version"] = run.champion_version
    values["artifact_sha256"] = version.sha256 or None
    history = [
        f"{readable(parse(c['at']))}: {c['action']} by {c['actor']}: {c['reason']}"
        for c in version.card["champion_history"]
        if c.get("at")
    ]
    return Section("Lineage", entries(values), history or ["Never champion."])
