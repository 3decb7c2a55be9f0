"""What Undertow publishes: one frozen pydantic model per CloudEvent type.

Every event is a CloudEvents 1.0 envelope whose literal ``type`` selects the
model of its ``data``, so :func:`parse_event` turns any Undertow event into
its model through one discriminated union. Subscribers in other languages get
the same contract as JSON Schemas in ``schemas/`` (regenerate them with
``python -m undertow.worker.runtime.output_events schemas``; a test fails when they
disagree with these models).

>>> alert = DataDriftAlert(id="1", subject="housing", time="2026-11-01T00:00:00.000Z", data=DataDrift(
...     model_id="housing", model_version="3", severity="significant", episode="started", feature="MedInc",
...     psi=0.41, ks_statistic=0.22, ks_pvalue=1e-9, chi2_statistic=None, chi2_pvalue=None, missing_share=0.0,
...     window=Window(index=17, start_ts="2026-11-01T00:00:00.000Z", end_ts="2026-11-01T00:10:00.000Z", n=1000)))
>>> parse_event(encode(alert)) == alert
True
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError

from undertow.errors import InvalidEvent

CONTENT_TYPE = "application/cloudevents+json"
HEADERS = [("content-type", CONTENT_TYPE.encode())]
MONITOR_SOURCE = "/undertow/monitor"
REGISTRY_SOURCE = "/undertow/registry"

Severity = Literal["stable", "moderate", "significant"]
# "changed" is no longer sent (the hysteresis sends started, escalated, ended); kept so old events parse.
Episode = Literal["started", "escalated", "changed", "ended"]


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)


class Window(_Frozen):
    index: int
    start_ts: str = Field(description="RFC 3339, UTC")
    end_ts: str = Field(description="RFC 3339, UTC")
    n: int = Field(description="rows in the window")


class _DriftData(_Frozen):
    model_id: str
    model_version: str
    severity: Severity
    episode: Episode
    segment: dict[str, str] | None = Field(
        default=None,
        exclude_if=lambda value: value is None,  # absent, not null: an unsegmented alert's bytes stay as they were
        description="the segment the alert is about, column -> value (__other__ for every segment outside the "
        "top ones); absent: the whole stream",
    )


class DataDrift(_DriftData):
    feature: str = Field(description="feature name, or __prediction__ for the model's output")
    rule: Literal["window", "cumulative"] = Field(
        default="window",
        description="window: this window's PSI band; cumulative: evidence summed over windows "
        "(a CUSUM of the windows' test statistics) for drift too gradual for one",
    )
    psi: float
    ks_statistic: float | None = Field(description="numeric features only")
    ks_pvalue: float | None
    chi2_statistic: float | None = Field(description="categorical features only")
    chi2_pvalue: float | None
    missing_share: float
    window: Window


class MultivariateDrift(_DriftData):
    features: list[str] = Field(description="the numeric features of the check")
    value: float = Field(description="mean PCA reconstruction error of the window")
    reference: float = Field(description="its mean on the reference data")
    z: float = Field(description="standard errors above the reference")
    threshold: float
    window: Window


class DependencePair(_Frozen):
    features: list[str] = Field(description="the two numeric inputs")
    reference: float = Field(description="their rank correlation in the reference")
    value: float = Field(description="their rank correlation in the window")
    z: float = Field(description="Fisher z of the change, in its standard errors (signed)")


class DependenceDrift(_DriftData):
    pairs: list[DependencePair] = Field(description="the pairs that moved most, largest |z| first")
    z: float = Field(description="the largest |z| over the pairs tested")
    threshold: float = Field(
        description="the |z| a pair must exceed: the false-alarm budget shared over the pairs (Sidak)"
    )
    moderate: float = Field(description="change of a pair's correlation (absolute) from which it drifts moderately")
    significant: float = Field(description="the same for significant")
    pairs_tested: int
    features: list[str] = Field(description="the numeric inputs whose pairs are tested")
    window: Window


class PerformanceEstimate(_DriftData):
    estimated: Literal[True] = Field(default=True, description="always an estimate: no label was used")
    metric: Literal["accuracy"] = "accuracy"
    value: float = Field(description="accuracy the window's calibrated scores imply (confidence-based)")
    reference: float = Field(description="the version's validation accuracy")
    threshold: float
    scored_rows: int
    window: Window


class RankedFeature(_Frozen):
    feature: str
    psi: float = Field(description="its PSI in the window")
    importance: float | None = Field(
        description="its share of the model's permutation importance, measured at registration (None: no "
        "artifact or no held-out rows to measure it on)"
    )
    score: float = Field(description="psi times importance (psi alone when the importance is unknown)")


class EvidenceShare(_Frozen):
    feature: str
    share: float = Field(description="its part of the combined evidence (its 1/p over the sum over the inputs)")


class DatasetDrift(_DriftData):
    drifted_share: float = Field(description="share of input features at moderate or significant")
    drifted_features: list[str]
    threshold: float
    window: Window
    ranked: list[RankedFeature] = Field(
        default_factory=list,
        exclude_if=lambda value: not value,  # absent when empty: an alert from before it keeps its bytes
        description="the drifted inputs, those that matter most to the model first: drift times importance",
    )
    # Evidence across the inputs (models/drift/evidence.py, CombinedEvidence): absent on alerts by the share.
    rule: Literal["window", "cumulative"] = Field(
        default="window",
        exclude_if=lambda value: value == "window",  # absent for the share's alerts: their bytes stay as they were
        description="window (absent): the share of drifted inputs reached the threshold; cumulative: evidence "
        "summed over windows and across every input, while no input drifted on its own (each moved a little)",
    )
    evidence_z: float | None = Field(
        default=None,
        exclude_if=lambda value: value is None,
        description="cumulative: the combined evidence as a standard normal score",
    )
    evidence_threshold: float | None = Field(
        default=None,
        exclude_if=lambda value: value is None,
        description="cumulative: the score it had to exceed (one false alarm per evidence_false_alarm_windows)",
    )
    evidence_features: list[EvidenceShare] = Field(
        default_factory=list,
        exclude_if=lambda value: not value,
        description="cumulative: the inputs carrying most of the combined evidence, largest share first",
    )


class Baseline(_Frozen):
    mean: float
    sd: float


class ExplainedBin(_Frozen):
    range: str = Field(description="the bin of the input: an interval of its reference bins, or a category")
    error_before: float = Field(description="mean error of the pairs in the bin before the change")
    error_after: float = Field(description="the same after it")
    share_of_pairs: float = Field(description="the bin's share of the pairs after the change")


class Explanation(_Frozen):
    feature: str
    share: float = Field(
        description="part of the error's change that lies in the named bins, beyond the change elsewhere: 1 when "
        "it is confined to them, 0 when it is even over the input's range"
    )
    z: float = Field(description="evidence that the change differs across the input's bins (a normal score)")
    bins: list[ExplainedBin] = Field(description="where the change stands out, largest part first")


class ConceptDrift(_DriftData):
    episode: Literal["started", "escalated", "improved", "ended", "deployment_gap"] = Field(
        description="started: a change; escalated: a further rise inside the episode; improved: a fall inside "
        "the episode to a level still above the baseline; ended: back to the baseline; deployment_gap: "
        "production error above the validation estimate (once)"
    )
    detector: Literal[
        "page_hinkley",
        "cusum",
        "rolling_mean",
        "rolling_mean_long",
        "prediction_time_cusum",
        "escalation_cusum",
        "production_baseline",
    ]
    metric: Literal["absolute_error", "misclassification", "log_loss"]
    value: float
    threshold: float | None
    unit: Literal["baseline_sd", "error"] = Field(
        description="baseline_sd: standardised by the baseline; error: in the metric's own units"
    )
    baseline: Baseline = Field(description="the production baseline (validation for deployment_gap)")
    recent_mean_error: float | None
    detected_at: str = Field(description="event time of the label that fired, RFC 3339")
    label_count: int
    change_started_at: str | None = Field(description="estimated prediction time at which the change began")
    explained_by: list[Explanation] = Field(
        default_factory=list,
        exclude_if=lambda value: not value,  # absent when empty: an alert from before it keeps its bytes
        description="the inputs ranked by how much of the error's change they account for (absent for ended, and "
        "with too few pairs on either side)",
    )
    explained_against: Literal["production", "validation"] | None = Field(
        default=None,
        exclude_if=lambda value: value is None,
        description="what the errors after the change were compared with: production pairs before it, or the "
        "version's held-out rows when production had too few",
    )


class RollingData(_Frozen):
    kind: Literal["rolling"] = "rolling"
    max_pairs: int = Field(description="train on at most the newest labelled pairs")


class AllData(_Frozen):
    kind: Literal["all"] = "all"


DataPolicy = Annotated[RollingData | AllData, Field(discriminator="kind")]


class RetrainRequest(_Frozen):
    request_id: str
    model_id: str
    model_version: str
    reason: str
    alert_ids: list[str]
    data_policy: DataPolicy


GateNumbers = dict[str, float | int | str | None]


class ModelChange(_Frozen):
    model_id: str
    model_version: str = Field(description="the champion from now on")
    previous_version: str | None
    action: Literal["promoted", "rolled_back"]
    actor: str = Field(description="trainer, or operator for the command line")
    reason: str
    request_id: str | None = Field(description="the retrain request behind it, if any")
    run_id: str | None
    gate: GateNumbers | None = Field(description="the gate's numbers for both models on the same pairs")


class ModelRejection(_Frozen):
    model_id: str
    model_version: str = Field(description="the rejected candidate")
    champion_version: str
    reasons: list[str]
    request_id: str | None
    run_id: str
    gate: GateNumbers


class _CloudEvent(_Frozen):
    specversion: Literal["1.0"] = "1.0"
    id: str = Field(description="deterministic: a re-published event is a duplicate by (source, id)")
    source: str = MONITOR_SOURCE
    subject: str = Field(description="the model id")
    time: str = Field(description="event time, RFC 3339, UTC")
    datacontenttype: Literal["application/json"] = "application/json"


class DataDriftAlert(_CloudEvent):
    type: Literal["undertow.drift.data"] = "undertow.drift.data"
    data: DataDrift


class PredictionDriftAlert(_CloudEvent):
    type: Literal["undertow.drift.prediction"] = "undertow.drift.prediction"
    data: DataDrift


class MultivariateDriftAlert(_CloudEvent):
    type: Literal["undertow.drift.multivariate"] = "undertow.drift.multivariate"
    data: MultivariateDrift


class DependenceDriftAlert(_CloudEvent):
    type: Literal["undertow.drift.dependence"] = "undertow.drift.dependence"
    data: DependenceDrift


class PerformanceEstimateAlert(_CloudEvent):
    type: Literal["undertow.performance.estimated"] = "undertow.performance.estimated"
    data: PerformanceEstimate


class DatasetDriftAlert(_CloudEvent):
    type: Literal["undertow.drift.dataset"] = "undertow.drift.dataset"
    data: DatasetDrift


class ConceptDriftAlert(_CloudEvent):
    type: Literal["undertow.drift.concept"] = "undertow.drift.concept"
    data: ConceptDrift


class RetrainRequested(_CloudEvent):
    type: Literal["undertow.retrain.requested"] = "undertow.retrain.requested"
    data: RetrainRequest


class ModelPromoted(_CloudEvent):
    type: Literal["undertow.model.promoted"] = "undertow.model.promoted"
    source: str = REGISTRY_SOURCE
    data: ModelChange


class ModelRejected(_CloudEvent):
    type: Literal["undertow.model.rejected"] = "undertow.model.rejected"
    source: str = REGISTRY_SOURCE
    data: ModelRejection


Alert = (
    DataDriftAlert
    | PredictionDriftAlert
    | DatasetDriftAlert
    | MultivariateDriftAlert
    | DependenceDriftAlert
    | PerformanceEstimateAlert
    | ConceptDriftAlert
)
ModelEvent = ModelPromoted | ModelRejected
UndertowEvent = Annotated[
    DataDriftAlert
    | PredictionDriftAlert
    | DatasetDriftAlert
    | MultivariateDriftAlert
    | DependenceDriftAlert
    | PerformanceEstimateAlert
    | ConceptDriftAlert
    | RetrainRequested
    | ModelPromoted
    | ModelRejected,
    Field(discriminator="type"),
]
_EVENT = TypeAdapter(UndertowEvent)
EVENT_TYPES = (
    DataDriftAlert,
    PredictionDriftAlert,
    DatasetDriftAlert,
    MultivariateDriftAlert,
    DependenceDriftAlert,
    PerformanceEstimateAlert,
    ConceptDriftAlert,
    RetrainRequested,
    ModelPromoted,
    ModelRejected,
)


def encode(event: _CloudEvent) -> bytes:
    """Compact JSON with sorted keys: the same event always gives the same bytes."""
    return json.dumps(event.model_dump(mode="json"), separators=(",", ":"), sort_keys=True, allow_nan=False).encode()


def parse_event(value: bytes | str) -> UndertowEvent:
    """Any Undertow CloudEvent into its model; InvalidEvent says what does not fit."""
    try:
        return _EVENT.validate_json(value)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(part) for part in first["loc"]) or "event"
        raise InvalidEvent(f"not an Undertow event: {where}: {first['msg']}") from None


def json_schemas() -> dict[str, dict]:
    """File name → JSON Schema: one per event type, and the union of all."""
    schemas = {f"{model.model_fields['type'].default}.json": model.model_json_schema() for model in EVENT_TYPES}
    schemas["undertow.event.json"] = _EVENT.json_schema()
    return schemas


def write_schemas(directory: Path) -> list[Path]:
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    for name, schema in json_schemas().items():
        path = directory / name
        path.write_text(json.dumps(schema, indent=2, sort_keys=True) + "\n")
        written.append(path)
    return written


if __name__ == "__main__":
    for path in write_schemas(Path(sys.argv[1] if len(sys.argv) > 1 else "schemas")):
        print(path)
