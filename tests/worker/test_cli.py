"""The command line as a user runs it: broker, topics, status."""

import json
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from kafka.admin import NewTopic

from tests.conftest import REPO, requires_sqlite, wait_for
from undertow.worker.dev.broker import free_port
from undertow.worker.runtime.transport import make_admin


def _cli(*args, timeout=60):
    return subprocess.run(
        [sys.executable, "-m", "undertow.worker.cli", *args], cwd=REPO, capture_output=True, text=True, timeout=timeout
    )


def test_broker_command_serves_and_stops_cleanly_on_sigterm():
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "undertow.worker.cli", "broker", "--port", str(port)],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        line = proc.stdout.readline()
        assert line.strip() == f"bootstrap servers: 127.0.0.1:{port}"
        topics = _cli("topics", "create", "--bootstrap-servers", f"127.0.0.1:{port}", "--partitions", "2")
        assert topics.returncode == 0, topics.stderr
        assert "undertow.predictions\t2 partitions" in topics.stdout
        again = _cli("topics", "create", "--bootstrap-servers", f"127.0.0.1:{port}", "--partitions", "5")
        assert again.returncode == 0 and "undertow.labels\t2 partitions" in again.stdout  # never changed
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=15) == 0


def test_topics_create_refuses_predictions_and_labels_that_are_not_co_partitioned(env):
    prefix = env.prefix.replace(".", "x.")
    admin = make_admin(env.settings)
    admin.create_topics([NewTopic(prefix + "predictions", 3, 1), NewTopic(prefix + "labels", 2, 1)])
    admin.close()
    done = _cli("topics", "create", "--bootstrap-servers", env.bootstrap, "--topic-prefix", prefix)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        f"undertow: error: {prefix}predictions has 3 partitions but {prefix}labels has 2: "
        "predictions and labels must be co-partitioned"
    ]


def test_status_reports_counts_offsets_and_lag(env):
    from undertow.worker.dev.sample import SampleStream

    env.send_events(SampleStream(seed=41).events(300))
    env.drain(idle=2.0)
    done = _cli("status", "--json", *env.cli_args())
    assert done.returncode == 0, done.stderr
    status = json.loads(done.stdout)
    (model,) = status["models"]
    assert (model["model_id"], model["predictions"], model["labels"]) == ("housing", 300, 300)
    assert model["registered"] is False  # the suite's monitors keep unregistered ids' events: marked
    stored = {(p["topic"], p["partition"]): p for p in status["partitions"]}
    # every partition of the input topics, read or not
    assert set(stored) == {(t, p) for t in (env.topics.predictions, env.topics.labels) for p in range(3)}
    assert sum(p["stored_offset"] or 0 for p in stored.values()) == 600
    assert all(p["lag"] == 0 for p in stored.values())
    (join,) = status["label_join"]
    assert join["joined"] == 300 and join["pending_predictions"] == 0
    text = _cli("status", *env.cli_args())
    assert text.returncode == 0 and "lag=0" in text.stdout


def test_monitor_without_a_reachable_broker_fails_with_one_line(tmp_path):
    done = _cli(
        "monitor",
        "--bootstrap-servers",
        f"127.0.0.1:{free_port()}",
        "--db-url",
        f"sqlite:///{tmp_path / 'x.db'}",
        timeout=120,
    )
    assert done.returncode == 2
    (line,) = done.stderr.strip().splitlines()  # the pre-flight probe: none of the Kafka client's retry lines
    assert line.startswith("undertow: error: no Kafka broker reachable") and "`undertow broker`" in line


def test_status_answers_quickly_and_quietly_with_the_broker_down(tmp_path):
    url = f"sqlite:///{tmp_path / 'state.db'}"
    from undertow.storage import db

    engine = db.make_engine(url)
    db.migrate(engine)
    engine.dispose()
    started = time.monotonic()
    done = _cli("--log-level", "WARNING", "status", "--db-url", url, "--bootstrap-servers", f"127.0.0.1:{free_port()}")
    assert time.monotonic() - started < 15  # ~3 s probe plus interpreter start-up
    assert done.returncode == 0, done.stderr
    (line,) = done.stderr.strip().splitlines()
    assert "broker unreachable" in line and "lag unknown" in line
    assert "models:" in done.stdout


@pytest.mark.parametrize("command", [["status"], ["alerts"], ["models", "list"], ["retrain", "list"]])
def test_reading_commands_refuse_a_missing_database_instead_of_creating_it(tmp_path, command):
    missing = tmp_path / "nowhere.db"
    done = _cli(*command, "--db-url", f"sqlite:///{missing}", "--bootstrap-servers", f"127.0.0.1:{free_port()}")
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        f"undertow: error: no database at {missing}: nothing has been recorded there yet "
        "(check --db-url / UNDERTOW_DB_URL)"
    ]
    assert not missing.exists()


@pytest.mark.parametrize("command", [["status"], ["db", "prune", "--dry-run"], ["alerts"]])
def test_reading_commands_refuse_a_database_that_is_not_undertows_and_leave_it_as_it_was(tmp_path, command):
    """Found by a trial: a dry run pointed at another application's database wrote Undertow's 28 tables there."""
    import sqlite3

    other = tmp_path / "other.db"
    with sqlite3.connect(other) as conn:
        conn.execute("CREATE TABLE foo (x)")
    done = _cli(*command, "--db-url", f"sqlite:///{other}", "--bootstrap-servers", f"127.0.0.1:{free_port()}")
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        f"undertow: error: no Undertow tables in sqlite:///{other}: nothing has been recorded there yet "
        "(check --db-url / UNDERTOW_DB_URL)"
    ]
    with sqlite3.connect(other) as conn:
        assert [name for (name,) in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")] == ["foo"]


def test_a_file_that_is_not_a_database_and_a_missing_driver_are_one_line_each(tmp_path):
    page = tmp_path / "report.html"
    page.write_text("<html></html>" * 100)
    not_db = _cli("status", "--db-url", f"sqlite:///{page}", "--bootstrap-servers", f"127.0.0.1:{free_port()}")
    assert (not_db.returncode, not_db.stderr.strip().splitlines()) == (
        2,
        ["undertow: error: database unavailable: file is not a database"],
    )
    no_driver = _cli("alerts", "--db-url", "mysql://user@127.0.0.1/db")
    assert no_driver.returncode == 2
    (line,) = no_driver.stderr.strip().splitlines()
    assert line.startswith("undertow: error: the database driver for mysql is not installed (No module named ")


def test_database_connection_errors_are_one_line(tmp_path):
    refused = _cli("alerts", "--db-url", f"postgresql+psycopg://postgres@127.0.0.1:{free_port()}/test")
    assert refused.returncode == 2
    (line,) = refused.stderr.strip().splitlines()
    assert line.startswith("undertow: error: database unavailable: ") and "refused" in line
    no_dir = _cli(
        "models",
        "register",
        "--model-id",
        "m",
        "--reference",
        str(REPO / "README.md"),
        "--no-target",
        "--db-url",
        f"sqlite:///{tmp_path / 'no' / 'such' / 'dir.db'}",
    )
    assert no_dir.returncode == 2 and len(no_dir.stderr.strip().splitlines()) == 1


def test_a_second_monitor_on_the_same_sqlite_file_is_refused(env):
    requires_sqlite(env.db_url)
    first = env.start_monitor(log_level="INFO")
    try:
        wait_for(
            lambda: first.poll() is not None or "assigned" in env.log_of(first, tail=100_000),
            60,
            "the first monitor to be assigned its partitions",
        )
        second = subprocess.run(
            [sys.executable, "-m", "undertow.worker.cli", "monitor", *env.cli_args()],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert second.returncode == 2
        (line,) = second.stderr.strip().splitlines()
        assert "another monitor already runs on" in line and "use PostgreSQL" in line
        assert first.poll() is None
    finally:
        first.send_signal(signal.SIGTERM)
        assert first.wait(timeout=30) == 0


def test_a_broker_killed_with_sigkill_takes_its_tansu_process_with_it():
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "undertow.worker.cli", "broker", "--port", str(port)],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout.readline().strip() == f"bootstrap servers: 127.0.0.1:{port}"
        children = Path(f"/proc/{proc.pid}/task/{proc.pid}/children").read_text().split()
        (tansu,) = [int(pid) for pid in children]
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        wait_for(
            lambda: not Path(f"/proc/{tansu}").exists() or "Z" in _state(tansu),
            15,
            "the orphaned broker binary to exit",
        )
        with pytest.raises(OSError):
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
    finally:
        if proc.poll() is None:
            proc.kill()


def _state(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0]
    except OSError:
        return "gone"


def test_drift_rule_flags_come_from_the_configuration_model():
    from undertow.models.drift.config import DriftConfig
    from undertow.worker.cli import build_parser
    from undertow.worker.cli.drift_flags import drift_config_from

    args = build_parser().parse_args(
        [
            "models",
            "register",
            "--model-id",
            "m",
            "--reference",
            "r.csv",
            "--window-size",
            "500",
            "--no-retrain-on-data-drift",
            "--retrain-data-policy",
            "all",
            "--psi-significant",
            "0.3",
        ]
    )
    config = drift_config_from(args)
    assert config == DriftConfig(
        window_size=500, retrain_on_data_drift=False, retrain_data_policy="all", psi_significant=0.3
    )
    register = _cli("models", "register", "--help").stdout
    for name, field in DriftConfig.model_fields.items():  # every rule has its flag and help
        flag = ("--no-" if field.default is True else "--") + name.replace("_", "-")
        assert flag in register and field.description.split()[0] in register
    bad = _cli("models", "register", "--model-id", "m", "--reference", "r.csv", "--psi-moderate", "0.5")
    assert (bad.returncode, bad.stderr.strip()) == (2, "undertow: error: psi_significant must be at least psi_moderate")
    small = _cli("models", "register", "--model-id", "m", "--reference", "r.csv", "--window-size", "5")
    assert small.stderr.strip() == "undertow: error: --window-size: Input should be greater than or equal to 50"
    choice = _cli("models", "register", "--model-id", "m", "--reference", "r.csv", "--retrain-data-policy", "x")
    assert choice.returncode == 2 and "invalid choice: 'x'" in choice.stderr


def test_a_normal_exit_prints_no_client_errors(env):
    from undertow.worker.dev.sample import SampleStream

    env.send_events(SampleStream(seed=42).events(200))
    done = _cli("monitor", "--until-idle", "2", *env.cli_args(), timeout=120)
    assert done.returncode == 0, done.stderr
    assert "every input partition is consumed: exiting" in done.stderr
    assert [line for line in done.stderr.splitlines() if " ERROR " in line or "Traceback" in line] == []


def test_status_lists_a_registered_model_that_has_sent_no_events_yet(env):
    """Right after `models register`, before its producer is wired up: the model shows, with no events."""
    from undertow.worker.dev.sample import SampleStream

    env.register_reference(SampleStream(seed=42), model_id="bc")
    status = json.loads(_cli("status", "--json", *env.cli_args()).stdout)
    assert status["models"] == [
        {
            "model_id": "bc",
            "registered": True,
            "predictions": 0,
            "labels": 0,
            "duplicates": 0,
            "first_event_ts": None,
            "last_event_ts": None,
        }
    ]
    done = _cli("status", *env.cli_args())
    assert done.returncode == 0, done.stderr
    assert "  model_id=bc  registered, no events yet" in done.stdout.splitlines(), done.stdout
