"""docker-compose.yml, checked by parsing it (no Docker daemon here): every UNDERTOW_ variable it sets is
accepted by the settings of the service that reads it, every command exists in the CLI, and the start-up
order holds (topics before the services, health checks behind every condition)."""
import shlex
from pathlib import Path

import pytest
import yaml

from worker.cli import build_parser
from worker.runtime.settings import MonitorSettings, ServerSettings, TrainerSettings, load_settings

REPO = Path(__file__).resolve().parent.parent
SETTINGS = {"monitor": MonitorSettings, "trainer": TrainerSettings, "serve": ServerSettings}


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load((REPO / "docker-compose.yml").read_text())


def _undertow_services(compose):
    return {name: s for name, s in compose["services"].items() if s.get("build") == "."}


def test_the_undertow_services_run_cli_commands_that_exist_with_settings_that_are_accepted(compose, monkeypatch):
    services = _undertow_services(compose)
    assert set(services) == {"monitor", "trainer", "server"}
    parser = build_parser()
    for name, service in services.items():
        command = service["command"] if isinstance(service["command"], list) else shlex.split(service["command"])
        args = parser.parse_args(command)  # exits (fails the test) on an unknown command or flag
        cls = SETTINGS[command[0]]
        env = {k: str(v) for k, v in service["environment"].items()}
        assert all(k.startswith("UNDERTOW_") for k in env), env
        unknown = [k for k in env if k.removeprefix("UNDERTOW_").lower() not in cls.model_fields]
        assert unknown == [], f"{name}: {unknown} are not settings of {cls.__name__}"
        for key, value in env.items():
            monkeypatch.setenv(key, value)
        settings = load_settings({}, cls)
        assert settings.db_url.startswith("postgresql+psycopg://") and settings.kafka_bootstrap_servers == "kafka:9092"
        for key in env:
            monkeypatch.delenv(key)
        assert args.func is not None
        assert service["restart"] == "unless-stopped" and "healthcheck" in service


def test_start_up_order_waits_for_healthy_dependencies_and_the_topics(compose):
    services = compose["services"]
    for name, service in services.items():
        for dependency, rule in (service.get("depends_on") or {}).items():
            assert dependency in services, (name, dependency)
            if rule["condition"] == "service_healthy":
                assert "healthcheck" in services[dependency], dependency
            elif rule["condition"] == "service_completed_successfully":
                assert services[dependency]["restart"] == "no", dependency
    for name in ("monitor", "trainer", "server"):
        assert services[name]["depends_on"]["kafka-init"]["condition"] == "service_completed_successfully"
        assert "artifacts:/var/lib/undertow/artifacts" in services[name]["volumes"]
    kafka = services["kafka"]["environment"]
    assert kafka["KAFKA_PROCESS_ROLES"] == "broker,controller" and kafka["KAFKA_OFFSETS_TOPIC_REPLICATION_FACTOR"] == 1
    assert kafka["KAFKA_AUTO_CREATE_TOPICS_ENABLE"] == "false"
    script = services["kafka-init"]["command"][0]
    for topic in ("predictions", "labels", "retrain", "models", "alerts", "predictions.DLT", "labels.DLT"):
        assert f" {topic} " in f" {script.split('for topic in ')[1].split(';')[0]} ", topic
    assert (REPO / "Dockerfile").read_text().count("ENTRYPOINT [\"undertow\"]") == 1
