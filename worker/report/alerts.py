"""The report's alert and episode tables: one formatter per alert type.

Each alert type carries different numbers (a window's PSI, a share of
drifted inputs, a z of the PCA reconstruction error, an estimated accuracy,
a detector's statistic), so each has its own formatter, chosen by the
event's ``type``; a reader sees which number was compared with which
threshold, both in the same unit. One generic formatter reading ``value``
broke on the first dataset alert, which has none (issue 30).

The events are read as the stored JSON, not parsed into the pydantic
models: an event stored by an earlier release (an ``episode`` of
"changed", a field since added) must still show, not stop the report.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

from undertow.models.drift.config import DriftConfig
from undertow.models.profile import PREDICTION_FEATURE
from undertow.worker.runtime.output_events import (
    ConceptDriftAlert,
    DataDriftAlert,
    DatasetDriftAlert,
    DependenceDriftAlert,
    MultivariateDriftAlert,
    PerformanceEstimateAlert,
    PredictionDriftAlert,
)

NONE_SHOWN = "–"  # a number the event does not carry (never "None" in the page)
FEATURES_SHOWN = 8  # features named in a note; more are counted


@dataclass(frozen=True)
class Detail:
    """What one alert row shows beside its time, type, version, severity and episode."""

    what: str  # the feature, check or detector the alert is about
    stream: str  # what an episode of it is about: alerts of one stream make one episode
    measure: str  # what value and threshold measure, with their unit
    value: str
    threshold: str
    note: str = ""


def number(x: float | None) -> str:
    """Four significant digits, the same for a value and its threshold, so the two compare by eye.

    >>> number(0.41234), number(0.25), number(6.0), number(None), number(float("nan"))
    ('0.4123', '0.25', '6', '–', 'not finite')
    """
    if x is None:
        return NONE_SHOWN
    if not math.isfinite(x):  # the events refuse NaN; an old or hand-written row must still not show "nan"
        return "not finite"
    return f"{x:.4g}"


def _names(features: list[str]) -> str:
    shown = ", ".join(features[:FEATURES_SHOWN])
    return shown + (f" and {len(features) - FEATURES_SHOWN} more" if len(features) > FEATURES_SHOWN else "")


def _exit(threshold: float, config: DriftConfig) -> float:
    """The lower threshold of the hysteresis: an episode ends once the value stays under it (for
    ``end_after`` windows), so an ended row compares its value with this one, not the entry threshold."""
    return threshold * config.psi_exit_ratio


def _tests(d: dict) -> str:
    parts = []
    if d.get("ks_statistic") is not None:
        parts.append(f"KS {number(d['ks_statistic'])} (p {number(d.get('ks_pvalue'))})")
    if d.get("chi2_statistic") is not None:
        parts.append(f"chi² {number(d['chi2_statistic'])} (p {number(d.get('chi2_pvalue'))})")
    if d.get("missing_share"):
        parts.append(f"missing {number(d['missing_share'])}")
    return "; ".join(parts)


def _psi_threshold(d: dict, config: DriftConfig) -> tuple[float, str]:
    """The PSI the window was compared with, and why that one. The event carries none: it is the band of
    the version's configuration (the model output has bands of its own)."""
    if d["feature"] == PREDICTION_FEATURE:
        moderate, significant = config.prediction_psi_moderate, config.prediction_psi_significant
    else:
        moderate, significant = config.psi_moderate, config.psi_significant
    if d["episode"] == "ended":
        return _exit(moderate, config), "ended: under the moderate band's exit threshold"
    if d.get("rule") == "cumulative":
        # The window's PSI is under the band: evidence summed over windows raised it.
        return moderate, "cumulative rule: drift too gradual for one window's PSI, summed over windows"
    if d["severity"] == "significant":
        return significant, "significant band"
    return moderate, "moderate band"


def data_drift(d: dict, config: DriftConfig) -> Detail:
    """undertow.drift.data and undertow.drift.prediction: the window's PSI against its band."""
    threshold, why = _psi_threshold(d, config)
    what = "model output (__prediction__)" if d["feature"] == PREDICTION_FEATURE else d["feature"]
    note = "; ".join(part for part in (why, _tests(d)) if part)
    return Detail(what, what, "PSI of the window", number(d["psi"]), number(threshold), note)


def dataset_drift(d: dict, config: DriftConfig) -> Detail:
    drifted = d.get("drifted_features") or []
    note = f"drifting: {_names(drifted)}" if drifted else "no input drifting"
    if d.get("ranked") and d["ranked"][0].get("importance") is not None:
        top = d["ranked"][:3]
        note = "drifting, those that matter most to the model first (PSI x importance): " + ", ".join(
            f"{r['feature']} ({number(r['psi'])} x {number(r['importance'])})" for r in top
        )
        if len(drifted) > len(top):
            note += f" and {len(drifted) - len(top)} more"
    return Detail(
        "dataset",
        "dataset",
        "share of inputs drifting (moderate or significant)",
        number(d["drifted_share"]),
        number(d["threshold"]),
        note,
    )


def multivariate_drift(d: dict, config: DriftConfig) -> Detail:
    """z against its threshold (both in standard errors): the raw reconstruction error is in other units
    and goes in the note, beside its reference."""
    threshold = _exit(d["threshold"], config) if d["episode"] == "ended" else d["threshold"]
    note = (
        f"PCA reconstruction error {number(d['value'])} against {number(d['reference'])} on the reference; "
        f"features: {_names(d.get('features') or [])}"
    )
    return Detail(
        "multivariate",
        "multivariate",
        "z: standard errors of the reconstruction error above the reference",
        number(d["z"]),
        number(threshold),
        note,
    )


def _pair(p: dict) -> str:
    a, b = p["features"]
    return f"{a} & {b}: {number(p['reference'])} → {number(p['value'])} (z {number(p['z'])})"


def dependence_drift(d: dict, config: DriftConfig) -> Detail:
    """The largest |z| over the pairs tested against its threshold (both in standard errors of a pair's
    Fisher z); the pairs that moved most, as rank correlations reference → window, go in the note."""
    threshold = _exit(d["threshold"], config) if d["episode"] == "ended" else d["threshold"]
    pairs = "; ".join(_pair(p) for p in d.get("pairs") or [])
    note = (
        f"rank correlation, reference → window: {pairs or 'no pair recorded'}; {d.get('pairs_tested', 0):,} pairs "
        f"tested; a pair drifts from a change of {number(d.get('moderate'))} (moderate), "
        f"{number(d.get('significant'))} (significant)"
    )
    lead = d["pairs"][0]["features"] if d.get("pairs") else []
    return Detail(
        " & ".join(lead) or "dependence",
        "dependence",  # one episode whichever pair leads each alert
        "largest |z| of a pair's correlation change (standard errors)",
        number(d["z"]),
        number(threshold),
        note,
    )


def performance_estimate(d: dict, config: DriftConfig) -> Detail:
    """The accuracy the window's scores imply, alerted below the threshold (lower is worse)."""
    threshold = d["threshold"]
    if d["episode"] == "ended":  # the exit keeps the same share of the gap under the validation accuracy
        threshold = d["reference"] - (d["reference"] - threshold) * config.psi_exit_ratio
    note = f"validation accuracy {number(d['reference'])}; {d.get('scored_rows', 0):,} scored rows, no label used"
    return Detail(
        "estimated accuracy",
        "estimated accuracy",
        "estimated accuracy (alert below the threshold)",
        number(d["value"]),
        number(threshold),
        note,
    )


DETECTORS = {
    "page_hinkley": "Page-Hinkley statistic",
    "cusum": "CUSUM statistic",
    "rolling_mean": "rolling mean of the error",
    "rolling_mean_long": "long rolling mean of the error",
    "prediction_time_cusum": "CUSUM in prediction time",
    "escalation_cusum": "CUSUM above the episode's level",
    "production_baseline": "production mean error",
}


# Detectors whose statistic sums each label's excess: its value is no rise of the error itself.
CUMULATIVE = frozenset({"page_hinkley", "cusum", "prediction_time_cusum"})


def _concept_note(d: dict) -> str:
    baseline = d.get("baseline") or {}
    named = "validation error" if d["episode"] == "deployment_gap" else "baseline error"
    parts = [f"{named} {number(baseline.get('mean'))} (sd {number(baseline.get('sd'))})"]
    if d.get("recent_mean_error") is not None:
        parts.append(f"recent mean error {number(d['recent_mean_error'])}")
    if d.get("change_started_at"):
        parts.append(f"change began about {d['change_started_at']}")
    if d.get("threshold") is None:
        parts.append("no threshold recorded")
    if d.get("explained_by"):
        parts.append(f"explained by {explained(d['explained_by'])}")
    return "; ".join(parts)


def explained(explanations: list[dict], most: int = 2) -> str:
    """The inputs that explain a change of the error, the first ``most`` of them: where, and how much.

    >>> explained([{"feature": "rooms", "share": 0.92, "z": 12.0, "bins": [
    ...     {"range": "> 6.5", "error_before": 0.4, "error_after": 2.1, "share_of_pairs": 0.2}]}])
    'rooms (92 % of the change, in > 6.5: error 0.4 to 2.1)'
    >>> explained([{"feature": "zip", "share": 0.0, "z": 3.1, "bins": []}])
    'zip (uneven over its range, z 3.1)'
    """
    parts = []
    for e in explanations[:most]:
        bins = e.get("bins") or []
        if e["share"] > 0 and bins:
            b = bins[0]
            where = f"in {b['range']}: error {number(b['error_before'])} to {number(b['error_after'])}"
            parts.append(f"{e['feature']} ({round(100 * e['share'])} % of the change, {where})")
        else:
            parts.append(f"{e['feature']} (uneven over its range, z {number(e['z'])})")
    return "; ".join(parts)


def concept_drift(d: dict, config: DriftConfig) -> Detail:
    """A detector's statistic against its threshold, both in the event's unit: the baseline's standard
    deviations, or the metric itself (the deployment gap: production error against validation error)."""
    # A standardised statistic reads as a rise over the baseline, not as an error: "0.151 against 0.150"
    # beside a mean error of 0.1 must not look like an error of 0.15.
    detector = d["detector"]
    if d.get("unit") != "baseline_sd":
        unit = d["metric"]
    elif detector in CUMULATIVE:  # a sum over many labels: 50 may be 0.07 sd above on each of 700 labels
        unit = "excess over the baseline error summed over labels, in its standard deviations"
    else:
        unit = "standard deviations above the baseline error"
    if detector == "escalation_cusum":  # a CUSUM against the episode's own level, up (escalated) or down (improved)
        unit = "CUSUM against the episode's level, in baseline sd"
    return Detail(
        f"{detector} on {d['metric']}",
        d["metric"],
        f"{DETECTORS.get(detector, detector)} ({unit})",
        number(d["value"]),
        number(d.get("threshold")),
        _concept_note(d),
    )


def unknown(d: dict, config: DriftConfig) -> Detail:
    """An alert type this report does not know (a newer monitor's): listed, without numbers."""
    what = str(d.get("feature") or d.get("detector") or d.get("metric") or "")
    return Detail(what, what, "", NONE_SHOWN, NONE_SHOWN)


def _type(event_class) -> str:
    return event_class.model_fields["type"].default


FORMATTERS: dict[str, Callable[[dict, DriftConfig], Detail]] = {
    _type(DataDriftAlert): data_drift,
    _type(PredictionDriftAlert): data_drift,
    _type(DatasetDriftAlert): dataset_drift,
    _type(MultivariateDriftAlert): multivariate_drift,
    _type(DependenceDriftAlert): dependence_drift,
    _type(PerformanceEstimateAlert): performance_estimate,
    _type(ConceptDriftAlert): concept_drift,
}


def detail(event: dict, configs: dict[str, DriftConfig], default: DriftConfig) -> Detail:
    """The row detail of one stored alert, with its own version's configuration (the thresholds in force
    when it was raised) or, for a version no longer registered, ``default``."""
    d = event["data"]
    return FORMATTERS.get(event["type"], unknown)(d, configs.get(d["model_version"], default))


def alert_rows(events: list[dict], details: list[Detail]) -> list[dict]:
    return [
        {
            "time": e["time"],
            "type": e["type"].removeprefix("undertow."),
            "version": e["data"]["model_version"],
            "severity": e["data"]["severity"],
            "episode": e["data"]["episode"],
            "detail": dt,
        }
        for e, dt in zip(events, details)
    ]


DESCRIBED = {
    "drift.data": "input {}",
    "drift.prediction": "the model's output",
    "drift.dataset": "share of inputs drifting",
    "drift.multivariate": "all inputs together (multivariate)",
    "drift.dependence": "pairs of inputs moving together (dependence)",
    "performance.estimated": "estimated accuracy",
    "drift.concept": "the model's error ({})",
}


def described(kind: str, stream: str) -> str:
    """What an episode is about, in words: never empty, never "None" (an unknown type names itself)."""
    template = DESCRIBED.get(kind)
    if template is None:
        return f"{kind} {stream}".strip()
    return template.format(stream or "unnamed")


def episodes(events: list[dict], details: list[Detail]) -> list[dict]:
    """Started ... ended spans per stream: a feature, a check (dataset, multivariate, estimated accuracy) or
    a concept metric; a deployment gap is a single alert, not a span."""
    open_: dict[tuple, dict] = {}
    spans = []
    for event, dt in zip(events, details):
        d = event["data"]
        key = (event["type"], d["model_version"], dt.stream)
        if d["episode"] == "started":
            open_[key] = {
                "type": event["type"].removeprefix("undertow."),
                "version": d["model_version"],
                "what": dt.stream,
                "described": described(event["type"].removeprefix("undertow."), dt.stream),
                "started": event["time"],
                "first": d,  # the started alert's data: its rule, its estimated start
                "severity": d["severity"],  # the newest alert's
                "ended": None,
                "alerts": 1,
            }
            spans.append(open_[key])
        elif key in open_:
            open_[key]["alerts"] += 1
            open_[key]["severity"] = d["severity"]
            if d["episode"] == "ended":
                open_.pop(key)["ended"] = event["time"]
    return spans
