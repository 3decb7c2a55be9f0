"""The per-feature table: for the champion's newest window, each input's and the model output's test,
statistic, p-value, PSI, the threshold it is held to, whether it is drifting and since when; then the
window-level checks (share of inputs drifting, multivariate, estimated accuracy) in their own units.

"Drifted" is the monitor's episode (its stored state), not a verdict of this module: a feature stays
drifted until ``end_after`` windows in a row fall under the lower exit threshold (the hysteresis of
``models.drift.episodes``). So the threshold column names the threshold that applies now: the entry
band for a stable feature, the exit threshold for a drifting one, and the row agrees with its numbers.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from undertow.models.drift.config import DriftConfig
from undertow.models.drift.drift_state import DATASET, DEPENDENCE, MULTIVARIATE, PERFORMANCE
from undertow.models.drift.episodes import STABLE, Episode
from undertow.models.profile import PREDICTION_FEATURE
from undertow.worker.report.alerts import NONE_SHOWN, number
from undertow.worker.report.gather import ReportData
from undertow.worker.report.times import parse, readable

OUTPUT_LABEL = "model output (__prediction__)"


@dataclass(frozen=True)
class FeatureRow:
    name: str  # the feature as stored (``__prediction__`` for the output, ``__multivariate__`` ...)
    label: str  # as the reader sees it
    test: str
    statistic: str
    pvalue: str
    psi: str
    threshold: str  # the threshold that applies now, with its unit
    drifted: bool
    severity: str  # stable | moderate | significant
    since: str  # when the open episode started ("" when not drifting)
    since_ts: float | None
    note: str = ""

    @property
    def is_check(self) -> bool:
        return self.name.startswith("__") and self.name != PREDICTION_FEATURE


def feature_rows(data: ReportData) -> list[FeatureRow]:
    """Inputs in the profile's order, then the model output, then the checks."""
    champion = data.champion
    latest = {r.feature: r for r in data.latest}
    episodes = data.state.episodes if data.state is not None else {}
    spans = {(s["type"], s["what"]): s for s in data.open_spans}
    names = [n for n in champion.profile.features if n != PREDICTION_FEATURE]
    if PREDICTION_FEATURE in champion.profile.features:
        names.append(PREDICTION_FEATURE)
    rows = []
    for name in names:
        key = ("drift.prediction", OUTPUT_LABEL) if name == PREDICTION_FEATURE else ("drift.data", name)
        kind = champion.profile.features[name].kind
        rows.append(_feature(name, kind, latest.get(name), episodes.get(name), spans.get(key), champion.config))
    rows.append(_dataset(data, latest, episodes.get(DATASET), spans.get(("drift.dataset", "dataset"))))
    if champion.profile.multivariate is not None:
        rows.append(_multivariate(data, spans.get(("drift.multivariate", "multivariate"))))
    dependence = data.state.checks.get(DEPENDENCE) if data.state is not None else None
    if dependence is not None or ("drift.dependence", "dependence") in spans:
        rows.append(_dependence(data, spans.get(("drift.dependence", "dependence"))))
    if champion.is_classifier and champion.validation is not None:
        rows.append(_performance(data, spans.get(("performance.estimated", "estimated accuracy"))))
    return rows


def _since(span: dict[str, Any] | None) -> tuple[str, float | None]:
    if span is None:
        return "", None
    ts = parse(span["started"])
    return readable(ts), ts


def _level(episode: Episode | None, span: dict[str, Any] | None) -> str:
    """The stored episode's level; without stored state (a database the monitor never wrote windows
    to), the open episode's latest severity as its alerts say."""
    if episode is not None:
        return episode.level
    return STABLE if span is None else str(span.get("severity") or span["first"]["severity"])


def _bands(name: str, config: DriftConfig) -> tuple[float, float]:
    if name == PREDICTION_FEATURE:
        return config.prediction_psi_moderate, config.prediction_psi_significant
    return config.psi_moderate, config.psi_significant


def _feature(
    name: str,
    kind: str,
    result: Any,
    episode: Episode | None,
    span: dict[str, Any] | None,
    config: DriftConfig,
) -> FeatureRow:
    moderate, significant = _bands(name, config)
    level = _level(episode, span)
    drifted = level != STABLE
    if drifted:
        threshold = f"until PSI < {number(moderate * config.psi_exit_ratio)} for {config.end_after} windows"
    else:
        threshold = f"PSI ≥ {number(moderate)} (≥ {number(significant)} significant), p < {number(config.alpha)}"
    notes = []
    if episode is not None and drifted and episode.calm:
        notes.append(f"{episode.calm} of {config.end_after} calm windows so far")
    if span is not None and span["first"].get("rule") == "cumulative":
        notes.append("raised by the cumulative rule: evidence summed over windows")
    if kind == "numeric":
        test, statistic, pvalue = "KS", getattr(result, "ks_statistic", None), getattr(result, "ks_pvalue", None)
    else:
        test, statistic, pvalue = (
            "chi-square",
            getattr(result, "chi2_statistic", None),
            getattr(result, "chi2_pvalue", None),
        )
    if result is None:
        notes.append("no window evaluated yet")
    since, since_ts = _since(span) if drifted else ("", None)
    return FeatureRow(
        name=name,
        label=OUTPUT_LABEL if name == PREDICTION_FEATURE else name,
        test=test,
        statistic=number(statistic),
        pvalue=number(pvalue),
        psi=number(None if result is None else result.psi),
        threshold=threshold,
        drifted=drifted,
        severity=level,
        since=since,
        since_ts=since_ts,
        note="; ".join(notes),
    )


def _dataset(
    data: ReportData, latest: dict[str, Any], episode: Episode | None, span: dict[str, Any] | None
) -> FeatureRow:
    """The share of inputs whose newest window is in a band (moderate or significant), as the monitor's
    dataset check counts it, against ``dataset_share``."""
    config = data.champion.config
    inputs = [r for name, r in latest.items() if name != PREDICTION_FEATURE]
    share = sum(r.severity != STABLE for r in inputs) / len(inputs) if inputs else None
    level = _level(episode, span)
    since, since_ts = _since(span) if level != STABLE else ("", None)
    # No hysteresis here: the same share starts the episode and, once under it for end_after windows, ends it.
    threshold = (
        f"until share < {number(config.dataset_share)} for {config.end_after} windows"
        if level != STABLE
        else f"share ≥ {number(config.dataset_share)}"
    )
    return FeatureRow(
        name=DATASET,
        label="dataset: share of inputs drifting",
        test="share of inputs in a band",
        statistic=number(share),
        pvalue=NONE_SHOWN,
        psi=NONE_SHOWN,
        threshold=threshold,
        drifted=level != STABLE,
        severity=level,
        since=since,
        since_ts=since_ts,
    )


def _z_check(
    data: ReportData, key: str, span: dict[str, Any] | None, limit: float | None, symbol: str
) -> tuple[Any, str, str, tuple[str, float | None]]:
    """A check judged by a z against ``limit`` (both in standard errors): its stored state, its level, the
    threshold that applies now (the entry, or the exit while it drifts) and since when it drifts."""
    config = data.champion.config
    check = data.state.checks.get(key) if data.state is not None else None
    level = check.level if check is not None else _level(None, span)
    if limit is None:
        threshold = f"{symbol} over its threshold"
    elif level != STABLE:
        threshold = f"until {symbol} ≤ {number(limit * config.psi_exit_ratio)} for {config.end_after} windows"
    else:
        threshold = f"{symbol} > {number(limit)}"
    return check, level, threshold, (_since(span) if level != STABLE else ("", None))


def _multivariate(data: ReportData, span: dict[str, Any] | None) -> FeatureRow:
    """The PCA reconstruction error's z (standard errors above the reference) against its threshold, both
    in standard errors: the raw reconstruction error is in other units and is not compared with it."""
    limit = data.champion.config.multivariate_sigmas
    check, level, threshold, (since, since_ts) = _z_check(data, MULTIVARIATE, span, limit, "z")
    return FeatureRow(
        name=MULTIVARIATE,
        label="multivariate: all inputs together",
        test="PCA reconstruction error, z",
        statistic=number(None if check is None else check.value),
        pvalue=NONE_SHOWN,
        psi=NONE_SHOWN,
        threshold=threshold,
        drifted=level != STABLE,
        severity=level,
        since=since,
        since_ts=since_ts,
        note="z: standard errors above the reference" if check is not None else "no window evaluated yet",
    )


def _dependence(data: ReportData, span: dict[str, Any] | None) -> FeatureRow:
    """The largest |z| of a pair's correlation change against the threshold the newest dependence alert
    was held to (it depends on the number of pairs tested: Šidák), both in standard errors."""
    alerts = [
        e["data"]
        for e in data.events
        if e["type"] == "undertow.drift.dependence" and e["data"]["model_version"] == data.champion.version
    ]
    limit = alerts[-1]["threshold"] if alerts else None
    check, level, threshold, (since, since_ts) = _z_check(data, DEPENDENCE, span, limit, "|z|")
    return FeatureRow(
        name=DEPENDENCE,
        label="dependence: pairs of inputs together",
        test="rank correlation per pair, Fisher z",
        statistic=number(None if check is None else check.value),
        pvalue=NONE_SHOWN,
        psi=NONE_SHOWN,
        threshold=threshold,
        drifted=level != STABLE,
        severity=level,
        since=since,
        since_ts=since_ts,
        note="z: standard errors of the largest change of a pair's correlation",
    )


def _performance(data: ReportData, span: dict[str, Any] | None) -> FeatureRow:
    """A classifier's accuracy estimated from its scores (no label used) against its floor: validation
    accuracy less the larger of ``estimate_margin`` and three standard errors of the window's estimate.
    The floor depends on the window, so it is the newest alert's when there is one."""
    champion = data.champion
    config = champion.config
    assert champion.validation is not None
    accuracy = 1.0 - champion.validation[0]
    check = data.state.checks.get(PERFORMANCE) if data.state is not None else None
    level = check.level if check is not None else _level(None, span)
    floors = [
        e["data"]["threshold"]
        for e in data.events
        if e["type"] == "undertow.performance.estimated" and e["data"]["model_version"] == champion.version
    ]
    if floors:
        floor = f"accuracy < {number(floors[-1])}"
    else:  # no alert yet: the highest the floor can be (the gap is at least the margin)
        floor = (
            f"accuracy < {number(accuracy - config.estimate_margin)} at most ({number(accuracy)} less "
            f"the larger of {number(config.estimate_margin)} and 3 standard errors of the estimate)"
        )
    since, since_ts = _since(span) if level != STABLE else ("", None)
    return FeatureRow(
        name=PERFORMANCE,
        label="estimated accuracy",
        test="estimate from scores (no labels)",
        statistic=number(None if check is None else check.value),
        pvalue=NONE_SHOWN,
        psi=NONE_SHOWN,
        threshold=floor,
        drifted=level != STABLE,
        severity=level,
        since=since,
        since_ts=since_ts,
        note=f"validation accuracy {number(accuracy)}",  # what the estimate is compared with
    )
