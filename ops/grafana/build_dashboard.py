"""The Undertow Grafana dashboard, built typed with Grafana's foundation SDK (grafana_foundation_sdk).

Run ``python ops/grafana/build_dashboard.py`` to regenerate ``ops/grafana/dashboards/undertow.json`` after
changing this file; tests/ops/test_dashboard.py fails while the committed JSON differs from what this builds,
and tests/ops/test_prometheus_chain.py runs every query against a real Prometheus scraping the real services.

One dashboard per model (the ``model_id`` variable, from the registered models the monitor exports):
traffic and lag, drift (PSI per feature against the 0.1 / 0.25 bands, open episodes, alerts, the error
against its production baseline), retraining (runs and gate decisions), serving (latency, errors, dropped
events) and notifications. The metrics are described in docs/metrics.md, the panels in docs/operations.md.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from grafana_foundation_sdk.builders import common as common_builders
from grafana_foundation_sdk.builders.dashboard import Dashboard, QueryVariable, Row, ThresholdsConfig
from grafana_foundation_sdk.builders.prometheus import Dataquery
from grafana_foundation_sdk.builders.stat import Panel as Stat
from grafana_foundation_sdk.builders.timeseries import Panel as Timeseries
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.models.common import GraphThresholdsStyleMode, LegendDisplayMode, LegendPlacement
from grafana_foundation_sdk.models.dashboard import (
    DataSourceRef,
    Threshold,
    ThresholdsMode,
    VariableRefresh,
    VariableSort,
)

OUT = Path(__file__).resolve().parent / "dashboards" / "undertow.json"
UID = "undertow"
# The datasource provisioned by provisioning/datasources/prometheus.yml (the same uid: panels name it).
DATASOURCE = DataSourceRef(type_val="prometheus", uid="undertow-prometheus")
MODEL = 'model_id="$model_id"'
# The server's metrics carry no model id: its info metric says which model a server serves.
OF_THE_SERVER = f"and on (job, instance) undertow_server_model_info{{{MODEL}}}"
PSI_BANDS = (0.1, 0.25)  # moderate and significant, as the monitor's default rules (docs/data-drift.md)


def query(expr: str, legend: str, ref: str = "A") -> Dataquery:
    return Dataquery().expr(expr).legend_format(legend).ref_id(ref).datasource(DATASOURCE)


def legend() -> common_builders.VizLegendOptions:
    return (
        common_builders.VizLegendOptions()
        .display_mode(LegendDisplayMode.LIST)
        .placement(LegendPlacement.BOTTOM)
        .show_legend(True)
    )


def timeseries(panel_id: int, title: str, description: str, unit: str, *targets: Dataquery) -> Timeseries:
    panel = (
        Timeseries()
        .id(panel_id)
        .title(title)
        .description(description)
        .datasource(DATASOURCE)
        .unit(unit)
        .span(12)
        .height(8)
        .legend(legend())
    )
    for target in targets:
        panel = panel.with_target(target)
    return panel


def stat(panel_id: int, title: str, description: str, unit: str, *targets: Dataquery) -> Stat:
    panel = Stat().id(panel_id).title(title).description(description).datasource(DATASOURCE).unit(unit)
    panel = panel.span(6).height(8)
    for target in targets:
        panel = panel.with_target(target)
    return panel


def psi_panel(panel_id: int) -> Timeseries:
    """PSI per feature against the bands: green below 0.1, yellow to 0.25, red above, drawn on the plot."""
    steps = [Threshold(None, "green"), Threshold(PSI_BANDS[0], "yellow"), Threshold(PSI_BANDS[1], "red")]
    return (
        timeseries(
            panel_id,
            "PSI per feature (newest window)",
            "Population stability index of each input and of the prediction in the champion's newest closed "
            "window; 0.1 starts a moderate episode, 0.25 a significant one.",
            "none",
            query(f"max by (feature) (undertow_feature_psi{{{MODEL}}})", "{{feature}}"),
        )
        .thresholds(ThresholdsConfig().mode(ThresholdsMode.ABSOLUTE).steps(steps))
        .thresholds_style(common_builders.GraphThresholdsStyleConfig().mode(GraphThresholdsStyleMode.LINE_AND_AREA))
        .min(0)
        .axis_soft_max(0.3)
    )


def traffic(board: Dashboard) -> Dashboard:
    return (
        board.with_row(Row("Traffic").id(100))
        .with_panel(
            timeseries(
                1,
                "Events per second",
                "Prediction and label events of the model processed by the monitor.",
                "ops",
                query(
                    f"sum by (kind) (rate(undertow_model_events_total{{{MODEL}}}[$__rate_interval]))",
                    "{{kind}}",
                ),
            )
        )
        .with_panel(
            stat(
                2,
                "Since the newest event",
                "Now minus the event time of the model's newest event: a model that stopped sending shows here "
                "(alert UndertowModelStoppedSendingEvents).",
                "s",
                query(f"time() - max(undertow_model_last_event_timestamp_seconds{{{MODEL}}})", "since"),
            )
        )
        .with_panel(
            stat(
                3,
                "Dead letters",
                "Records the monitor and the trainer sent to dead-letter topics in the time range.",
                "short",
                query("sum by (job) (increase(undertow_dead_letters_total[$__range]))", "{{job}}"),
            )
        )
        .with_panel(
            timeseries(
                4,
                "Consumer lag",
                "Records behind the log end, per consumer group (job) and topic, from the stored offsets.",
                "short",
                query("sum by (job, topic) (undertow_consumer_lag)", "{{job}} {{topic}}"),
            ).span(24)
        )
    )


def drift(board: Dashboard) -> Dashboard:
    return (
        board.with_row(Row("Drift").id(101))
        .with_panel(psi_panel(5))
        .with_panel(
            timeseries(
                6,
                "Error against its production baseline",
                "Mean error of the champion's newest 500 labelled pairs, and the production baseline it is "
                "judged against (the validation baseline until the first labels set it).",
                "none",
                query(f"max by (metric) (undertow_model_error{{{MODEL}}})", "{{metric}}", "A"),
                query(f"max by (metric) (undertow_model_error_baseline{{{MODEL}}})", "{{metric}} baseline", "B"),
            )
        )
        .with_panel(
            timeseries(
                7,
                "Open drift episodes",
                "Episodes of the champion not ended, by kind and level (alerts UndertowDriftEpisodeModerate "
                "and UndertowDriftEpisodeSignificant).",
                "short",
                query(
                    f"sum by (kind, level) (undertow_model_open_episodes{{{MODEL}}})",
                    "{{kind}} {{level}}",
                ),
            )
        )
        .with_panel(
            timeseries(
                8,
                "Alerts",
                "Drift alerts the monitor recorded, by type.",
                "short",
                query(
                    f"sum by (type) (increase(undertow_model_alerts_total{{{MODEL}}}[$__rate_interval]))",
                    "{{type}}",
                ),
            )
        )
    )


def retraining(board: Dashboard) -> Dashboard:
    return (
        board.with_row(Row("Retraining").id(102))
        .with_panel(
            stat(
                9,
                "Training runs in the time range",
                "Finished training runs by outcome: promoted and rejected are the gate's decisions.",
                "short",
                query(
                    f"sum by (outcome) (increase(undertow_model_training_runs_total{{{MODEL}}}[$__range]))",
                    "{{outcome}}",
                ),
            ).span(12)
        )
        .with_panel(
            timeseries(
                10,
                "Training runs and gate decisions",
                "Finished training runs of the model, by outcome, over time.",
                "short",
                query(f"sum by (outcome) (undertow_model_training_runs_total{{{MODEL}}})", "{{outcome}}"),
            )
        )
    )


def serving(board: Dashboard) -> Dashboard:
    latency = (
        'sum by (le) (rate(undertow_server_request_duration_seconds_bucket{endpoint="/predict"}[$__rate_interval]) '
        f"{OF_THE_SERVER})"
    )
    return (
        board.with_row(Row("Serving").id(103))
        .with_panel(
            timeseries(
                11,
                "Server latency (/predict)",
                "Time to answer /predict at the servers of the model: median and 99th percentile.",
                "s",
                query(f"histogram_quantile(0.5, {latency})", "p50", "A"),
                query(f"histogram_quantile(0.99, {latency})", "p99", "B"),
            )
        )
        .with_panel(
            timeseries(
                12,
                "Requests by status",
                "Answers of /predict and /labels per second, by status code.",
                "reqps",
                query(
                    "sum by (endpoint, status) (rate(undertow_server_requests_total[$__rate_interval]) "
                    f"{OF_THE_SERVER})",
                    "{{endpoint}} {{status}}",
                ),
            )
        )
        .with_panel(
            timeseries(
                13,
                "Dropped events",
                "Prediction and label events the server answered but could not deliver to Kafka, by reason; "
                "and the events waiting for the producer.",
                "short",
                query(
                    "sum by (reason) (increase(undertow_server_events_dropped_total[$__rate_interval]) "
                    f"{OF_THE_SERVER})",
                    "dropped: {{reason}}",
                    "A",
                ),
                query(f"sum(undertow_server_event_queue_size {OF_THE_SERVER})", "queued", "B"),
            ).span(24)
        )
    )


def notifications(board: Dashboard) -> Dashboard:
    return (
        board.with_row(Row("Notifications").id(104))
        .with_panel(
            timeseries(
                14,
                "Notify deliveries",
                "Deliveries of undertow notify per second, by sink and outcome.",
                "ops",
                query(
                    "sum by (sink, outcome) (rate(undertow_notify_deliveries_total[$__rate_interval]))",
                    "{{sink}} {{outcome}}",
                ),
            )
        )
        .with_panel(
            timeseries(
                15,
                "Notify dead letters and backlog",
                "Deliveries given up (undertow notify list; undertow notify retry sends them again) and "
                "deliveries pending or backing off, by sink.",
                "short",
                query("max by (sink) (undertow_notify_dead_letters)", "dead letters: {{sink}}", "A"),
                query("max by (sink) (undertow_notify_pending)", "pending: {{sink}}", "B"),
            )
        )
    )


def build() -> Dashboard:
    model = (
        QueryVariable("model_id")
        .label("model")
        .datasource(DATASOURCE)
        .query("label_values(undertow_model_events_total, model_id)")
        .refresh(VariableRefresh.ON_TIME_RANGE_CHANGED)
        .sort(VariableSort.ALPHABETICAL_ASC)
    )
    board = (
        Dashboard("Undertow")
        .uid(UID)
        .description("Drift, retraining and serving of one model (docs/operations.md)")
        .tags(["undertow", "ml-monitoring"])
        .refresh("30s")
        .time("now-6h", "now")
        .timezone("utc")
        .with_variable(model)
    )
    for section in (traffic, drift, retraining, serving, notifications):
        board = section(board)
    return board


def render() -> str:
    """The dashboard's JSON, as committed (sorted keys, two-space indent, a final newline)."""
    return json.dumps(build().build(), cls=JSONEncoder, indent=2, sort_keys=True) + "\n"


if __name__ == "__main__":
    OUT.write_text(render())
    print(f"wrote {OUT.relative_to(Path.cwd()) if OUT.is_relative_to(Path.cwd()) else OUT}", file=sys.stderr)
