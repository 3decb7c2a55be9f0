"""The report's figures: matplotlib (Agg) SVG with text as text, inlined in the page.

Rules every figure keeps, because a reader has to read them without zooming: constrained layout and a
height that grows with the number of panels (titles never touch the tick labels above them); legends
outside the plotting area, with an entry for every line drawn; time axes with day and month
(``times.date_axis``); horizontal tick labels (categories go on a horizontal bar chart's y axis), so no
label leans into its neighbour. Each legend has the id ``<figure>-legend``, which the browser test reads.

Every figure is drawn from aggregated numbers (window results, bucketed errors, the reference profile, a
sample of recent values), so the file stays small however long the stream was.
"""

from __future__ import annotations

import io
import json
import math
from collections.abc import Iterator
from datetime import datetime
from typing import Any

import numpy as np

from undertow.models.drift.drift_state import PERFORMANCE
from undertow.models.profile import PREDICTION_FEATURE, CategoricalProfile, NumericProfile
from undertow.worker.report.alerts import number
from undertow.worker.report.gather import ReportData
from undertow.worker.report.times import date_axis, moment, parse

ERROR_BUCKETS = 150  # points of the error-over-time curve, at most
BUCKET_PAIRS = 25  # pairs per point of the error curve, at least
ACCURACY_PAIRS = 100  # per point of the realised accuracy: a share of 0/1 errors needs more to read
CATEGORIES_SHOWN = 8  # bars per categorical feature; the rest are "other"
LABEL_CHARS = 18  # a category's label is cut beyond this
REFERENCE, RECENT = "#4c72b0", "#dd8452"
MODERATE_BAND, SIGNIFICANT_BAND = "#fbeccb", "#f9ddd7"
ALARM, BASELINE = "#c44e52", "#4c72b0"
WIDTH = 10.0  # inches: the page's width at 96 px per inch, so the text keeps its size


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    matplotlib.rcParams.update(
        {
            "svg.fonttype": "none",
            "font.size": 9,
            "axes.titlesize": 10,
            "legend.fontsize": 9,
            "axes.spines.top": False,
            "axes.spines.right": False,
        }
    )
    import matplotlib.pyplot as plt

    return plt


def svg(fig) -> str:
    import matplotlib.pyplot as plt

    buffer = io.StringIO()
    fig.savefig(buffer, format="svg")
    plt.close(fig)
    text = buffer.getvalue()
    return text[text.index("<svg") :]  # drop the XML prolog and doctype: the SVG is inlined in HTML


def _legend(fig, name: str, handles=None, labels=None, loc: str = "outside right upper", ncols: int = 1):
    """The figure's legend outside the axes, with the id the browser test looks for."""
    args = (handles, labels) if handles is not None else ()
    legend = fig.legend(*args, loc=loc, ncols=ncols, frameon=False)
    legend.set_gid(f"{name}-legend")
    return legend


def _values(pairs: list[Any], name: str) -> list[Any]:
    """A feature's values in the newest labelled pairs (``__prediction__``: the model's answers)."""
    if name == PREDICTION_FEATURE:
        out = [json.loads(p.prediction) for p in pairs]
    else:
        out = [json.loads(p.features).get(name) for p in pairs]
    return [v for v in out if v is not None]


def _numeric(ax, profile: NumericProfile, values: list[Any]) -> None:
    reference = np.array(profile.ks_sample, dtype=float)
    recent = np.array([v for v in values if isinstance(v, (int, float)) and not isinstance(v, bool)], dtype=float)
    both = np.concatenate([reference, recent]) if recent.size else reference
    low, high = np.percentile(both, 0.5), np.percentile(both, 99.5)
    bins = np.linspace(low, high if high > low else low + 1.0, 30)
    ax.hist(np.clip(reference, bins[0], bins[-1]), bins=bins, density=True, alpha=0.6, color=REFERENCE)
    if recent.size:
        ax.hist(np.clip(recent, bins[0], bins[-1]), bins=bins, density=True, alpha=0.6, color=RECENT)
    ax.yaxis.set_major_locator(_ticks(4))
    ax.xaxis.set_major_locator(_ticks(5))


def _ticks(n: int):
    from matplotlib.ticker import MaxNLocator

    return MaxNLocator(n)


def _categorical(ax, profile: CategoricalProfile, values: list[Any]) -> None:
    """Horizontal bars: category names on the y axis read level, however long they are."""
    categories = profile.categories[:CATEGORIES_SHOWN]
    reference = list(profile.shares[: len(categories)])
    texts = [str(v) for v in values]
    recent = [texts.count(c) / len(texts) if texts else 0.0 for c in categories]
    other_reference, other_recent = max(0.0, 1.0 - sum(reference)), max(0.0, 1.0 - sum(recent)) if texts else 0.0
    names = [c if len(c) <= LABEL_CHARS else c[: LABEL_CHARS - 1] + "…" for c in categories]
    if other_reference > 0.005 or other_recent > 0.005:
        names, reference, recent = names + ["other"], reference + [other_reference], recent + [other_recent]
    y = np.arange(len(names))
    ax.barh(y - 0.2, reference, 0.4, color=REFERENCE, alpha=0.6)
    if texts:
        ax.barh(y + 0.2, recent, 0.4, color=RECENT, alpha=0.6)
    ax.set_yticks(y, names)
    ax.invert_yaxis()
    ax.xaxis.set_major_locator(_ticks(4))
    ax.set_xlabel("share")


def _panel(ax, name: str, profile: NumericProfile | CategoricalProfile, values: list[Any]) -> None:
    if isinstance(profile, NumericProfile):
        _numeric(ax, profile, values)
    else:
        _categorical(ax, profile, values)
    ax.set_title("model output" if name == PREDICTION_FEATURE else name)


def _reference_recent_handles():
    from matplotlib.patches import Patch

    return [Patch(color=REFERENCE, alpha=0.6), Patch(color=RECENT, alpha=0.6)]


def distributions_figure(data: ReportData) -> str:
    """Per input, the registered reference distribution against the newest labelled predictions' inputs."""
    plt = _pyplot()
    features = [(n, p) for n, p in data.champion.profile.features.items() if n != PREDICTION_FEATURE]
    cols = 3
    rows = max(1, math.ceil(len(features) / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(WIDTH, 0.6 + 2.7 * rows), squeeze=False, layout="constrained")
    for ax in axes.flat[len(features) :]:
        ax.set_visible(False)
    for ax, (name, profile) in zip(axes.flat, features):
        _panel(ax, name, profile, _values(data.recent, name))
    _legend(
        fig,
        "distributions",
        _reference_recent_handles(),
        [
            f"reference (version {data.champion.version}'s reference sample)",
            f"recent ({len(data.recent):,} newest labelled)",
        ],
        loc="outside upper center",
        ncols=2,
    )
    return svg(fig)


def prediction_figure(data: ReportData) -> str:
    """The model's output: its reference distribution against its recent answers."""
    plt = _pyplot()
    profile = data.champion.profile.features.get(PREDICTION_FEATURE)
    fig, ax = plt.subplots(figsize=(WIDTH, 3.0), layout="constrained")
    if profile is None:
        ax.set_visible(False)
        fig.text(0.5, 0.5, "the reference has no model output", ha="center")
    else:
        _panel(ax, PREDICTION_FEATURE, profile, _values(data.recent, PREDICTION_FEATURE))
        ax.set_title(f"model output of version {data.champion.version}")
    _legend(
        fig,
        "prediction",
        _reference_recent_handles(),
        ["reference sample", f"recent ({len(data.recent):,} newest labelled)"],
    )
    return svg(fig)


def psi_top(data: ReportData) -> float:
    """Where the PSI axis is clipped: twice the significant band (0.5 by default), so both bands take a
    readable share of the height however large one feature's PSI gets."""
    c = data.champion.config
    return max(0.5, 2 * max(c.psi_significant, c.prediction_psi_significant))


def _series(data: ReportData) -> Iterator[tuple[str, str, list[datetime], list[float]]]:
    """(feature, version, times, PSIs) per feature and version: a version has its own reference, so a
    line never runs from one version's windows into the next's."""
    grouped: dict[tuple[str, str], list[tuple[float, float]]] = {}
    for version, _, feature, end_ts, psi, _ in data.windows:
        grouped.setdefault((feature, version), []).append((end_ts, psi))
    order = {name: i for i, name in enumerate(_feature_order(data))}
    for (feature, version), points in sorted(grouped.items(), key=lambda item: (order[item[0][0]], item[0][1])):
        yield feature, version, [moment(t) for t, _ in points], [p for _, p in points]


def _feature_order(data: ReportData) -> list[str]:
    names = {w[2] for w in data.windows}
    ordered = [n for n in data.champion.profile.features if n in names and n != PREDICTION_FEATURE]
    ordered += sorted(names - set(ordered) - {PREDICTION_FEATURE})
    return ordered + ([PREDICTION_FEATURE] if PREDICTION_FEATURE in names else [])


def psi_figure(data: ReportData) -> str:
    """PSI per window and feature over time, on an axis clipped at ``psi_top`` with the values past it
    marked and written out; the bands; the model output in black."""
    plt = _pyplot()
    c = data.champion.config
    top = psi_top(data)
    fig, ax = plt.subplots(figsize=(WIDTH, 4.2), layout="constrained")
    ax.axhspan(
        c.psi_moderate, c.psi_significant, color=MODERATE_BAND, label=f"moderate band ({number(c.psi_moderate)})"
    )
    ax.axhspan(
        c.psi_significant, top * 1.06, color=SIGNIFICANT_BAND, label=f"significant band ({number(c.psi_significant)})"
    )
    colours = _colours(_feature_order(data))
    labelled: set[str] = set()
    clipped: list[tuple[datetime, float, str]] = []
    for feature, _, times, values in _series(data):
        label = (
            None
            if feature in labelled
            else ("model output (__prediction__)" if feature == PREDICTION_FEATURE else feature)
        )
        labelled.add(feature)
        style = {"color": colours[feature], "linewidth": 2.2 if feature == PREDICTION_FEATURE else 1.3}
        ax.plot(times, np.minimum(values, top), marker="o", markersize=3, label=label, **style)
        clipped += [(t, v, colours[feature]) for t, v in zip(times, values) if v > top]
    if clipped:
        ax.plot(
            [t for t, _, _ in clipped],
            [top] * len(clipped),
            "^",
            color="#222222",
            markersize=6,
            clip_on=False,
            label=f"past {number(top)}: value written under the mark",
        )
    _version_changes(ax, data)
    ax.set_ylim(0, top * 1.06)
    ax.set_ylabel("PSI")
    ax.set_title(f"population stability index per window (axis clipped at {number(top)})", loc="left")
    date_axis(ax.xaxis)
    _legend(fig, "psi")
    hidden = _write_clipped(fig, ax, clipped, top)
    if hidden:
        ax.set_title(
            f"population stability index per window (axis clipped at {number(top)}; "
            f"{hidden} more values past it, see the per-feature table)",
            loc="left",
        )
    return svg(fig)


def _colours(features: list[str]) -> dict[str, str]:
    import matplotlib

    cycle = matplotlib.color_sequences["tab10"]
    out = {}
    for i, name in enumerate(f for f in features if f != PREDICTION_FEATURE):
        out[name] = matplotlib.colors.to_hex(cycle[i % len(cycle)])
    out[PREDICTION_FEATURE] = "#111111"
    return out


def _version_changes(ax, data: ReportData) -> None:
    """A vertical line where each later version became champion: PSI and errors are against its reference."""
    changes = [c for c in data.history if c.action in ("promoted", "rolled_back") and c.changed_at]
    for i, change in enumerate(changes):
        label = "champion changed (new reference)" if i == 0 else None
        ax.axvline(moment(change.changed_at), color="#777777", linestyle="--", linewidth=1, label=label)


def _write_clipped(fig, ax, clipped: list[tuple[datetime, float, str]], top: float) -> int:
    """Write each clipped value under its marker, largest first, moving a label down a row when it
    would touch one already written or a tick label, and leaving it out after three rows (the count is
    returned, and said in the title). The layout is fixed first, so the positions measured are the
    ones saved."""
    if not clipped:
        return 0
    fig.canvas.draw()
    fig.set_layout_engine("none")
    renderer = fig.canvas.get_renderer()
    taken = [t.get_window_extent(renderer) for t in ax.get_xticklabels() + ax.get_yticklabels() if t.get_text()]
    taken.append(ax.title.get_window_extent(renderer))
    hidden = 0
    for when, value, colour in sorted(clipped, key=lambda p: -p[1]):
        for row in range(3):
            text = ax.annotate(
                number(value),
                (when, top),
                xytext=(0, -8 - 13 * row),
                textcoords="offset points",
                ha="center",
                va="top",
                fontsize=8,
                color=colour,
                # White behind the digits: the lines and bands under them must not cross them.
                bbox={"boxstyle": "square,pad=0.15", "facecolor": "white", "edgecolor": "none", "alpha": 0.85},
            )
            box = text.get_window_extent(renderer).padded(2)
            if not any(box.overlaps(other) for other in taken):
                taken.append(box)
                break
            text.remove()
        else:
            hidden += 1
    return hidden


def _curves(pairs: list[Any], least: int = BUCKET_PAIRS) -> Iterator[tuple[str, list[datetime], np.ndarray]]:
    """Per version, the bucket centres and the bucket means of its errors (``least`` pairs a bucket at
    least, ERROR_BUCKETS in all at most): one curve per version, so that no line runs across the gap
    between two versions' predictions as if it were data."""
    by_version: dict[str, list[tuple[float, float]]] = {}
    for p in pairs:
        by_version.setdefault(p[2] or "", []).append((p[0], p[1]))
    for version, own in by_version.items():
        times = np.array([t for t, _ in own])
        errors = np.array([e for _, e in own])
        buckets = max(1, min(round(ERROR_BUCKETS * len(own) / len(pairs)), len(own) // least))
        edges = np.linspace(0, len(own), buckets + 1).astype(int)
        centres = [moment(times[a:b].mean()) for a, b in zip(edges, edges[1:])]
        yield version, centres, np.array([errors[a:b].mean() for a, b in zip(edges, edges[1:])])


def _version_span(pairs: list[Any], version: str) -> list[datetime] | None:
    own = [p[0] for p in pairs if p[2] == version]
    return [moment(min(own)), moment(max(own))] if own else None


def error_figure(data: ReportData) -> str:
    """The error over prediction time with each version's baseline and alert threshold, and the alarms."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(WIDTH, 3.8), layout="constrained")
    for i, (_, centres, means) in enumerate(_curves(data.pairs)):
        ax.plot(centres, means, color="#333333", linewidth=1.2, label=None if i else "mean error (bucketed)")
    if data.pairs:
        first = True
        for version, (baseline, threshold) in data.baselines.items():
            span = _version_span(data.pairs, version)
            if span is None:
                continue
            ax.plot(
                span, [baseline] * 2, color=BASELINE, linestyle="--", linewidth=1.2, label="baseline" if first else None
            )
            ax.plot(
                span,
                [threshold] * 2,
                color=ALARM,
                linestyle=":",
                linewidth=1.4,
                label="rolling-mean threshold" if first else None,
            )
            first = False
    alarms = _concept_alarms(data.events)
    for i, when in enumerate(alarms):
        ax.axvline(when, color=ALARM, alpha=0.7, label="concept alarm (estimated start)" if i == 0 else None)
    _version_changes(ax, data)
    ax.set_ylabel("error")
    ax.set_title("prediction error over prediction time", loc="left")
    date_axis(ax.xaxis)
    _legend(fig, "error")
    return svg(fig)


def _concept_alarms(events: list[dict[str, Any]]) -> list[datetime]:
    """When each concept episode began or escalated: the estimated start of the change if the detector
    gave one, else the label that fired."""
    times = []
    for event in events:
        d = event["data"]
        if event["type"] == "undertow.drift.concept" and d["episode"] in ("started", "escalated"):
            times.append(moment(parse(d.get("change_started_at") or d["detected_at"])))
    return times


def _estimates(data: ReportData) -> tuple[list[datetime], list[float], list[tuple[datetime, float]]]:
    """The monitor's estimated accuracy where it was recorded: each performance alert's window, and the
    champion's newest window (its state keeps the last value); the floors the alerts were held to."""
    points: list[tuple[float, float]] = []
    floors = []
    for e in data.events:
        if e["type"] == "undertow.performance.estimated":
            end = parse(e["data"]["window"]["end_ts"])
            points.append((end, e["data"]["value"]))
            floors.append((moment(end), e["data"]["threshold"]))
    check = data.state.checks.get(PERFORMANCE) if data.state is not None else None
    newest = [r.end_ts for r in data.latest]
    if check is not None and newest:
        points.append((max(newest), check.value))
    points.sort()
    return [moment(t) for t, _ in points], [v for _, v in points], floors


def performance_figure(data: ReportData) -> str | None:
    """A classifier's accuracy: realised (from the joined labels, bucketed) against the monitor's estimate
    from the scores alone, each version's validation accuracy, and the floor the estimate alerts under.
    None for a regressor."""
    if not data.champion.is_classifier:
        return None
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(WIDTH, 3.8), layout="constrained")
    for i, (_, centres, means) in enumerate(_curves(data.pairs, ACCURACY_PAIRS)):
        realised = None if i else "realised accuracy (joined labels, bucketed)"
        ax.plot(centres, 1.0 - means, color="#333333", linewidth=1.2, label=realised)
    if data.pairs:
        first = True
        for v in data.versions:
            span = _version_span(data.pairs, v.version)
            if span is None or v.validation is None:
                continue
            ax.plot(
                span,
                [1.0 - v.validation[0]] * 2,
                color=BASELINE,
                linestyle="--",
                label="validation accuracy" if first else None,
            )
            first = False
    when, estimates, floors = _estimates(data)
    ax.plot(when, estimates, "o", color=RECENT, markersize=6, label="estimated accuracy (monitor, no labels)")
    if floors:
        ax.plot(
            [t for t, _ in floors],
            [f for _, f in floors],
            "_",
            color=ALARM,
            markersize=14,
            mew=2,
            label="alert floor of the estimate",
        )
    _version_changes(ax, data)
    ax.set_ylabel("accuracy")
    ax.set_title("estimated against realised accuracy", loc="left")
    date_axis(ax.xaxis)
    _legend(fig, "performance")
    return svg(fig)


def figures(data: ReportData) -> dict[str, str]:
    """Every figure of the page by name (its ``<figure id="fig-NAME">``)."""
    out = {
        "distributions": distributions_figure(data),
        "prediction": prediction_figure(data),
        "psi": psi_figure(data),
        "error": error_figure(data),
    }
    performance = performance_figure(data)
    if performance is not None:
        out["performance"] = performance
    return out
