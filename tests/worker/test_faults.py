"""Fault injection: the broker paused and restarted empty, the database cut or locked, a monitor killed.

Each test runs the monitor as the CLI runs it, injects the fault mid-stream,
and asserts that every event is counted exactly once and that the same
monitor process kept going (it exits 0 on SIGTERM afterwards). The last two
restart PostgreSQL (as its clients see it) under the trainer's claim of a
run and under the database metrics' exporter lock.
"""

from __future__ import annotations

import logging
import os
import random
import signal
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

import pytest
from sqlalchemy import create_engine, event, text
from sqlalchemy.engine import make_url

from tests.conftest import REPO, Env, requires_postgres, requires_sqlite, wait_for
from tests.forwarder import TcpForwarder
from undertow.models import runs
from undertow.storage import db
from undertow.worker.dev.broker import EmbeddedBroker
from undertow.worker.dev.sample import SampleStream, write_training_csv
from undertow.worker.runtime.metrics import DatabaseCollector
from undertow.worker.runtime.settings import TrainerSettings, load_settings
from undertow.worker.trainer.training import RunLock, TrainingWorker

SMALL_BATCHES = {"UNDERTOW_BATCH_MAX_RECORDS": "200"}
# What a supervisor waits after SIGTERM before SIGKILL, less a margin: Kubernetes waits 30 s by default.
EXIT_GRACE_S = 20


@pytest.fixture
def private_broker():
    """A broker of the test's own, to pause and restart without touching the others' topics."""
    broker = EmbeddedBroker().start()
    yield broker
    broker.stop()


def events(n: int, seed: int, models: int = 6):
    """n (prediction, label) pairs spread over ``models`` models; ids differ between seeds."""
    for i, (prediction, label) in enumerate(SampleStream(seed=seed).events(n)):
        prediction["model_id"] = label["model_id"] = f"model-{i % models}"
        yield prediction, label


def stop_cleanly(env: Env, proc) -> None:
    """The monitor is still the same process and exits 0 on SIGTERM: it kept going through the fault."""
    assert proc.poll() is None, env.log_of(proc)
    env.stop(proc, timeout=30)


def wait_mid_stream(env: Env, monitor, timeout: float = 60) -> None:
    """Until some but not all of the 8,000 records are counted; on timeout, what the monitor said."""
    try:
        wait_for(lambda: 0 < sum(env.counts()[:2]) < 8000, timeout, "the monitor to be mid-stream")
    except AssertionError as timed_out:
        raise AssertionError(
            f"{timed_out}: counts {env.counts()}, monitor exit code {monitor.poll()}, its log: {env.log_of(monitor)}"
        ) from None


def retried_through_the_fault(env: Env, proc, failures: int = 2):
    """A condition for ``wait_for``: the monitor logged ``failures`` more failed attempts (it backs off and
    retries) than it had when the fault began. The fault lasts until the monitor has really met it."""
    before = failed_attempts(env, proc)
    return lambda: failed_attempts(env, proc) >= before + failures


def failed_attempts(env: Env, proc) -> int:
    return env.log_of(proc, tail=10**8).count("batch failed")


def through(forwarder: TcpForwarder, db_url: str) -> str:
    return make_url(db_url).set(port=forwarder.port).render_as_string(hide_password=False)


@pytest.mark.postgres
@pytest.mark.slow
def test_broker_paused_mid_stream_until_the_monitor_loses_its_group(private_broker, db_url):
    """The broker stalls (SIGSTOP) until the monitor's group session has expired on it: the pause lasts
    until the monitor has really met it, then the broker resumes and the group is joined anew."""
    env = Env(private_broker, db_url)
    try:
        env.send_events(events(4000, seed=1))
        monitor = env.start_monitor(env=SMALL_BATCHES)
        wait_mid_stream(env, monitor)
        os.kill(private_broker.pid, signal.SIGSTOP)
        try:
            wait_for(
                lambda: "Heartbeat session expired" in env.log_of(monitor, tail=10**8),
                120,
                "the monitor's group session to expire on the stalled broker",
            )
        finally:
            os.kill(private_broker.pid, signal.SIGCONT)
        env.send_events(events(1000, seed=2))
        wait_for(lambda: env.counts()[:2] == (5000, 5000), 180, "every event after the pause")
        stop_cleanly(env, monitor)
        assert env.counts() == (5000, 5000, 0)
    finally:
        env.close()


@pytest.mark.postgres
def test_a_monitor_asked_to_stop_while_the_broker_is_stalled_exits_within_a_grace_period(private_broker, db_url):
    """SIGTERM with the broker stalled (SIGSTOP): the Kafka work at exit (the outbox flush, the informational
    offset commit, leaving the group) is bounded, so the monitor exits 0 well within the 30 s a supervisor
    such as Kubernetes waits before SIGKILL, and a monitor started later loses nothing."""
    env = Env(private_broker, db_url)
    try:
        env.send_events(events(1000, seed=1))
        monitor = env.start_monitor()
        wait_for(lambda: env.counts()[:2] == (1000, 1000), 90, "the first stream")
        os.kill(private_broker.pid, signal.SIGSTOP)
        try:
            env.stop(monitor, timeout=EXIT_GRACE_S)
        finally:
            os.kill(private_broker.pid, signal.SIGCONT)
        env.send_events(events(500, seed=2))
        monitor = env.start_monitor()
        wait_for(lambda: env.counts()[:2] == (1500, 1500), 120, "the events sent after the stop")
        env.stop(monitor, timeout=EXIT_GRACE_S)
        assert env.counts() == (1500, 1500, 0)
    finally:
        env.close()


@pytest.mark.postgres
@pytest.mark.slow
def test_broker_restarted_empty_loses_nothing_and_new_partitions_are_read(private_broker, db_url):
    """Issue 7, cases 1 and 2: stored offsets beyond the new log end, and a fourth partition."""
    env = Env(private_broker, db_url)
    try:
        env.send_events(events(3000, seed=1))
        monitor = env.start_monitor()
        wait_for(lambda: env.counts()[:2] == (3000, 3000), 90, "the first stream")
        private_broker.stop()
        private_broker.start()  # same port, memory-only: every topic is gone
        # Producers come back first; their topics get another partition count.
        env.create_topics(partitions=4)
        env.send_events(events(1000, seed=2))  # far fewer records than the stored offsets
        wait_for(
            lambda: env.counts()[:2] == (4000, 4000), 120, "the new log to be read from its start, all four partitions"
        )
        status = env.status()
        partitions = {(p["topic"], p["partition"]): p for p in status["partitions"]}
        assert {p for t, p in partitions if t == env.topics.predictions} == {0, 1, 2, 3}
        assert sum(p["lag"] for p in partitions.values()) == 0
        assert sum(p["gaps"] for p in partitions.values()) >= 1
        assert all(p["last_gap"]["kind"] == "log_reset" for p in partitions.values() if p["gaps"])
        stop_cleanly(env, monitor)
        # A partition whose old position happened to be valid in the new log (an empty one, at 0) can be read
        # before the client's metadata has the topic's new id; those offsets are stored under the old id, and
        # the next assignment reads the new log from its start again: the duplicates are counted and dropped
        # (the counts above are exact), never more than the records of the new log that recorded moves
        # re-read (moves from a stored offset within it). (Seen once in CI: 74.)
        duplicates = env.counts()[2]
        with env.engine.connect() as conn:
            moves = [
                tuple(r)
                for r in conn.execute(text("SELECT topic, partition, stored_offset, resumed_at FROM partition_gaps"))
            ]
        reread = sum(
            stored - resumed
            for topic, partition, stored, resumed in moves
            if resumed < stored <= partitions[(topic, partition)]["end_offset"]
        )
        assert duplicates <= reread, (duplicates, moves, partitions)

        # Again while no monitor runs, and the new log grows past the stored
        # offsets before the monitor is back: only the topic's id tells.
        private_broker.stop()
        private_broker.start()
        env.create_topics(partitions=4)
        env.send_events(events(4000, seed=3))
        log = env.drain()
        with env.engine.connect() as conn:
            gaps = [
                tuple(r)
                for r in conn.execute(
                    text(
                        "SELECT topic, partition, kind, stored_offset, resumed_at, detail "
                        "FROM partition_gaps ORDER BY id"
                    )
                )
            ]
        # No monitor ran while the topics were recreated: nothing is read twice this time.
        assert env.counts() == (8000, 8000, duplicates), [
            (t.rsplit(".", 1)[-1], p, k, so, r, d[:22]) for t, p, k, so, r, d in gaps
        ]
        assert "topic recreated" in log
    finally:
        env.close()


@pytest.mark.postgres
@pytest.mark.slow
def test_postgres_connection_cut_mid_stream(broker, db_url):
    requires_postgres(db_url)
    env = Env(broker, db_url)
    forwarder = TcpForwarder((make_url(db_url).host, make_url(db_url).port or 5432))
    try:
        env.send_events(events(4000, seed=1))
        monitor = env.start_monitor(env=SMALL_BATCHES, db_url=through(forwarder, db_url))
        wait_mid_stream(env, monitor)
        retried = retried_through_the_fault(env, monitor)
        forwarder.cut()
        wait_for(retried, 90, "the monitor to fail and retry twice during the outage")
        forwarder.restore()
        wait_for(lambda: env.counts()[:2] == (4000, 4000), 120, "every event after the outage")
        stop_cleanly(env, monitor)
        assert env.counts() == (4000, 4000, 0)
    finally:
        forwarder.close()
        env.close()


@pytest.mark.slow
def test_sqlite_locked_longer_than_the_busy_timeout(broker, db_url):
    requires_sqlite(db_url)
    env = Env(broker, db_url)
    try:
        env.send_events(events(4000, seed=1))
        monitor = env.start_monitor(env=SMALL_BATCHES, db_url=db_url + "?timeout=1")
        wait_mid_stream(env, monitor)
        retried = retried_through_the_fault(env, monitor)
        locker = sqlite3.connect(make_url(db_url).database, isolation_level=None)
        locker.execute("BEGIN EXCLUSIVE")
        processed = "SELECT SUM(predictions) + SUM(labels) FROM model_stats"
        before = locker.execute(processed).fetchone()
        wait_for(retried, 60, "the monitor to run into the lock (1 s busy timeout) and retry twice")
        assert locker.execute(processed).fetchone() == before  # nothing got past the lock...
        locker.execute("ROLLBACK")
        locker.close()
        wait_for(lambda: env.counts()[:2] == (4000, 4000), 120, "every event after the lock")
        stop_cleanly(env, monitor)  # ...and the monitor waited instead of dying
        assert env.counts() == (4000, 4000, 0)
    finally:
        env.close()


@pytest.mark.postgres
@pytest.mark.slow
def test_one_of_two_monitors_killed_during_a_database_outage(broker, db_url):
    requires_postgres(db_url)
    env = Env(broker, db_url)
    forwarder = TcpForwarder((make_url(db_url).host, make_url(db_url).port or 5432))
    try:
        env.send_events(events(6000, seed=1, models=9))
        url = through(forwarder, db_url)
        first = env.start_monitor(env=SMALL_BATCHES, db_url=url)
        second = env.start_monitor(env=SMALL_BATCHES, db_url=url)
        wait_for(lambda: 0 < sum(env.counts()[:2]) < 12000, 60, "the monitors to be mid-stream")
        retried = retried_through_the_fault(env, second)
        forwarder.cut()
        first.send_signal(signal.SIGKILL)
        first.wait()
        wait_for(retried, 90, "the survivor to fail and retry twice during the outage")
        forwarder.restore()
        wait_for(lambda: env.counts()[:2] == (6000, 6000), 180, "the survivor to take over every partition")
        stop_cleanly(env, second)
        assert env.counts() == (6000, 6000, 0)
    finally:
        forwarder.close()
        env.close()


# -- PostgreSQL restarts and advisory locks (issue 29, points 6 and 7) -------------------------------------------


def restart(forwarder: TcpForwarder) -> None:
    """A PostgreSQL restart as its clients see it: every open connection dies, new ones work again."""
    forwarder.cut()
    forwarder.restore()


def lock_is_free(db_url: str, key: int) -> bool:
    """Whether another session can take advisory lock ``key`` (asked on a direct connection, then given back)."""
    direct = create_engine(db_url)
    try:
        with direct.connect() as conn:
            got = conn.execute(text("SELECT pg_try_advisory_lock(:k)"), {"k": key}).scalar()
            if got:
                conn.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": key})
            return bool(got)
    finally:
        direct.dispose()


def train_v1_on_stationary_pairs(env: Env) -> None:
    """Champion version 1 of ``housing`` (the CLI's ``train``), then 3,000 labelled pairs joined by a monitor."""
    data = Path(tempfile.mkdtemp()) / "train.csv"
    write_training_csv(SampleStream(seed=2), data, 4000)
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "undertow.worker.cli",
            "--log-level",
            "WARNING",
            "train",
            "--model-id",
            "housing",
            "--data",
            str(data),
            "--target",
            "target",
            "--time-column",
            "ts",
            *env.cli_args(),
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    env.send_events(list(SampleStream(seed=6).events(3000)))
    env.drain(idle=2.0)


class RestartsDuringClaims:
    """Restarts PostgreSQL (through ``forwarder``) during the first two claims of run lock ``key``.

    The first claim meets the restart just before it takes the run's lock:
    the claim's connection is dead, the lock's is new and lives (the lock
    leaked here before issue 29). The second meets it at the claim's
    commit, after its lock is taken: both connections die. ``claims`` has
    the time (monotonic) at which each claim of the run went for its lock.
    """

    def __init__(self, forwarder: TcpForwarder, key: int, engine, monkeypatch):
        self.forwarder, self.key = forwarder, key
        self.claims: list[float] = []
        self._acquire = RunLock.acquire
        # A function, not the bound method: as a class attribute it is bound to each lock in turn.
        monkeypatch.setattr(RunLock, "acquire", lambda lock: self._acquire_after_restart(lock))
        event.listen(engine, "before_cursor_execute", self._mark_claim)
        event.listen(engine, "commit", self._restart_at_claim_commit)

    def _acquire_after_restart(self, lock: RunLock) -> bool:
        if lock.key == self.key:
            self.claims.append(time.monotonic())
            if len(self.claims) == 1:
                restart(self.forwarder)
        return self._acquire(lock)

    def _mark_claim(self, conn, cursor, statement, parameters, context, executemany) -> None:
        if len(self.claims) == 2 and statement.startswith("UPDATE training_runs"):
            conn.info["claim"] = True  # the session's connection: its commit is the claim's

    def _restart_at_claim_commit(self, conn) -> None:
        if conn.info.pop("claim", False):
            restart(self.forwarder)


@pytest.mark.postgres
@pytest.mark.slow
def test_postgres_restarted_while_the_trainer_claims_a_run(broker, db_url, monkeypatch, caplog):
    """Issue 29, point 6: PostgreSQL restarts during two claims of a run (``RestartsDuringClaims``). Each
    failed claim gives its lock back and the trainer backs off (1 s, then 2 s) instead of trying again at
    once; the third claim trains the run: it ends once, and its lock is free afterwards. (Before the fix the
    first claim's lock stayed held on its live connection and the trainer re-read the run's pairs about five
    times a second, finding the run "taken" each time: 570 times in 120 s, the run never ended.)"""
    requires_postgres(db_url)
    caplog.set_level(logging.INFO, logger="undertow.worker.trainer.training")
    env = Env(broker, db_url)
    forwarder = TcpForwarder((make_url(db_url).host, make_url(db_url).port or 5432))
    stop = threading.Event()
    thread = worker = None
    try:
        train_v1_on_stationary_pairs(env)
        request_id = f"r-restart-{uuid.uuid4().hex[:8]}"  # the lock's key is database-wide: unique per test run
        run_id = runs.run_id_for(request_id)
        with db.make_session_factory(env.engine).begin() as session:
            runs.new_run(
                session,
                run_id=run_id,
                model_id="housing",
                champion_version="1",
                request_id=request_id,
                trigger={
                    "reason": "operator",
                    "alert_ids": ["manual"],
                    "data_policy": {"kind": "all"},
                    "change_at": None,
                },
            )
        worker = TrainingWorker(
            load_settings(
                {
                    "kafka_bootstrap_servers": env.bootstrap,
                    "db_url": through(forwarder, db_url),
                    "topic_prefix": env.prefix,
                    "group_id": env.group_id + "-trainer",
                    "artifacts_dir": str(env.artifacts_dir),
                    "min_train_pairs": 500,
                    "gate_min_holdout": 300,
                },
                TrainerSettings,
            )
        )
        key = RunLock(worker.engine, run_id).key
        faults = RestartsDuringClaims(forwarder, key, worker.engine, monkeypatch)
        thread = threading.Thread(target=worker.run, args=(stop,), daemon=True)
        thread.start()

        def reads() -> int:  # the claims that read the run's pairs
            return sum("training a candidate" in r.getMessage() for r in caplog.records)

        attempts = "SELECT attempts FROM training_runs WHERE run_id = :r"
        try:
            wait_for(
                lambda: (
                    not thread.is_alive()
                    or env.scalar(
                        "SELECT status FROM training_runs WHERE run_id = :r AND status IN ('promoted', 'rejected')",
                        r=run_id,
                    )
                ),
                120,
                "the run to end",
            )
        except AssertionError as timed_out:
            raise AssertionError(
                f"{timed_out}: {len(faults.claims)} claims, {reads()} reads of the pairs, "
                f"attempts {env.scalar(attempts, r=run_id)}, lock free: {lock_is_free(db_url, key)}"
            ) from None
        assert thread.is_alive(), "the training thread ended (its exception is in the log)"
        stop.set()
        thread.join(timeout=60)
        assert not thread.is_alive()
        gaps = [later - earlier for earlier, later in zip(faults.claims, faults.claims[1:])]
        print(f"{len(faults.claims)} claims, gaps {[round(g, 2) for g in gaps]} s, {reads()} reads of the pairs")
        assert len(faults.claims) == 3, faults.claims  # two failed claims, one that trained
        assert gaps[0] >= 0.95 and gaps[1] >= 1.95, gaps  # backed off, 1 s then 2 s, instead of spinning
        assert env.scalar(attempts, r=run_id) == 1  # only the third claim committed: trained once
        assert env.scalar("SELECT count(*) FROM model_versions") == 2  # v1 and one candidate: one decision
        assert len(env.read_all(env.topics.models, 2, timeout=5)) == 1  # one model event
        assert lock_is_free(db_url, key)  # while the worker's engine and its connections are still open
    finally:
        stop.set()
        if thread is not None:
            thread.join(timeout=60)
        if worker is not None:
            worker.engine.dispose()
        forwarder.close()
        env.close()


@pytest.mark.postgres
def test_database_metrics_exported_by_one_monitor_after_a_postgres_restart(db_url):
    """Issue 29, point 7: two collectors of the same database, one behind a link that is cut and restored.
    The one whose lock connection died stops exporting, the other takes the lock; after the restore the
    first does not export on its dead lock (it tries the lock and finds it taken), and it takes over when
    the other lets go. Once the lock has moved, exactly one of them exports at every scrape. (Before the
    fix both exported after the restore.)"""
    requires_postgres(db_url)
    direct = db.make_engine(db_url)
    db.migrate(direct)
    forwarder = TcpForwarder((make_url(db_url).host, make_url(db_url).port or 5432))
    behind = db.make_engine(through(forwarder, db_url))
    # The exporter lock's key is database-wide, and other tests' monitors use this database: a key of the
    # test's own, the same for both collectors.
    key = random.randrange(1 << 40, 1 << 50)
    first, second = (DatabaseCollector(e, "monitor", "g", lambda keys: {}, []) for e in (behind, direct))
    first._lock_key = second._lock_key = key

    def exporting() -> list[bool]:
        return [any(True for _ in collector.collect()) for collector in (first, second)]

    try:
        assert exporting() == [True, False]  # the first to scrape takes the lock
        forwarder.cut()
        # Neither exports until the server has dropped the dead session, and with it its lock.
        wait_for(lambda: exporting() == [False, True], 30, "the second collector to take the lock")
        for _ in range(10):
            assert exporting() == [False, True]
        forwarder.restore()
        for _ in range(20):
            assert exporting() == [False, True]  # the first's old lock connection is dead: no export on it
        second.close()  # its process ends
        wait_for(lambda: exporting() == [True, False], 30, "the first collector to take the lock again")
        for _ in range(10):
            assert exporting() == [True, False]
    finally:
        first.close()
        second.close()
        behind.dispose()
        direct.dispose()
        forwarder.close()
