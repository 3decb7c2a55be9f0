"""Serving overhead: `/predict` over HTTP against calling the pipeline's predict directly, in one run.

    .venv/bin/python bench/serve.py [--requests 2000] [--clients 4]

Starts the embedded broker, trains a model with `undertow train` into a
temporary SQLite registry, runs `undertow serve` as a user would (its events
flow to the broker), and measures from this process with one keep-alive
HTTP client: latency p50/p99 of single rows and of batches of 100, then the
throughput of ``--clients`` concurrent clients on single rows. The baseline
is the same loaded model's predict (what the endpoint calls), timed in this
process. Overhead = endpoint minus direct, at the same percentile.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from undertow.models import registry
from undertow.storage import db
from undertow.worker.dev.broker import EmbeddedBroker, free_port
from undertow.worker.dev.sample import SampleStream, write_training_csv
from undertow.worker.server.served_model import load_served


def _cli(*args: str) -> str:
    done = subprocess.run(
        [sys.executable, "-m", "undertow.worker.cli", "--log-level", "WARNING", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    if done.returncode:
        raise SystemExit(done.stderr)
    return done.stdout


def _percentiles(seconds: list[float]) -> tuple[float, float]:
    ms = np.array(seconds) * 1000
    return float(np.percentile(ms, 50)), float(np.percentile(ms, 99))


def _timed(call, n: int) -> list[float]:
    took = []
    for i in range(n):
        started = time.perf_counter()
        call(i)
        took.append(time.perf_counter() - started)
    return took


def _metric(client: httpx.Client, name: str) -> float:
    for line in client.get("/metrics").text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[-1])
    return 0.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--clients", type=int, default=4)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="undertow-bench-serve-"))
    stream = SampleStream(seed=3)
    rows = [p["features"] for p, _ in stream.events(500)]
    with EmbeddedBroker() as broker:
        connection = [
            "--bootstrap-servers",
            broker.bootstrap_servers,
            "--db-url",
            f"sqlite:///{work}/u.db",
            "--artifacts-dir",
            str(work / "artifacts"),
        ]
        _cli("topics", "create", *connection[:2])
        write_training_csv(SampleStream(seed=2), work / "train.csv", 5000)
        _cli(
            "train",
            "--model-id",
            "housing",
            "--data",
            str(work / "train.csv"),
            "--target",
            "target",
            "--time-column",
            "ts",
            *connection,
        )
        engine = db.make_engine(f"sqlite:///{work}/u.db")
        with db.make_session_factory(engine)() as session:
            served = load_served(registry.get_version(session, "housing", "1"))  # one OpenMP thread, as served
        port = free_port()
        server = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "undertow.worker.cli",
                "--log-level",
                "WARNING",
                "serve",
                "--model-id",
                "housing",
                "--port",
                str(port),
                *connection,
            ],
            cwd=REPO,
            env={**os.environ, "UNDERTOW_MAX_BATCH_ROWS": "1000"},
        )
        try:
            client = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30)
            deadline = time.monotonic() + 60
            while True:
                try:
                    if client.get("/health/ready").status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                if time.monotonic() > deadline:
                    raise SystemExit("the server did not become ready")
                time.sleep(0.1)
            n = args.requests
            batch = rows[:100]
            for _ in range(50):  # warm both paths
                served.predict([rows[0]])
                client.post("/predict", json={"features": rows[0]})
            direct_one = _timed(lambda i: served.predict([rows[i % len(rows)]]), n)
            http_one = _timed(lambda i: client.post("/predict", json={"features": rows[i % len(rows)]}), n)
            direct_batch = _timed(lambda i: served.predict(batch), max(n // 10, 50))
            http_batch = _timed(lambda i: client.post("/predict", json={"instances": batch}), max(n // 10, 50))

            done = [0] * args.clients

            def load(k: int, stop_at: float) -> None:
                with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30) as c:
                    while time.monotonic() < stop_at:
                        c.post("/predict", json={"features": rows[done[k] % len(rows)]})
                        done[k] += 1

            stop_at = time.monotonic() + 10
            threads = [threading.Thread(target=load, args=(k, stop_at)) for k in range(args.clients)]
            started = time.perf_counter()
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            concurrent_rate = sum(done) / (time.perf_counter() - started)
            direct_rate = n / sum(direct_one)

            sent = n + 50 + len(http_batch) * 100 + sum(done)
            deadline = time.monotonic() + 60
            while (
                _metric(client, 'undertow_server_events_emitted_total{kind="prediction"}') < sent
                and time.monotonic() < deadline
            ):
                time.sleep(0.2)
            emitted = _metric(client, 'undertow_server_events_emitted_total{kind="prediction"}')
            dropped = sum(
                _metric(client, f'undertow_server_events_dropped_total{{reason="{r}"}}')
                for r in ("queue_full", "send_failed", "delivery_failed")
            )
        finally:
            server.send_signal(signal.SIGTERM)
            server.wait(timeout=30)
    print("| path | p50 ms | p99 ms | overhead p50 ms | overhead p99 ms |")
    print("|---|---:|---:|---:|---:|")
    for label, direct, http in (("1 row", direct_one, http_one), ("batch of 100", direct_batch, http_batch)):
        (d50, d99), (h50, h99) = _percentiles(direct), _percentiles(http)
        print(f"| pipeline predict, {label} | {d50:.2f} | {d99:.2f} | | |")
        print(f"| POST /predict, {label} | {h50:.2f} | {h99:.2f} | {h50 - d50:.2f} | {h99 - d99:.2f} |")
    print()
    print(
        f"throughput, single rows: {args.clients} HTTP clients {concurrent_rate:,.0f} requests/s; "
        f"direct predict in one thread {direct_rate:,.0f}/s; ratio {concurrent_rate / direct_rate:.2f}"
    )
    print(
        f"events: {int(emitted):,} acknowledged by the broker of {sent:,} predictions answered; {int(dropped)} dropped"
    )
    print(json.dumps({"requests": n, "clients": args.clients, "cpus": os.cpu_count()}))


if __name__ == "__main__":
    main()
