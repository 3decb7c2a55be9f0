"""The headline verdict, the first thing on the page: what is drifting on the champion now and since when
(inputs, the model output, the window-level checks, concept drift), then which version is champion and
the gate's last decision with its numbers. Evidently's report opens the same way: the answer, then the
evidence.

Everything here is read off the per-feature table's rows and the alerts' open episodes, so the verdict
and the table below it cannot disagree.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from undertow.models.drift.episodes import SIGNIFICANT
from undertow.models.profile import PREDICTION_FEATURE
from undertow.worker.report.alerts import explained, number
from undertow.worker.report.features import FeatureRow
from undertow.worker.report.gather import Gate, ReportData
from undertow.worker.report.times import parse, readable

DRIFT, WATCH, CALM = "drift", "watch", "no-drift"  # the verdict's state (its CSS class)


@dataclass(frozen=True)
class Line:
    label: str
    text: str
    state: str = ""  # DRIFT, WATCH or CALM: how the line is marked


@dataclass(frozen=True)
class Verdict:
    state: str
    headline: str
    lines: list[Line]


def verdict(data: ReportData, rows: list[FeatureRow]) -> Verdict:
    champion = data.champion.version
    concept = [s for s in data.open_spans if s["type"] == "drift.concept"]
    drifting = [r for r in rows if r.drifted]
    lines = [
        _inputs(data, rows),
        _output(rows),
        *_checks(rows),
        _concept(data, concept),
        _champion(data),
        _last_gate(data.gates),
        *_earlier(data),
    ]
    significant = any(r.severity == SIGNIFICANT for r in drifting) or bool(concept)
    state = DRIFT if significant else WATCH if drifting else CALM
    return Verdict(state, _headline(champion, drifting, concept), [line for line in lines if line is not None])


def _headline(champion: str, drifting: list[FeatureRow], concept: list[dict[str, Any]]) -> str:
    """One sentence: what drifts, grouped (the inputs, the output, the checks, concept drift), since the
    earliest start; each one's own start is in the lines under it."""
    if not drifting and not concept:
        return f"No drift on version {champion}, the champion"
    inputs = [r.label for r in drifting if not r.is_check and r.name != PREDICTION_FEATURE]
    parts = [f"input{'s' if len(inputs) > 1 else ''} {', '.join(inputs)}"] if inputs else []
    parts += ["the model output" for r in drifting if r.name == PREDICTION_FEATURE]
    parts += [r.label.split(":")[0] for r in drifting if r.is_check]
    if concept:
        parts.append(f"concept drift ({', '.join(s['what'] for s in concept)})")
    starts = [r.since_ts for r in drifting if r.since_ts is not None] + [_concept_start(s) for s in concept]
    since = f", since {readable(min(starts))}" if starts else ""
    return f"Drift on version {champion}, the champion{since}: " + "; ".join(parts)


def _named(rows: list[FeatureRow]) -> str:
    return ", ".join(f"{r.label} ({r.severity}, since {r.since or 'the newest window'})" for r in rows)


def _inputs(data: ReportData, rows: list[FeatureRow]) -> Line:
    inputs = [r for r in rows if not r.is_check and r.name != PREDICTION_FEATURE]
    drifted = [r for r in inputs if r.drifted]
    windows = {w[1] for w in data.windows if w[0] == data.champion.version}
    if drifted:
        state = DRIFT if any(r.severity == SIGNIFICANT for r in drifted) else WATCH
        return Line("Inputs", f"{len(drifted)} of {len(inputs)} drifting: {_named(drifted)}", state)
    if not windows:
        return Line("Inputs", f"no window evaluated yet for version {data.champion.version}")
    newest = max(w[3] for w in data.windows if w[0] == data.champion.version)
    return Line(
        "Inputs",
        f"none of {len(inputs)} drifting ({len(windows)} window{'s' if len(windows) > 1 else ''} evaluated; "
        f"the newest ended {readable(newest)})",
        CALM,
    )


def _output(rows: list[FeatureRow]) -> Line | None:
    output = next((r for r in rows if r.name == PREDICTION_FEATURE), None)
    if output is None:
        return None
    if output.drifted:
        state = DRIFT if output.severity == SIGNIFICANT else WATCH
        return Line("Model output", f"drifting ({output.severity}, PSI {output.psi}) since {output.since}", state)
    return Line("Model output", f"stable (PSI {output.psi})", CALM)


def _checks(rows: list[FeatureRow]) -> list[Line]:
    """Only the checks that fire: a quiet check is in the table, not worth a headline line."""
    return [
        Line(r.label.split(":")[0].capitalize(), f"{r.statistic} ({r.threshold}) since {r.since or '–'}", DRIFT)
        for r in rows
        if r.is_check and r.drifted
    ]


def _concept_start(span: dict[str, Any]) -> float:
    """The estimated start of the change when the detector gave one, else when the alarm fired."""
    return parse(span["first"].get("change_started_at") or span["started"])


def _concept_since(span: dict[str, Any]) -> str:
    return readable(_concept_start(span))


def _concept(data: ReportData, spans: list[dict[str, Any]]) -> Line:
    champion = data.champion
    if spans:
        text = "; ".join(
            f"{s['what']} since {_concept_since(s)} ({s['first']['detector']} fired at {readable(parse(s['started']))})"
            + (
                f", explained by {explained(s['first']['explained_by'], most=1)}"
                if s["first"].get("explained_by")
                else ""
            )
            for s in spans
        )
        return Line("Concept drift", text, DRIFT)
    if champion.validation is None:
        return Line("Concept drift", f"not checked: version {champion.version} has no baseline error")
    labelled = sum(1 for p in data.pairs if p[2] == champion.version)
    return Line(
        "Concept drift", f"none ({labelled:,} labelled predictions of version {champion.version} checked)", CALM
    )


def _champion(data: ReportData) -> Line:
    champion = data.champion
    change = next((c for c in reversed(data.history) if c.version == champion.version), None)
    if change is None:
        return Line("Champion", f"version {champion.version} ({champion.task})")
    return Line(
        "Champion",
        f"version {champion.version} ({champion.task}), {change.action} by {change.actor} "
        f"on {readable(change.changed_at)}",
    )


def _errors(n: dict[str, Any]) -> str:
    if "champion_mean_error" not in n:
        return f"on {n.get('holdout_pairs', 0)} held-out pairs (at least {n.get('min_holdout', '–')} needed)"
    return (
        f"on {n['holdout_pairs']} held-out pairs the champion's mean error {number(n['champion_mean_error'])}, "
        f"the candidate's {number(n['candidate_mean_error'])}"
    )


def _interval(n: dict[str, Any]) -> str:
    if "improvement_low" not in n:
        return ""
    return (
        f"{n['confidence']:.0%} interval of the improvement [{number(n['improvement_low'])}, "
        f"{number(n['improvement_high'])}] against a minimum gain of {number(n['min_gain'])}"
    )


def gate_numbers(gate: Gate) -> str:
    """The gate's numbers in words: both mean errors on the same held-out pairs, and the interval of the
    improvement against the minimum gain it had to clear."""
    return "; ".join(part for part in (_errors(gate.numbers), _interval(gate.numbers)) if part)


def _last_gate(gates: list[Gate]) -> Line:
    if not gates:
        return Line("Last gate decision", "none yet: no candidate has been judged")
    gate = gates[-1]
    when = f" on {readable(gate.finished_at)}" if gate.finished_at else ""
    head = f"candidate version {gate.candidate} {gate.status}{when}: "
    if gate.status != "rejected":
        return Line("Last gate decision", head + gate_numbers(gate), CALM)
    # A rejection's reasons already quote the numbers that failed; the errors say what was compared.
    reasons = gate.outcome.removeprefix("gate failed: ")
    interval = _interval(gate.numbers) if "interval of the improvement" not in reasons else ""
    parts = [_errors(gate.numbers), interval, reasons]
    return Line("Last gate decision", head + "; ".join(p for p in parts if p), WATCH)


def _earlier(data: ReportData) -> list[Line]:
    """What earlier versions drifted on: how the champion came to be (the episodes table has the detail)."""
    lines = []
    for v in data.versions:
        if v.version == data.champion.version:
            continue
        spans = [s for s in data.spans if s["version"] == v.version]
        if spans:
            what = sorted({s["described"] for s in spans})
            lines.append(Line(f"Version {v.version} ({v.stage})", "drifted on " + ", ".join(what)))
    return lines
