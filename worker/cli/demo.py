"""``undertow demo``: the whole loop on the embedded defaults, through the parts a user deploys.

Version 1 of a housing-price model is trained with ``undertow train``; the
monitor, the trainer and the serving endpoint run as the real services
(subprocesses of ``undertow``); requests go through ``POST /predict`` and
labels come back later through ``POST /labels``, after delays that vary.
The stream is stationary, then median income rises (covariate drift), then
the market re-prices (concept drift). A timeline shows what the services
did, read from the database they share; a summary table and the HTML
report end it.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections import deque
from pathlib import Path

import numpy as np

from undertow.errors import ConfigError
from undertow.worker.cli.common import command, install_stop_handlers

# The production baseline is set on a version's first 1,000 labels, which the stationary fifth of the
# requests must hold before the drift begins; fewer and the demo waits for a decision that cannot come.
MIN_EVENTS = 5000


def demo_events(value: str) -> int:
    """An argparse type: prediction requests in all, at least ``MIN_EVENTS``."""
    number = int(value) if value.strip().isdigit() else 0
    if number < MIN_EVENTS:
        raise argparse.ArgumentTypeError(
            f"{value!r} is too few requests for the demo: at least {MIN_EVENTS:,} (the model's first 1,000 "
            "labels must come before the drift)"
        )
    return number


MODEL_ID = "housing"
TRAINER_ENV = {
    "UNDERTOW_MIN_TRAIN_PAIRS": "600",
    "UNDERTOW_GATE_MIN_HOLDOUT": "300",
    "UNDERTOW_WAIT_CHECK_SECONDS": "1",
    "UNDERTOW_MAX_WAIT_SECONDS": "120",
}
BATCH = 100  # rows per /predict request
LABEL_DELAY = 300  # median label delay, in predictions (lognormal, heavy tail)
MONITOR_LAG = 300  # the sender waits while the monitor is further behind: the story unfolds in order


class Timeline:
    """What the services did, from the database they share, printed once each."""

    def __init__(self, engine, started: float):
        self.engine, self.started = engine, started
        self.seen: set[str] = set()
        self.events: list[tuple[float, str, str]] = []  # (elapsed s, kind, text)
        self.run_status: dict[str, str] = {}

    def say(self, kind: str, text: str) -> None:
        elapsed = time.monotonic() - self.started
        self.events.append((elapsed, kind, text))
        print(f"\r{elapsed:6.1f}s  {text:<100}" if sys.stdout.isatty() else f"{elapsed:6.1f}s  {text}", flush=True)

    def poll(self) -> None:
        from sqlalchemy import text

        with self.engine.connect() as conn:
            tables = set(self.engine.dialect.get_table_names(conn))
            if "alerts" not in tables:
                return
            for alert_id, kind, cloudevent in conn.execute(
                text("SELECT id, type, cloudevent FROM alerts ORDER BY event_ts, id")
            ):
                if alert_id not in self.seen:
                    self.seen.add(alert_id)
                    self._alert(kind, json.loads(cloudevent)["data"])
            for request_id, reason in conn.execute(text("SELECT request_id, cloudevent FROM retrain_requests")):
                if request_id not in self.seen:
                    self.seen.add(request_id)
                    self.say("retrain", f"retrain requested: {json.loads(reason)['data']['reason']}")
            for run_id, status, outcome, metrics in conn.execute(
                text("SELECT run_id, status, outcome, metrics FROM training_runs WHERE request_id IS NOT NULL")
            ):
                if self.run_status.get(run_id) != status:
                    self.run_status[run_id] = status
                    self._run(status, outcome, json.loads(metrics or "{}"))
            for seq, version, action, actor in conn.execute(
                text("SELECT seq, version, action, actor FROM champion_history WHERE model_id = :m ORDER BY seq"),
                {"m": MODEL_ID},
            ):
                if f"champion-{seq}" not in self.seen:
                    self.seen.add(f"champion-{seq}")
                    self.say("champion", f"version {version} is champion ({action} by {actor})")

    def _alert(self, kind: str, data: dict) -> None:
        if kind in ("undertow.drift.data", "undertow.drift.prediction"):
            what = "prediction drift" if kind.endswith("prediction") else f"data drift: {data['feature']}"
            self.say("data", f"{what} {data['severity']} ({data.get('episode')}), PSI {data['psi']:.2f}")
        elif kind == "undertow.drift.multivariate":
            self.say(
                "data",
                f"multivariate drift ({data['episode']}): reconstruction error {data['z']:.1f} "
                f"standard errors above the reference",
            )
        elif kind == "undertow.drift.dependence":
            pair = data["pairs"][0] if data.get("pairs") else None
            moved = (
                ""
                if pair is None
                else (f": {' and '.join(pair['features'])} correlated {pair['reference']:.2f} -> {pair['value']:.2f}")
            )
            self.say("data", f"dependence drift ({data['episode']}){moved}, z {data['z']:.1f}")
        elif kind == "undertow.drift.dataset":
            self.say("data", f"dataset drift: {data.get('drifted_share', 0):.0%} of the inputs drifted")
        elif kind == "undertow.drift.concept":
            self.say(
                "concept",
                f"concept drift {data['episode']} ({data['detector']}): mean error "
                f"{data.get('recent_mean_error') or data['value']:.3f} against "
                f"{data['baseline']['mean']:.3f}",
            )
        else:
            self.say("alert", kind)

    def _run(self, status: str, outcome: str | None, metrics: dict) -> None:
        from undertow.models.runs import RunStatus

        gate = metrics.get("gate") or {}
        if status in (RunStatus.PROMOTED, RunStatus.REJECTED) and gate:
            verdict = "passed" if status == RunStatus.PROMOTED else "failed"
            self.say(
                "gate",
                f"gate {verdict}: on {gate['holdout_pairs']} "
                f"held-out pairs the champion's mean error {gate['champion_mean_error']:.3f}, the "
                f"candidate's {gate['candidate_mean_error']:.3f}; 95 % interval of the improvement "
                f"[{gate['improvement_low']:.3f}, {gate['improvement_high']:.3f}]",
            )
        else:
            self.say("run", f"training run {status}" + (f": {outcome}" if outcome else ""))


def _service(command: str, common: list[str], workdir: Path, env: dict | None = None, *extra: str):
    log = open(workdir / f"{command}.log", "wb")
    return subprocess.Popen(
        [sys.executable, "-m", "undertow.worker.cli", "--log-level", "INFO", command, *common, *extra],
        stdout=log,
        stderr=subprocess.STDOUT,
        env={**os.environ, **(env or {})},
    )


def _wait(condition, timeout: float, interval: float = 0.2):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(interval)
    return None


def _data_source(name: str, seed: int):
    from undertow.worker.dev.housing import CaliforniaData, HousingData

    if name == "california":
        try:
            return CaliforniaData(seed)
        except Exception as exc:  # noqa: BLE001 - offline, blocked, or a broken cache: say so and go on
            print(
                f"cannot use California housing ({type(exc).__name__}: {exc}); using the generated housing "
                f"data instead",
                flush=True,
            )
    return HousingData(seed)


def cmd_demo(args) -> int:
    import httpx
    from sqlalchemy import text

    from undertow.storage import db
    from undertow.worker.cli import main
    from undertow.worker.dev.broker import EmbeddedBroker, free_port
    from undertow.worker.report.build import write_report

    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="undertow-demo-"))
    if workdir.exists() and not workdir.is_dir():
        raise ConfigError(f"--workdir {workdir} is a file: name a folder (new or existing) for the demo's state")
    workdir.mkdir(parents=True, exist_ok=True)
    data = _data_source(args.dataset, args.seed)
    rng = np.random.default_rng(args.seed)
    stopping = []
    install_stop_handlers(lambda: stopping.append(True))
    n = args.events
    phases = [
        ("stationary", int(n * 0.2), 1.0, False),
        ("covariate drift", int(n * 0.2), 1.3, False),
        ("concept drift", int(n * 0.4), 1.3, True),
    ]
    after = n - sum(p[1] for p in phases)
    started = time.monotonic()
    with EmbeddedBroker() as broker:
        port = free_port()
        common = [
            "--bootstrap-servers",
            broker.bootstrap_servers,
            "--db-url",
            f"sqlite:///{workdir / 'undertow.db'}",
            "--artifacts-dir",
            str(workdir / "artifacts"),
        ]
        print(
            f"Undertow demo: {data.name}; embedded broker on {broker.bootstrap_servers}; state in {workdir}", flush=True
        )
        quiet = io.StringIO()
        with contextlib.redirect_stdout(quiet):
            main(["topics", "create", *common[:2], "--partitions", "3"])
            data.write_training_csv(workdir / "train.csv", 6000)
            code = main(
                [
                    "train",
                    *common,
                    "--model-id",
                    MODEL_ID,
                    "--data",
                    str(workdir / "train.csv"),
                    "--target",
                    data.target,
                    "--time-column",
                    "ts",
                    "--no-retrain-on-data-drift",
                    "--retrain-cooldown-seconds",
                    "0",
                    "--description",
                    "demo: housing prices",
                ]
            )
        if code:
            return code
        trained = json.loads(quiet.getvalue()[quiet.getvalue().index("{") :])
        print(
            f"trained version 1 with `undertow train`: holdout MAE {trained['holdout']['mae']:.3f} on "
            f"{trained['holdout']['holdout_rows']} rows; artifact sha256 {trained['artifact_sha256'][:12]}…",
            flush=True,
        )
        services = {
            "monitor": _service("monitor", common, workdir),
            "trainer": _service("trainer", common, workdir, TRAINER_ENV),
            "server": _service("serve", common, workdir, None, "--model-id", MODEL_ID, "--port", str(port)),
        }
        engine = db.make_engine(f"sqlite:///{workdir / 'undertow.db'}")
        try:
            timeline = Timeline(engine, started)
            client = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30)
            try:
                if not _wait(lambda: _ready(client), 60):
                    print("the serving endpoint did not start; see", workdir / "serve.log")
                    return 1
                print(
                    f"monitor, trainer and `undertow serve` running (logs in {workdir}); sending {n:,} requests",
                    flush=True,
                )
                sender = Sender(client, timeline, rng, n, engine)
                try:
                    _drive(sender, timeline, data, phases, after, stopping)
                except httpx.HTTPError as exc:
                    if not stopping:  # a stop signal reaches the services too: their refusals are expected
                        print(f"undertow: error: the server stopped answering ({exc}); see {workdir / 'serve.log'}")
                        return 1
            finally:
                client.close()
                _stop(services.values())
            if stopping:
                print(f"\ninterrupted: the services are stopped; the state so far is in {workdir}")
                return 130
            with engine.connect() as conn:
                summary = _summary(conn, text, sender, timeline)
        finally:
            engine.dispose()
        report = write_report(f"sqlite:///{workdir / 'undertow.db'}", MODEL_ID, workdir / "report.html")
    print()
    width = max(len(k) for k, _ in summary)
    for key, value in summary:
        print(f"  {key:<{width}}  {value}")
    print(
        f"\nreport: {report}\nstate:  {workdir / 'undertow.db'}  (try: undertow status --db-url "
        f"sqlite:///{workdir / 'undertow.db'})\nfinished in {time.monotonic() - started:.0f} s"
    )
    return 0


def _drive(sender: Sender, timeline: Timeline, data, phases: list, after: int, stopping: list) -> None:
    """The phases through the endpoint, the trainer's decision, the traffic after it; returns early once
    ``stopping`` (Ctrl-C or SIGTERM) holds anything."""
    from undertow.models import runs

    for name, count, income, concept in phases:
        timeline.say(
            "phase",
            f"-- {name}: {count:,} districts"
            + (f" (median income x{income})" if income != 1 else "")
            + (", priced by the new market" if concept else ""),
        )
        sender.send(data, count, income, concept, stopping)
        if stopping:
            return
    sender.post_all_labels()
    timeline.say("phase", "-- waiting for the trainer's decision")
    _wait(
        lambda: stopping or timeline.poll() or any(s in runs.FINISHED for s in timeline.run_status.values()),
        120,
        0.5,
    )
    _wait(lambda: stopping or sender.probe(data) == "2" or None, 30, 0.5)  # version 2 served, if promoted
    if stopping:
        return
    timeline.say("phase", f"-- after the decision: {after:,} districts of the new market")
    sender.send(data, after, 1.3, True, stopping)
    if stopping:
        return
    sender.post_all_labels()
    _wait(lambda: stopping or _processed(sender.engine) >= sender.sent, 60, 0.5)
    timeline.poll()


def _stop(processes) -> None:
    """SIGTERM to each service, then up to 30 s each to finish its batch; killed after that."""
    for proc in processes:
        proc.send_signal(signal.SIGTERM)
    for proc in processes:
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()


class Sender:
    """Requests through /predict, labels through /labels after lognormal delays (in predictions)."""

    def __init__(self, client, timeline: Timeline, rng, total: int, engine):
        self.client, self.timeline, self.rng, self.total, self.engine = client, timeline, rng, total, engine
        self.sent = 0
        self.pending: deque = deque()  # (due, event_id, label), kept sorted by due
        self.versions: dict[str, int] = {}

    def send(self, data, count: int, income: float, concept: bool, stopping: list) -> None:
        done = 0
        while done < count and not stopping:
            rows, prices = data.rows(min(BATCH, count - done), income, concept)
            answer = self.client.post("/predict", json={"instances": rows})
            answer.raise_for_status()
            body = answer.json()
            version = body["model_version"]
            if version not in self.versions:
                self.timeline.say("server", f"the server answers with version {version}")
            self.versions[version] = self.versions.get(version, 0) + len(rows)
            delays = self.rng.lognormal(np.log(LABEL_DELAY), 1.0, len(rows)).astype(int)
            for p, price, delay in zip(body["predictions"], prices, delays):
                self.pending.append((self.sent + delay, p["event_id"], price))
            self.pending = deque(sorted(self.pending))
            self.sent += len(rows)
            done += len(rows)
            self._post(lambda due: due <= self.sent)
            _wait(lambda: _processed(self.engine) >= self.sent - MONITOR_LAG, 30, 0.05)
            self.timeline.poll()
            _progress(self.sent, self.total)

    def post_all_labels(self) -> None:
        self._post(lambda due: True)

    def probe(self, data) -> str:
        rows, _ = data.rows(1)
        return self.client.post("/predict", json={"features": rows[0]}).json()["model_version"]

    def _post(self, due) -> None:
        labels = []
        while self.pending and due(self.pending[0][0]):
            _, event_id, label = self.pending.popleft()
            labels.append({"event_id": event_id, "label": label})
        for start in range(0, len(labels), 1000):
            self.client.post("/labels", json={"labels": labels[start : start + 1000]}).raise_for_status()


def _progress(done: int, total: int) -> None:
    if not sys.stdout.isatty():
        return  # a log file gets the timeline only
    filled = int(30 * min(done / total, 1))
    print(f"\r        [{'#' * filled}{'.' * (30 - filled)}] {done:,}/{total:,} requests", end="", flush=True)


def _ready(client) -> bool:
    import httpx

    try:
        return client.get("/health/ready").status_code == 200
    except httpx.TransportError:
        return False


def _processed(engine) -> int:
    from sqlalchemy import text

    with engine.connect() as conn:
        return int(conn.execute(text("SELECT COALESCE(SUM(predictions), 0) FROM model_stats")).scalar())


def _summary(conn, text, sender: Sender, timeline: Timeline) -> list[tuple[str, str]]:
    windows = conn.execute(text("SELECT count(DISTINCT version || ':' || window_index) FROM window_results")).scalar()
    alerts = dict(conn.execute(text("SELECT type, count(*) FROM alerts GROUP BY type")).all())
    champion = conn.execute(text("SELECT version FROM model_versions WHERE stage = 'champion'")).scalar()
    gate = [e for e in timeline.events if e[1] == "gate"]
    promoted_at = next((t for t, kind, msg in timeline.events if kind == "champion" and "promoted" in msg), None)
    after = [
        e
        for e in timeline.events
        if promoted_at is not None and e[0] > promoted_at and e[1] == "concept" and "started" in e[2]
    ]
    return [
        (
            "predictions answered",
            f"{sender.sent:,} ({', '.join(f'version {v}: {c:,}' for v, c in sender.versions.items())})",
        ),
        ("windows evaluated", f"{windows}"),
        (
            "data-drift alerts",
            f"{alerts.get('undertow.drift.data', 0)} on inputs, "
            f"{alerts.get('undertow.drift.prediction', 0)} on the prediction, "
            f"{alerts.get('undertow.drift.multivariate', 0)} multivariate, "
            f"{alerts.get('undertow.drift.dataset', 0)} dataset",
        ),
        ("concept-drift alerts", f"{alerts.get('undertow.drift.concept', 0)}"),
        ("retrain requests", f"{conn.execute(text('SELECT count(*) FROM retrain_requests')).scalar()}"),
        ("gate", gate[-1][2] if gate else "no decision"),
        ("champion now", f"version {champion}"),
        ("new concept episodes after the promotion", f"{len(after)}"),
    ]


def add_parsers(sub) -> None:
    p = command(
        sub,
        "demo",
        "the whole loop end to end: embedded broker, monitor, trainer, server and a report",
        "undertow demo --events 6000 --workdir demo",
    )
    p.add_argument(
        "--events",
        type=demo_events,
        default=12_000,
        help=f"prediction requests in all, at least {MIN_EVENTS:,} (default: 12,000)",
    )
    p.add_argument("--seed", type=int, default=7, help="seed of the data and the drift (default: %(default)s)")
    p.add_argument(
        "--dataset",
        choices=["generated", "california"],
        default="generated",
        help="generated housing data (default) or scikit-learn's California housing (downloaded)",
    )
    p.add_argument("--workdir", help="where the database, logs and report go (default: a new temporary folder)")
    p.set_defaults(func=cmd_demo)
