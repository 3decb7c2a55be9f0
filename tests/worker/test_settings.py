import os
import subprocess
import sys

import pytest
from pydantic import ValidationError

from tests.conftest import REPO
from undertow.errors import ConfigError
from undertow.worker.runtime.settings import MonitorSettings, Settings, load_settings


@pytest.fixture
def clean_env(monkeypatch, tmp_path):
    """No UNDERTOW_* variables and no .env file but the test's own."""
    import os

    for name in list(os.environ):
        if name.startswith("UNDERTOW_"):
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)
    return monkeypatch


def test_environment_then_flags(clean_env):
    for name, value in {
        "UNDERTOW_DB_URL": "sqlite:///x.db",
        "UNDERTOW_TOPIC_PREFIX": "a.",
        "UNDERTOW_KAFKA_SECURITY_PROTOCOL": "SASL_SSL",
        "UNDERTOW_MAX_EVENT_BYTES": "4096",
        "UNDERTOW_KAFKA_SSL_CHECK_HOSTNAME": "false",
    }.items():
        clean_env.setenv(name, value)
    settings = load_settings({"topic_prefix": "b.", "db_url": None}, MonitorSettings)
    assert settings.db_url == "sqlite:///x.db"
    assert settings.topic_prefix == "b."
    assert settings.max_event_bytes == 4096
    assert settings.kafka_options == {"security_protocol": "SASL_SSL", "ssl_check_hostname": False}
    assert settings.group_for("monitor") == "undertow-monitor"
    with pytest.raises(ValidationError, match="frozen"):
        settings.db_url = "changed"


def test_passwords_are_secrets_and_a_dotenv_file_is_read(clean_env, tmp_path):
    (tmp_path / ".env").write_text("UNDERTOW_KAFKA_SASL_PLAIN_PASSWORD=hunter2\nUNDERTOW_GROUP_ID=from-dotenv\n")
    settings = load_settings({}, Settings)
    assert settings.group_id == "from-dotenv"
    assert "hunter2" not in repr(settings) and "hunter2" not in str(settings.model_dump())
    assert settings.kafka_options["sasl_plain_password"] == "hunter2"  # only where the client needs it


@pytest.mark.parametrize(
    "overrides, fragment",
    [
        ({"kafka_bootstrap_servers": "localhost"}, "not host:port"),
        ({"kafka_bootstrap_servers": "127.0.0.1:99999"}, "not host:port"),
        ({"db_url": "::::"}, "DB_URL"),
        ({"topic_prefix": "bad prefix!"}, "TOPIC_PREFIX"),
        ({"kafka_security_protocol": "TLS"}, "UNDERTOW_KAFKA_SECURITY_PROTOCOL"),
    ],
)
def test_bad_settings_are_one_line_config_errors(clean_env, overrides, fragment):
    with pytest.raises(ConfigError) as info:
        load_settings(overrides)
    assert fragment in str(info.value) and "\n" not in str(info.value)


@pytest.mark.parametrize("flags", [["--bootstrap-servers", "nohostport"], ["--db-url", "::::"]])
def test_cli_reports_bad_settings_in_one_line(flags):
    proc = subprocess.run(
        [sys.executable, "-m", "undertow.worker.cli", "monitor", *flags],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("undertow: error: invalid settings"), proc.stderr


def test_a_misspelt_variable_is_named_with_the_setting_meant_and_the_users_own_are_not(clean_env, tmp_path, caplog):
    clean_env.setenv("UNDERTOW_RETAIN_WINDOWS", "86400")  # cut short: ..._SECONDS
    clean_env.setenv("UNDERTOW_BATCH_MAX_RECORD", "100")  # a letter off
    clean_env.setenv("UNDERTOW_SLACK_WEBHOOK", "https://hooks.example/x")  # a notify file's own variable
    clean_env.setenv("UNDERTOW_DB_URL", "sqlite:///x.db")
    (tmp_path / ".env").write_text("UNDERTOW_PAIR_RETENTION=1000\n")
    with caplog.at_level("WARNING", logger="undertow.worker.runtime.settings"):
        settings = load_settings({}, MonitorSettings)
        load_settings({}, MonitorSettings)  # named once per process
    assert settings.retain_windows_seconds == 30 * 86400  # the default stayed in force: hence the warning
    named = [record.getMessage() for record in caplog.records]
    assert named == [
        "UNDERTOW_BATCH_MAX_RECORD is not a setting of any Undertow command and is ignored; "
        "did you mean UNDERTOW_BATCH_MAX_RECORDS?",
        "UNDERTOW_PAIR_RETENTION is not a setting of any Undertow command and is ignored; "
        "did you mean UNDERTOW_PAIRS_RETENTION?",
        "UNDERTOW_RETAIN_WINDOWS is not a setting of any Undertow command and is ignored; "
        "did you mean UNDERTOW_RETAIN_WINDOWS_SECONDS?",
    ]


def test_the_cli_names_a_misspelt_variable_on_stderr(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("UNDERTOW_")}
    env["UNDERTOW_SPREAD_MERGE_WAIT"] = "60"
    proc = subprocess.run(
        [sys.executable, "-m", "undertow.worker.cli", "status", "--db-url", f"sqlite:///{tmp_path / 'none.db'}"],
        cwd=tmp_path,
        env={**env, "PYTHONPATH": str(REPO)},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert "UNDERTOW_SPREAD_MERGE_WAIT is not a setting" in proc.stderr
    assert "did you mean UNDERTOW_SPREAD_MERGE_WAIT_SECONDS?" in proc.stderr
