import subprocess
import sys

import pytest

from storage.errors import ConfigError
from tests.conftest import REPO
from worker.settings import load_settings


def test_environment_then_flags():
    env = {"UNDERTOW_DB_URL": "sqlite:///x.db", "UNDERTOW_TOPIC_PREFIX": "a.",
           "UNDERTOW_KAFKA_SECURITY_PROTOCOL": "SASL_SSL", "UNDERTOW_MAX_EVENT_BYTES": "4096"}
    settings = load_settings({"topic_prefix": "b.", "db_url": None}, environ=env)
    assert settings.db_url == "sqlite:///x.db"
    assert settings.topic_prefix == "b."
    assert settings.max_event_bytes == 4096
    assert settings.kafka_options == {"security_protocol": "SASL_SSL"}
    assert settings.group_for("monitor") == "undertow-monitor"
    with pytest.raises(Exception):
        settings.db_url = "changed"  # frozen


@pytest.mark.parametrize("overrides, fragment", [
    ({"kafka_bootstrap_servers": "localhost"}, "not host:port"),
    ({"kafka_bootstrap_servers": "127.0.0.1:99999"}, "not host:port"),
    ({"db_url": "::::"}, "DB_URL"),
    ({"topic_prefix": "bad prefix!"}, "TOPIC_PREFIX"),
])
def test_bad_settings_are_one_line_config_errors(overrides, fragment):
    with pytest.raises(ConfigError) as info:
        load_settings(overrides, environ={})
    assert fragment in str(info.value) and "\n" not in str(info.value)


@pytest.mark.parametrize("flags", [["--bootstrap-servers", "nohostport"], ["--db-url", "::::"]])
def test_cli_reports_bad_settings_in_one_line(flags):
    proc = subprocess.run([sys.executable, "-m", "worker.cli", "monitor", *flags], cwd=REPO,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("undertow: error: invalid settings"), proc.stderr
