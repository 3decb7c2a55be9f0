"""docker-compose.yml, checked by parsing it (no Docker daemon here): every UNDERTOW_ variable it sets is
accepted by the settings of the service that reads it, every command exists in the CLI, the start-up
order holds (topics before the services, health checks behind every condition), and every Undertow
service gets a signing key that compose refuses to go without."""

import re
import shlex
from pathlib import Path

import pytest
import yaml

from undertow.worker.cli import build_parser
from undertow.worker.runtime.settings import (
    MonitorSettings,
    NotifySettings,
    ServerSettings,
    TrainerSettings,
    load_settings,
)

REPO = Path(__file__).resolve().parent.parent
SETTINGS = {
    "monitor": MonitorSettings,
    "trainer": TrainerSettings,
    "serve": ServerSettings,
    "notify": NotifySettings,
}


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load((REPO / "docker-compose.yml").read_text())


def _undertow_services(compose):
    return {name: s for name, s in compose["services"].items() if s.get("build") == "."}


class MissingVariable(Exception):
    """What compose does with ${NAME:?message} when NAME is unset or empty: refuse, with the message."""


_VARIABLE = re.compile(r"\$\$|\$\{(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?:(?P<op>:\?|:-)(?P<arg>[^}]*))?\}")


def _interpolate(value: str, environ: dict[str, str]) -> str:
    """Compose's interpolation of ${NAME}, ${NAME:-default}, ${NAME:?message} and $$ (the forms used here)."""

    def substitute(match: re.Match) -> str:
        if match.group(0) == "$$":
            return "$"
        name, op, arg = match.group("name", "op", "arg")
        given = environ.get(name, "")
        if op == ":?" and not given:
            raise MissingVariable(f"{name}: {arg}")
        return given or (arg if op == ":-" else "")

    return _VARIABLE.sub(substitute, value)


def test_the_undertow_services_run_cli_commands_that_exist_with_settings_that_are_accepted(compose, monkeypatch):
    services = _undertow_services(compose)
    assert set(services) == {"monitor", "trainer", "server", "notify"}
    parser = build_parser()
    for name, service in services.items():
        command = service["command"] if isinstance(service["command"], list) else shlex.split(service["command"])
        args = parser.parse_args(command)  # exits (fails the test) on an unknown command or flag
        cls = SETTINGS[command[0]]
        env = {
            k: _interpolate(str(v), {"UNDERTOW_SIGNING_KEY": "a-test-key"}) for k, v in service["environment"].items()
        }
        assert all(k.startswith("UNDERTOW_") for k in env), env
        unknown = [k for k in env if k.removeprefix("UNDERTOW_").lower() not in cls.model_fields]
        assert unknown == [], f"{name}: {unknown} are not settings of {cls.__name__}"
        for key, value in env.items():
            monkeypatch.setenv(key, value)
        settings = load_settings({}, cls)
        assert settings.db_url.startswith("postgresql+psycopg://") and settings.kafka_bootstrap_servers == "kafka:9092"
        assert settings.signing_key is not None and settings.signing_key.get_secret_value() == "a-test-key"
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
    assert (REPO / "Dockerfile").read_text().count('ENTRYPOINT ["undertow"]') == 1


def test_every_undertow_service_gets_the_signing_key_and_compose_refuses_to_start_without_one(compose):
    services = _undertow_services(compose)
    assert set(services) == {"monitor", "trainer", "server", "notify"}
    for name, service in services.items():
        value = str(service["environment"].get("UNDERTOW_SIGNING_KEY", ""))
        # The key comes from the user's environment or .env, never from this file (it would be the same
        # key in every deployment), and the same variable for all: they must share one key.
        assert value.startswith("${UNDERTOW_SIGNING_KEY:?"), (name, value)
        assert _interpolate(value, {"UNDERTOW_SIGNING_KEY": "k" * 64}) == "k" * 64
        for unset in ({}, {"UNDERTOW_SIGNING_KEY": ""}):
            with pytest.raises(MissingVariable, match="UNDERTOW_SIGNING_KEY: set it in .env"):
                _interpolate(value, unset)
    # The other services need no key: giving it to them would only spread the secret.
    for name, service in compose["services"].items():
        if name not in services:
            assert "UNDERTOW_SIGNING_KEY" not in (service.get("environment") or {}), name
    header = (REPO / "docker-compose.yml").read_text().split("\nx-undertow:")[0]
    assert "UNDERTOW_SIGNING_KEY=$(openssl rand -hex 32)" in header  # the comment says how to make one


# --- the operations services: Prometheus, Alertmanager, Grafana (ops/, docs/operations.md) ---------------------

OPS = ("prometheus", "alertmanager", "grafana")


def _mounts(service: dict) -> dict[str, Path]:
    """Container path -> repository path of the service's bind mounts of files in this repository."""
    mounts = {}
    for volume in service.get("volumes", []):
        source, target = volume.split(":")[:2]
        if source.startswith("./"):
            mounts[target] = REPO / source
    return mounts


def _published(service: dict) -> set[int]:
    return {int(str(port).split(":")[-1]) for port in service.get("ports", [])}


def _listens_on(service: dict) -> int:
    """The port an Undertow service serves /metrics on: --metrics-port (monitor, trainer) or --port (serve)."""
    command = service["command"]
    flag = "--port" if command[0] == "serve" else "--metrics-port"
    return int(command[command.index(flag) + 1])


def test_the_operations_services_are_pinned_healthy_and_mount_files_that_exist(compose):
    services = compose["services"]
    for name in OPS:
        service = services[name]
        image = service["image"]
        assert ":" in image and not image.endswith(":latest"), image  # a pinned release
        assert service["restart"] == "unless-stopped" and "healthcheck" in service, name
        assert "build" not in service and "UNDERTOW_SIGNING_KEY" not in (service.get("environment") or {})
        mounts = _mounts(service)
        assert mounts, name
        for target, source in mounts.items():
            assert source.exists(), f"{name} mounts {source} at {target}: not in the repository"
        assert all(v.endswith(":ro") for v in service["volumes"] if v.startswith("./")), name  # read-only config
        for volume in service["volumes"]:
            if not volume.startswith("./"):
                assert volume.split(":")[0] in compose["volumes"], volume


def test_prometheus_scrapes_the_ports_the_undertow_services_expose_and_loads_the_shipped_rules(compose):
    services = compose["services"]
    mounts = _mounts(services["prometheus"])
    config_path = next(
        arg.split("=", 1)[1] for arg in services["prometheus"]["command"] if arg.startswith("--config.file=")
    )
    config = yaml.safe_load(mounts[config_path].read_text())
    targets = {
        job["job_name"]: [t for static in job["static_configs"] for t in static["targets"]]
        for job in config["scrape_configs"]
    }
    # `undertow notify` joins compose later: from then on it must be scraped too, as the job its rules name.
    scraped = ["monitor", "trainer", "server"] + (["notify"] if "notify" in services else [])
    for name in scraped:
        job, service = f"undertow-{name}", services[name]
        port = _listens_on(service)
        assert targets[job] == [f"{name}:{port}"], (job, targets[job], port)
        assert port in _published(service), (name, port)
        if name != "server":  # the serving endpoint listens on --host 0.0.0.0; the others by this variable
            assert service["environment"]["UNDERTOW_METRICS_HOST"] == "0.0.0.0", name
        else:
            assert service["command"][service["command"].index("--host") + 1] == "0.0.0.0"
    # The rule file, by its path relative to the configuration inside the container, is the shipped one.
    for rule_file in config["rule_files"]:
        in_container = str(Path(config_path).parent / rule_file)
        assert mounts[in_container] == REPO / "ops/prometheus/undertow-rules.yml", rule_file
    alertmanagers = [
        target for am in config["alerting"]["alertmanagers"] for s in am["static_configs"] for target in s["targets"]
    ]
    assert alertmanagers == ["alertmanager:9093"] and 9093 in _published(services["alertmanager"])
    am_config = next(a.split("=", 1)[1] for a in services["alertmanager"]["command"] if a.startswith("--config.file="))
    assert _mounts(services["alertmanager"])[am_config] == REPO / "ops/alertmanager/alertmanager.yml"


def test_grafana_is_provisioned_with_the_prometheus_datasource_and_the_dashboard(compose):
    grafana = compose["services"]["grafana"]
    mounts = _mounts(grafana)
    provisioning = mounts["/etc/grafana/provisioning"]
    datasources = yaml.safe_load((provisioning / "datasources" / "prometheus.yml").read_text())["datasources"]
    assert [d["url"] for d in datasources] == ["http://prometheus:9090"]
    assert 9090 in _published(compose["services"]["prometheus"])
    provider = yaml.safe_load((provisioning / "dashboards" / "undertow.yml").read_text())["providers"][0]
    dashboards = mounts[provider["options"]["path"]]
    assert (dashboards / "undertow.json").is_file()


def test_notify_in_compose_loads_its_shipped_rules_and_sends_drift_alerts_to_compose_s_alertmanager(compose):
    from undertow.worker.notify.config import load_config

    notify = compose["services"]["notify"]
    mount = next(v for v in notify["volumes"] if v.endswith(":/etc/undertow/notify.yml:ro"))
    config = load_config(REPO / mount.split(":")[0].removeprefix("./"), environ={})
    (sink,) = config.sinks  # the commented Slack sink needs SLACK_WEBHOOK_URL, so it is not on by default
    assert sink.alertmanager is not None and sink.alertmanager.url == "http://alertmanager:9093"
    assert (
        "alertmanager" in compose["services"] and notify["depends_on"]["alertmanager"]["condition"] == "service_healthy"
    )
