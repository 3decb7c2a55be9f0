"""``undertow report``: one self-contained HTML page of a model's drift, from the stored state.

The figures are matplotlib SVG (Agg, text as text) inlined in a Jinja2
template: no script, no stylesheet or font from the network, nothing to
install to view it. Every figure is drawn from aggregated numbers (window
results, bucketed errors, the reference profile, a sample of recent
values), so the file stays small however long the stream was.

The page carries ``<meta name="generator" content="undertow report">``: it
is how ``--out`` tells an earlier report, which it replaces, from any other
file, which it replaces only with ``--force`` (``check_out``).
"""

from __future__ import annotations

import io
import json
import math
import os
import tempfile
from datetime import UTC, datetime
from importlib import resources
from pathlib import Path

import numpy as np
from sqlalchemy.orm import Session

from undertow.errors import UndertowError
from undertow.models import registry
from undertow.models import runs as training_runs
from undertow.models.drift.config import DriftConfig
from undertow.models.drift.detectors import RollingMean
from undertow.models.profile import ReferenceProfile
from undertow.storage import db, repo
from undertow.worker.report import alerts as report_alerts

RECENT_VALUES = 2000  # newest labelled predictions shown as "recent"
ERROR_BUCKETS = 150  # points of the error-over-time curve
GENERATOR_MARKER = b'<meta name="generator" content="undertow report">'
# Reports written before the marker existed start with this title; they are reports too.
LEGACY_MARKER = b"<title>Undertow report: "
MARKER_WITHIN = 4096  # bytes of an existing file read to find a marker (both sit in the <head>)


class ReportError(UndertowError):
    """The report cannot be written where asked (the message is one line for the user)."""


def is_report(path: Path) -> bool:
    """Whether ``path`` holds an Undertow report, by the marker in the head of the page."""
    with open(path, "rb") as handle:
        head = handle.read(MARKER_WITHIN)
    return GENERATOR_MARKER in head or LEGACY_MARKER in head


def check_out(path: Path, force: bool = False) -> None:
    """Raise ReportError unless the report may be written to ``path``.

    Its folder must exist (the report never creates folders: a typo would
    scatter reports). A file already there is replaced only if it is an
    earlier report, or with ``force``: ``--out undertow.db`` must not
    destroy the database. A directory or anything but a regular file is
    never replaced (and never read: a FIFO would block).
    """
    parent = path.parent
    if not parent.is_dir():
        raise ReportError(f"--out {str(path)!r}: the folder {str(parent)!r} does not exist")
    if not os.path.lexists(path):
        return
    if not path.is_file():
        raise ReportError(f"--out {str(path)!r} exists and is not a regular file: not replacing it")
    if force:
        return
    try:
        report = is_report(path)
    except OSError as exc:
        raise ReportError(
            f"--out {str(path)!r} exists and cannot be read ({exc.strerror}): not replacing it; --force replaces it"
        ) from None
    if not report:
        raise ReportError(
            f"--out {str(path)!r} exists and is not an Undertow report: not replacing it; --force replaces it"
        )


def _write(path: Path, html: str) -> None:
    """Write to a temporary file in the same folder, then rename it over ``path``: a failure halfway
    (disk full) leaves the earlier file as it was, never half a report."""
    try:
        fd, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as exc:
        raise ReportError(f"cannot write --out {str(path)!r}: {exc.strerror}") from None
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(html)
        os.chmod(temporary, 0o666 & ~_umask())  # as a plainly created file: mkstemp's 0600 would hide it from others
        os.replace(temporary, path)
    except OSError as exc:
        Path(temporary).unlink(missing_ok=True)
        raise ReportError(f"cannot write --out {str(path)!r}: {exc.strerror or exc}") from None


def _umask() -> int:
    current = os.umask(0o022)  # the only way to read it is to set it
    os.umask(current)
    return current


def write_report(db_url: str, model_id: str, out: str | Path, force: bool = False) -> Path:
    """Build the report of ``model_id`` from the database at ``db_url`` into ``out``; its path.

    ``out`` is checked before the database is read (``check_out``) and
    again just before it is replaced, in case it appeared meanwhile.
    """
    import jinja2

    path = Path(out)
    check_out(path, force)
    engine = db.make_engine(db_url, must_exist=True)
    try:
        with db.make_session_factory(engine)() as session:
            data = gather(session, model_id)
    finally:
        engine.dispose()
    figures = {"distributions": distributions_figure(data), "psi": psi_figure(data), "error": error_figure(data)}
    template = jinja2.Environment(autoescape=True, undefined=jinja2.StrictUndefined).from_string(
        resources.files("undertow.worker.report").joinpath("report.html.j2").read_text()
    )
    html = template.render(model_id=model_id, generated=_iso(datetime.now(UTC).timestamp()), figures=figures, **data)
    check_out(path, force)
    _write(path, html)
    return path.resolve()


def gather(session: Session, model_id: str) -> dict:
    versions = registry.list_versions(session, model_id)
    if not versions:
        raise registry.not_registered(session, model_id)
    champion = next((v for v in versions if v.stage == "champion"), versions[-1])
    windows = repo.window_history(session, model_id)
    pairs = repo.error_history(session, model_id)
    events = [json.loads(c) for c in repo.alert_history(session, model_id)]
    config = DriftConfig.model_validate_json(champion.drift_config)
    # Each alert is read with its own version's thresholds: a retrained version may have others.
    configs = {v.version: DriftConfig.model_validate_json(v.drift_config) for v in versions}
    details = [report_alerts.detail(e, configs, config) for e in events]
    recent = [json.loads(f) for _, _, _, f in pairs[-RECENT_VALUES:]]
    return {
        "versions": _version_rows(session, model_id, versions),
        "champion": champion.version,
        "profile": ReferenceProfile.model_validate_json(champion.profile),
        "windows": windows,
        "pairs": pairs,
        "recent": recent,
        "baselines": _baselines(session, model_id, versions, config),
        "config": config,
        "alerts": report_alerts.alert_rows(events, details),
        "alert_events": events,
        "episodes": report_alerts.episodes(events, details),
    }


def _version_rows(session: Session, model_id: str, versions: list) -> list[dict]:
    runs = {r.candidate_version: r for r in training_runs.list_runs(session, model_id)}
    rows = []
    for v in versions:
        run = runs.get(v.version)
        metrics = json.loads(run.metrics) if run is not None else {}
        rows.append(
            {
                "version": v.version,
                "stage": v.stage,
                "created": _iso(v.created_at),
                "sha256": v.artifact_sha256 or "",
                "gate": metrics.get("gate"),
                "run_status": run.status if run else None,
                "outcome": run.outcome if run else None,
                "card": json.dumps(_times_readable(json.loads(v.model_card or "{}")), indent=2),
            }
        )
    return rows


def _times_readable(value):
    """The stored card with its epoch times (``registered_at``) in RFC 3339, as the report shows every time."""
    if isinstance(value, dict):
        return {
            k: _iso(v)
            if k.endswith(("_at", "_ts")) and isinstance(v, (int, float)) and not isinstance(v, bool)
            else _times_readable(v)
            for k, v in value.items()
        }
    if isinstance(value, list):
        return [_times_readable(v) for v in value]
    return value


def _baselines(session: Session, model_id: str, versions: list, config: DriftConfig) -> dict:
    """Version → (baseline error, rolling-mean threshold) in error units, for the error figure: the
    production baseline the monitor refined if there is one, else the validation one."""
    baselines = {}
    for v in versions:
        row = repo.concept_state(session, model_id, v.version)
        state = row.detectors if row is not None else None
        production = (json.loads(state).get("production") or {}) if state else {}
        mean = production.get("mean") if production.get("mean") is not None else v.baseline_error_mean
        sd = production.get("sd") if production.get("sd") is not None else v.baseline_error_std
        if mean is not None and sd is not None:
            rolling = RollingMean(
                config.rolling_window,
                config.rolling_step,
                config.rolling_sigmas,
                production.get("labels"),
                production.get("skewness") or 0.0,
            )
            baselines[v.version] = (mean, mean + rolling.threshold * sd)
    return baselines


def _svg(fig) -> str:
    import matplotlib.pyplot as plt

    buffer = io.StringIO()
    fig.savefig(buffer, format="svg", bbox_inches="tight")
    plt.close(fig)
    svg = buffer.getvalue()
    return svg[svg.index("<svg") :]  # drop the XML prolog and doctype: the SVG is inlined in HTML


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    matplotlib.rcParams.update(
        {"svg.fonttype": "none", "font.size": 9, "axes.spines.top": False, "axes.spines.right": False}
    )
    import matplotlib.pyplot as plt

    return plt


def distributions_figure(data: dict) -> str:
    """Per feature, the reference distribution against the recent one (the chapter's 17.7)."""
    plt = _pyplot()
    features = list(data["profile"].features.items())
    cols = 3
    rows = max(1, math.ceil(len(features) / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(10, 2.6 * rows), squeeze=False)
    for ax in axes.flat[len(features) :]:
        ax.set_visible(False)
    for ax, (name, profile) in zip(axes.flat, features):
        values = [r.get(name) for r in data["recent"] if r.get(name) is not None]
        if profile.kind == "numeric":
            reference = np.array(profile.ks_sample, dtype=float)
            recent = np.array([v for v in values if isinstance(v, (int, float))], dtype=float)
            both = np.concatenate([reference, recent]) if recent.size else reference
            bins = np.linspace(np.percentile(both, 0.5), np.percentile(both, 99.5), 30)
            ax.hist(reference, bins=bins, density=True, alpha=0.55, label="reference", color="#4c72b0")
            if recent.size:
                ax.hist(recent, bins=bins, density=True, alpha=0.55, label="recent", color="#dd8452")
        else:
            categories = profile.categories[:8]
            counts = np.array([sum(1 for v in values if str(v) == c) for c in categories], dtype=float)
            x = np.arange(len(categories))
            ax.bar(x - 0.2, profile.shares[: len(categories)], 0.4, label="reference", color="#4c72b0")
            if counts.sum():
                ax.bar(x + 0.2, counts / max(len(values), 1), 0.4, label="recent", color="#dd8452")
            ax.set_xticks(x, categories, rotation=30, ha="right")
        ax.set_title(name)
    axes.flat[0].legend(frameon=False)
    fig.suptitle(
        f"reference (training) against the newest {min(len(data['recent']), RECENT_VALUES):,} labelled predictions"
    )
    return _svg(fig)


def psi_figure(data: dict) -> str:
    """PSI per window and feature over time, with the 0.1 and 0.25 bands."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(10, 3.6))
    config = data["config"]
    ax.axhspan(config.psi_moderate, config.psi_significant, color="#f3d9a4", alpha=0.5, label="moderate")
    ax.axhspan(
        config.psi_significant,
        max([config.psi_significant * 2] + [w.psi for w in data["windows"]]) * 1.05,
        color="#f2b5a7",
        alpha=0.5,
        label="significant",
    )
    by_feature: dict[str, list] = {}
    for w in data["windows"]:
        by_feature.setdefault(w.feature, []).append((w.end_ts, w.psi))
    for feature, points in sorted(by_feature.items()):
        times = [datetime.fromtimestamp(t, UTC) for t, _ in points]
        ax.plot(times, [p for _, p in points], marker=".", linewidth=1, label=feature)
    ax.set_ylabel("PSI")
    ax.set_title("population stability index per window (bands at 0.1 and 0.25)")
    ax.legend(frameon=False, fontsize=7, ncol=4, loc="upper left")
    fig.autofmt_xdate()
    return _svg(fig)


def error_figure(data: dict) -> str:
    """The error over prediction time with each version's baseline and alert threshold, and the alarms
    (the chapter's 17.8)."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(10, 3.6))
    pairs = data["pairs"]
    if pairs:
        times = np.array([p[0] for p in pairs])
        errors = np.array([p[1] for p in pairs])
        versions = [p[2] for p in pairs]
        edges = np.linspace(0, len(pairs), min(ERROR_BUCKETS, len(pairs)) + 1).astype(int)
        centres = [datetime.fromtimestamp(times[a:b].mean(), UTC) for a, b in zip(edges, edges[1:])]
        means = [errors[a:b].mean() for a, b in zip(edges, edges[1:])]
        ax.plot(centres, means, color="#333333", linewidth=1.2, label="mean error (bucketed)")
        for version, (baseline, threshold) in data["baselines"].items():
            own = [t for t, v in zip(times, versions) if v == version]
            if not own:
                continue
            span = [datetime.fromtimestamp(min(own), UTC), datetime.fromtimestamp(max(own), UTC)]
            ax.plot(span, [baseline] * 2, color="#4c72b0", linestyle="--", linewidth=1)
            ax.plot(span, [threshold] * 2, color="#c44e52", linestyle=":", linewidth=1)
            ax.annotate(f"v{version}", (span[0], baseline), fontsize=7, color="#4c72b0")
        ax.plot([], [], color="#4c72b0", linestyle="--", label="baseline")
        ax.plot([], [], color="#c44e52", linestyle=":", label="rolling-mean threshold")
    for when in _concept_alarms(data["alert_events"]):
        ax.axvline(when, color="#c44e52", alpha=0.6)
    ax.plot([], [], color="#c44e52", alpha=0.6, label="concept alarm (estimated start)")
    ax.set_ylabel("error")
    ax.set_title("prediction error over prediction time")
    ax.legend(frameon=False, fontsize=7, loc="upper left")
    fig.autofmt_xdate()
    return _svg(fig)


def _concept_alarms(events: list[dict]) -> list[datetime]:
    """When each concept episode began or escalated: the estimated start of the change if the detector
    gave one, else the label that fired."""
    times = []
    for event in events:
        d = event["data"]
        if event["type"] == "undertow.drift.concept" and d["episode"] in ("started", "escalated"):
            when = d.get("change_started_at") or d["detected_at"]
            times.append(datetime.fromisoformat(when.replace("Z", "+00:00")))
    return times


def _iso(ts: float | None) -> str:
    """RFC 3339 in UTC, to the second, as in the model card: ``2026-12-06T03:04:05Z``."""
    return "" if ts is None else datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
