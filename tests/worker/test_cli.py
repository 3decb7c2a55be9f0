"""The command line as a user runs it: broker, topics, status."""
import json
import signal
import subprocess
import sys

from kafka.admin import NewTopic

from tests.conftest import REPO, wait_for
from worker.broker import free_port
from worker.transport import make_admin


def _cli(*args, timeout=60):
    return subprocess.run([sys.executable, "-m", "worker.cli", *args], cwd=REPO, capture_output=True, text=True,
                          timeout=timeout)


def test_broker_command_serves_and_stops_cleanly_on_sigterm():
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "worker.cli", "broker", "--port", str(port)], cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
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
        "predictions and labels must be co-partitioned"]


def test_status_reports_counts_offsets_and_lag(env):
    from worker.sample import SampleStream
    env.send_events(SampleStream(seed=41).events(300))
    env.drain(idle=2.0)
    done = _cli("status", "--json", *env.cli_args())
    assert done.returncode == 0, done.stderr
    status = json.loads(done.stdout)
    (model,) = status["models"]
    assert (model["model_id"], model["predictions"], model["labels"]) == ("housing", 300, 300)
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
    done = _cli("monitor", "--bootstrap-servers", f"127.0.0.1:{free_port()}", "--db-url",
                f"sqlite:///{tmp_path / 'x.db'}", timeout=120)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines()[-1].startswith("undertow: error: no Kafka broker reachable")
