"""The whole operations chain with the real parts: the embedded broker, `undertow train`, the real monitor,
trainer, `undertow serve` and `undertow notify --webhook` (subprocesses, metrics ports), a real Prometheus
(Debian's /usr/bin/prometheus) scraping them every second with the shipped rules, a real Alertmanager
(/usr/bin/prometheus-alertmanager) with the shipped routing; Alertmanager and notify deliver to a webhook
receiver in this process.

A short drifting stream goes through ``POST /predict`` and ``POST /labels`` (the demo's sender): stationary,
then median income x1.3 (covariate drift) until the drift rule's alert reaches the receiver through
Alertmanager, then the market re-prices (concept drift) until the trainer decides. Then:

- every panel query of the committed dashboard (``$model_id`` = housing, ``$__rate_interval`` and
  ``$__range`` replaced) returns data without error through Prometheus' HTTP API;
- every rule evaluates without error (``/api/v1/rules``: health ok, no lastError), and every metric a rule
  or a panel names exists (a misspelt name would evaluate fine and never fire);
- the drift rule (UndertowDriftEpisodeSignificant) fired and reached the receiver of its severity;
- Prometheus' numbers are the services' (predictions processed, the gate's decisions, notify's deliveries
  against the CloudEvents the receiver got);
- ``promtool check metrics`` passes on each service's /metrics.

Differences from the shipped files, for time: scrape and evaluation every second; a copy of the rules with
every ``for:`` shortened to 1s (the rules' expressions are the shipped ones); Alertmanager's group_wait and
group_interval 1s and its webhook URLs pointed at the local receiver (its routes and receivers are the shipped
ones); an ``undertow-notify`` scrape job, which compose does not have yet. Every wait polls a condition with
a deadline.
"""

from __future__ import annotations

import json
import math
import re
import subprocess
import sys
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import urlparse

import httpx
import numpy as np
import yaml
from sqlalchemy import text

from tests.conftest import REPO, Env, wait_for
from tests.ops.conftest import ALERTMANAGER_CONFIG, DASHBOARD, PROMETHEUS_CONFIG, RULES, binary
from undertow.worker.cli.demo import TRAINER_ENV, Sender, Timeline
from undertow.worker.dev.broker import free_port
from undertow.worker.dev.housing import HousingData

MODEL_ID = "housing"
DRIFT_RULE = "UndertowDriftEpisodeSignificant"
JOBS = ("undertow-monitor", "undertow-trainer", "undertow-server")  # the shipped prometheus.yml's scrape jobs
NOTIFY_JOB = "undertow-notify"  # the job its rules expect (compose runs notify)
NOTIFY_PATH = "/notify"  # where `undertow notify --webhook` delivers, beside Alertmanager's receivers
FINISHED = "WHERE status IN ('promoted', 'rejected', 'gave_up', 'failed')"  # the runs the trainer decided
RATE_INTERVAL = "10s"  # what Grafana's $__rate_interval is at a 1 s scrape interval and a short range
METRIC = re.compile(r"\b(undertow_[a-z_]+|up)\b(?!\s*\()")  # a metric name, not a function such as up(...)


class Receiver:
    """An HTTP server taking Alertmanager's webhook posts (JSON, version 4), as a team's receiver would."""

    def __init__(self) -> None:
        self.posts: list[tuple[str, dict]] = []
        posts = self.posts

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                posts.append((self.path, json.loads(body)))
                self.send_response(200)
                self.end_headers()

            def log_message(self, *args) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def alerts(self, name: str) -> list[tuple[str, dict]]:
        """(path, alert) of every alert named ``name`` Alertmanager posted so far."""
        return [
            (path, alert)
            for path, post in list(self.posts)
            if path != NOTIFY_PATH
            for alert in post["alerts"]
            if alert["labels"].get("alertname") == name
        ]

    def cloudevents(self) -> list[dict]:
        """What `undertow notify --webhook` delivered (each a CloudEvent in structured mode)."""
        return [post for path, post in list(self.posts) if path == NOTIFY_PATH]


def _rules_with_short_for(path: Path) -> list[str]:
    """The shipped rules with every ``for:`` at 1s, written to ``path``; the alert names."""
    rules = yaml.safe_load(RULES.read_text())
    names = []
    for group in rules["groups"]:
        for rule in group["rules"]:
            names.append(rule["alert"])
            if "for" in rule:
                rule["for"] = "1s"
    path.write_text(yaml.safe_dump(rules, sort_keys=False))
    return names


def _alertmanager_config(path: Path, receiver: str) -> None:
    config = yaml.safe_load(ALERTMANAGER_CONFIG.read_text())
    config["route"].update(group_wait="1s", group_interval="1s")
    for hook in (h for r in config["receivers"] for h in r.get("webhook_configs", [])):
        hook["url"] = receiver + urlparse(hook["url"]).path  # the same path: it tells the receivers apart
    path.write_text(yaml.safe_dump(config, sort_keys=False))


def _prometheus_config(path: Path, rules: Path, ports: dict[str, int], alertmanager: int) -> None:
    shipped = yaml.safe_load(PROMETHEUS_CONFIG.read_text())
    # The jobs the rules expect, notify's included (compose runs it).
    assert [job["job_name"] for job in shipped["scrape_configs"]] == [*JOBS, NOTIFY_JOB]
    config = {
        "global": {"scrape_interval": "1s", "scrape_timeout": "1s", "evaluation_interval": "1s"},
        "rule_files": [str(rules)],
        "alerting": {"alertmanagers": [{"static_configs": [{"targets": [f"127.0.0.1:{alertmanager}"]}]}]},
        "scrape_configs": [
            {"job_name": job, "static_configs": [{"targets": [f"127.0.0.1:{ports[job]}"]}]}
            for job in (*JOBS, NOTIFY_JOB)
        ],
    }
    path.write_text(yaml.safe_dump(config, sort_keys=False))


def _start(env: Env, command: list[str], name: str) -> subprocess.Popen:
    """A non-Undertow process, its output in a file; Env.close kills it if the test fails midway."""
    log = tempfile.NamedTemporaryFile(prefix=f"{name}-", suffix=".log", delete=False)
    proc = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
    log.close()
    proc.log_path = log.name  # type: ignore[attr-defined]
    env.processes.append(proc)
    return proc


def _ready(url: str) -> bool:
    try:
        return httpx.get(url, timeout=2).status_code == 200
    except httpx.TransportError:
        return False


def _api(prometheus: str, path: str, **params) -> dict:
    body = httpx.get(f"{prometheus}/api/v1/{path}", params=params, timeout=10).json()
    assert body["status"] == "success", (path, params, body)
    return body["data"]


def _value(prometheus: str, expr: str) -> float | None:
    result = _api(prometheus, "query", query=expr)["result"]
    return float(result[0]["value"][1]) if result else None


def _train(env: Env, workdir: Path) -> None:
    HousingData(7).write_training_csv(workdir / "train.csv", 6000)
    done = subprocess.run(
        [sys.executable, "-m", "undertow.worker.cli", "--log-level", "WARNING", "train", *env.cli_args()]
        + ["--model-id", MODEL_ID, "--data", str(workdir / "train.csv"), "--target", "price"]
        + ["--time-column", "ts", "--no-retrain-on-data-drift", "--retrain-cooldown-seconds", "0"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]


def _panel_queries(end: float, start: float) -> list[tuple[str, str]]:
    board = json.loads(DASHBOARD.read_text())
    queries = []
    for panel in board["panels"]:
        for target in panel.get("targets", []):
            expr = (
                target["expr"]
                .replace("$model_id", MODEL_ID)
                .replace("$__rate_interval", RATE_INTERVAL)
                .replace("$__range", f"{math.ceil(end - start)}s")
            )
            queries.append((panel["title"], expr))
    return queries


def _check_panels(prometheus: str, start: float) -> dict[str, int]:
    """Every panel query over the run: no error, and data (a finite sample); its number of series."""
    end = time.time()
    series: dict[str, int] = {}
    for title, expr in _panel_queries(end, start):
        result = _api(prometheus, "query_range", query=expr, start=start, end=end, step="1s")["result"]
        finite = [v for s in result for _, v in s["values"] if math.isfinite(float(v))]
        assert finite, f"panel {title!r}: no data for {expr}"
        series[f"{title}: {expr[:60]}"] = len(result)
    return series


def _check_rules(prometheus: str, names: list[str]) -> None:
    groups = _api(prometheus, "rules")["groups"]
    rules = {rule["name"]: rule for group in groups for rule in group["rules"]}
    assert sorted(rules) == sorted(names)
    for name, rule in rules.items():
        assert rule["health"] == "ok" and not rule.get("lastError"), (name, rule)
        assert not rule["lastEvaluation"].startswith("0001"), (name, "never evaluated")


def _check_metric_names(prometheus: str) -> None:
    """Every metric a rule or a panel names is one Prometheus has scraped."""
    exposed = set(_api(prometheus, "label/__name__/values"))
    rules = [rule["expr"] for group in yaml.safe_load(RULES.read_text())["groups"] for rule in group["rules"]]
    panels = [expr for _, expr in _panel_queries(time.time(), time.time() - 60)]
    named = {name for expr in rules + panels for name in METRIC.findall(expr)}
    missing = sorted(named - exposed)
    assert not missing, f"named by a rule or a panel but not exposed by any service: {missing}"


def _check_exposition(promtool: str, urls: dict[str, str]) -> None:
    for name, url in urls.items():
        text = httpx.get(url, timeout=10).text
        done = subprocess.run([promtool, "check", "metrics"], input=text, capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, f"{name}: {done.stdout}{done.stderr}"


def test_every_panel_has_data_every_rule_evaluates_and_the_drift_rule_reaches_a_receiver(env, tmp_path):
    prometheus_bin, alertmanager_bin = binary("prometheus"), binary("prometheus-alertmanager")
    promtool = binary("promtool")
    started = time.monotonic()
    _train(env, tmp_path)
    ports = {job: free_port() for job in (*JOBS, NOTIFY_JOB)}
    receiver = Receiver()
    env.start_monitor("--metrics-port", str(ports["undertow-monitor"]))
    env.start_trainer("--metrics-port", str(ports["undertow-trainer"]), env=TRAINER_ENV, log_level="WARNING")
    server = env.start_service("serve", "--model-id", MODEL_ID, "--port", str(ports["undertow-server"]))
    # notify on the monitor's database, as docs/notify.md has it run (the thresholds in its messages from there).
    env.start_service(
        "notify",
        "--webhook",
        receiver.url + NOTIFY_PATH,
        "--metrics-port",
        str(ports[NOTIFY_JOB]),
        group=env.group_id + "-notify",
    )
    urls = {job: f"http://127.0.0.1:{port}/metrics" for job, port in ports.items()}
    for job, url in urls.items():
        wait_for(lambda url=url: _ready(url), 90, f"{job} to serve /metrics")

    am_port, prom_port = free_port(), free_port()
    _alertmanager_config(tmp_path / "alertmanager.yml", receiver.url)
    _start(
        env,
        [alertmanager_bin, f"--config.file={tmp_path / 'alertmanager.yml'}", f"--storage.path={tmp_path / 'am'}"]
        + [f"--web.listen-address=127.0.0.1:{am_port}", "--cluster.listen-address="],
        "alertmanager",
    )
    names = _rules_with_short_for(tmp_path / "rules.yml")
    _prometheus_config(tmp_path / "prometheus.yml", tmp_path / "rules.yml", ports, am_port)
    prometheus = f"http://127.0.0.1:{prom_port}"
    _start(
        env,
        [prometheus_bin, f"--config.file={tmp_path / 'prometheus.yml'}", f"--storage.tsdb.path={tmp_path / 'tsdb'}"]
        + [f"--web.listen-address=127.0.0.1:{prom_port}"],
        "prometheus",
    )
    wait_for(lambda: _ready(f"http://127.0.0.1:{am_port}/-/ready"), 60, "Alertmanager to be ready")
    wait_for(lambda: _ready(f"{prometheus}/-/ready"), 60, "Prometheus to be ready")
    scraping_from = time.time()
    wait_for(
        lambda: len([t for t in _api(prometheus, "targets")["activeTargets"] if t["health"] == "up"]) == len(ports),
        30,
        "Prometheus to scrape the four services",
    )

    data, rng = HousingData(11), np.random.default_rng(11)
    with httpx.Client(base_url=f"http://127.0.0.1:{ports['undertow-server']}", timeout=30) as client:
        sender = Sender(client, Timeline(env.engine, started), rng, 12_000, env.engine)
        sender.send(data, 1200, 1.0, False, [])
        # Covariate drift until the drift rule's alert has gone through Prometheus and Alertmanager.
        drift_sent = time.monotonic()

        def drift_alert():
            if not receiver.alerts(DRIFT_RULE) and sender.sent < 6000:
                sender.send(data, 300, 1.3, False, [])
            return [
                (path, alert)
                for path, alert in receiver.alerts(DRIFT_RULE)
                if alert["labels"]["model_id"] == MODEL_ID and alert["status"] == "firing"
            ]

        (path, alert), *_ = wait_for(drift_alert, 120, "the drift rule's alert to reach the receiver")
        drift_seconds = time.monotonic() - drift_sent
        assert path == "/undertow/critical" and alert["labels"]["severity"] == "critical", (path, alert)
        assert alert["annotations"]["runbook"] == "docs/operations.md#undertowdriftepisodesignificant"
        # Concept drift: the trainer retrains and the gate decides.
        sender.send(data, 2400, 1.3, True, [])
        sender.post_all_labels()

    def decided():
        return env.scalar(f"SELECT count(*) FROM training_runs {FINISHED}")

    wait_for(decided, 120, "the trainer's decision")
    wait_for(
        lambda: env.scalar("SELECT COALESCE(SUM(predictions), 0) FROM model_stats") >= sender.sent,
        60,
        "the monitor to process every prediction",
    )
    predictions = f'sum(undertow_model_events_total{{model_id="{MODEL_ID}",kind="prediction"}})'
    wait_for(lambda: _value(prometheus, predictions) == sender.sent, 30, "Prometheus to scrape the last count")
    # The gate's decisions as Prometheus has them are the database's, outcome by outcome.
    by_outcome = f'sum by (outcome) (undertow_model_training_runs_total{{model_id="{MODEL_ID}"}})'

    def same_decisions():
        with env.engine.connect() as conn:
            query = text(f"SELECT status, count(*) FROM training_runs {FINISHED} GROUP BY status")
            database = {status: n for status, n in conn.execute(query)}
        scraped = {
            r["metric"]["outcome"]: int(float(r["value"][1]))
            for r in _api(prometheus, "query", query=by_outcome)["result"]
        }
        return scraped and {o: n for o, n in scraped.items() if n} == database and database

    decisions = wait_for(same_decisions, 30, "Prometheus to scrape the gate's decisions")

    delivered = 'sum(undertow_notify_deliveries_total{outcome="delivered"})'
    wait_for(
        lambda: receiver.cloudevents() and _value(prometheus, delivered) == len(receiver.cloudevents()),
        30,
        "Prometheus to count the CloudEvents notify delivered",
    )
    notified = sorted({event["type"] for event in receiver.cloudevents()})
    assert "undertow.drift.data" in notified and "undertow.model.promoted" in notified, notified
    series = _check_panels(prometheus, scraping_from)
    _check_rules(prometheus, names)
    _check_metric_names(prometheus)
    _check_exposition(promtool, urls)
    alertmanager = [post for path, post in receiver.posts if path != NOTIFY_PATH]
    print(
        f"\n{sender.sent} predictions; drift alert at the receiver {drift_seconds:.1f} s after the drift began; "
        f"gate: {decisions}; {len(alertmanager)} posts from Alertmanager "
        f"({sorted({(a['labels']['alertname'], a['status']) for p in alertmanager for a in p['alerts']})}); "
        f"notify delivered {len(receiver.cloudevents())} CloudEvents ({notified}); "
        f"{len(series)} panel queries with data; {time.monotonic() - started:.0f} s in all"
    )
    for name, count in series.items():
        print(f"  {count:3d} series  {name}")
    assert server.poll() is None, env.log_of(server)
    for proc in env.processes:
        proc.terminate()
    for proc in env.processes:
        proc.wait(timeout=60)
