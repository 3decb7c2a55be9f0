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

import os
import tempfile
from datetime import UTC, datetime
from importlib import resources
from pathlib import Path

from undertow.errors import UndertowError
from undertow.storage import db
from undertow.worker.report import alerts as report_alerts
from undertow.worker.report.cards import sections
from undertow.worker.report.features import feature_rows
from undertow.worker.report.figures import figures, psi_top
from undertow.worker.report.gather import ReportData, gather
from undertow.worker.report.segments import segment_episodes, segment_rows
from undertow.worker.report.times import iso
from undertow.worker.report.verdict import gate_numbers, verdict

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
    path = Path(out)
    check_out(path, force)
    engine = db.make_engine(db_url, must_exist=True)
    try:
        with db.make_session_factory(engine)() as session:
            data = gather(session, model_id)
    finally:
        engine.dispose()
    html = render(data, datetime.now(UTC).timestamp())
    check_out(path, force)
    _write(path, html)
    return path.resolve()


def render(data: ReportData, generated: float) -> str:
    """The page: the verdict, the per-feature table, the figures, then the episodes, alerts, versions and
    model cards."""
    import jinja2

    rows = feature_rows(data)
    template = jinja2.Environment(autoescape=True, undefined=jinja2.StrictUndefined).from_string(
        resources.files("undertow.worker.report").joinpath("report.html.j2").read_text()
    )
    return template.render(
        model_id=data.model_id,
        generated=iso(generated),
        verdict=verdict(data, rows),
        features=rows,
        config=data.champion.config,
        champion=data.champion,
        figures=figures(data),
        psi_top=psi_top(data),
        recent=len(data.recent),
        episodes=data.spans,
        alerts=report_alerts.alert_rows(data.events, data.details),
        versions=_version_rows(data),
        segments=segment_rows(data.segments),
        segment_episodes=segment_episodes(data.segment_events, data.segment_details),
    )


def _version_rows(data: ReportData) -> list[dict]:
    gates = {g.candidate: g for g in data.gates}
    return [
        {
            "version": v.version,
            "stage": v.stage,
            "task": v.task,
            "created": iso(v.created_at),
            "sha256": v.sha256,
            "run": v.run,
            "gate": gate_numbers(gates[v.version]) if v.version in gates else "",
            "sections": sections(v),
        }
        for v in data.versions
    ]
