"""The shipped alert rules and Alertmanager configuration, checked by their own tools: ``promtool check rules``,
the unit tests of ``promtool test rules`` (ops/prometheus/undertow-rules.test.yml) and ``amtool check-config``;
and by reading them: every alert has a severity the routing knows, a summary, a description and a runbook
section in docs/operations.md, and a unit test that makes it fire."""

from __future__ import annotations

import re
import subprocess

import yaml

from tests.conftest import REPO
from tests.ops.conftest import ALERTMANAGER_CONFIG, RULE_TESTS, RULES, binary
from tests.test_docs_links import anchors

OPERATIONS = REPO / "docs" / "operations.md"


def _run(*command: str) -> str:
    done = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout + done.stderr


def _alerts() -> list[dict]:
    return [rule for group in yaml.safe_load(RULES.read_text())["groups"] for rule in group["rules"]]


def test_promtool_checks_the_rules_and_their_unit_tests_pass():
    promtool = binary("promtool")
    assert f"SUCCESS: {len(_alerts())} rules found" in _run(promtool, "check", "rules", str(RULES))
    assert "SUCCESS" in _run(promtool, "test", "rules", str(RULE_TESTS))


def test_amtool_accepts_the_alertmanager_configuration_and_its_slack_variant(tmp_path):
    amtool = binary("amtool")
    _run(amtool, "check-config", str(ALERTMANAGER_CONFIG))
    # The Slack receiver the configuration shows in a comment, uncommented, is valid too.
    text = ALERTMANAGER_CONFIG.read_text()
    slack = re.sub(r"(?m)^(\s*)# ?(slack_configs:|  - api_url_file|    \w+:)", r"\1\2", text)
    assert slack.count("slack_configs:") == 1 and "api_url_file" in slack
    variant = tmp_path / "alertmanager-slack.yml"
    variant.write_text(slack)
    _run(amtool, "check-config", str(variant))


def test_a_significant_drift_from_notify_pages_like_a_critical_rule_and_a_moderate_one_warns():
    """`undertow notify` labels its drift alerts with the drift's severity, and they silence the rules'
    episode alerts of their model (critical included): a significant one must reach the critical receiver
    (it went to the default, warning, so the page was lost)."""
    amtool = binary("amtool")

    def receiver(*labels: str) -> str:
        command = [amtool, "config", "routes", "test", f"--config.file={ALERTMANAGER_CONFIG}", *labels]
        done = subprocess.run(command, capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stderr
        return done.stdout.strip()  # stderr: amtool's note that the file overrides --alertmanager.url

    assert receiver("alertname=UndertowConceptDrift", "model_id=churn", "severity=significant") == "undertow-critical"
    assert receiver("alertname=UndertowDataDrift", "model_id=churn", "severity=moderate") == "undertow-warning"
    assert receiver("alertname=UndertowDriftEpisodeSignificant", "model_id=churn", "severity=critical") == (
        "undertow-critical"
    )
    assert receiver("alertname=UndertowMonitorDown", "severity=warning") == "undertow-warning"


def test_every_alert_has_a_severity_a_summary_and_a_runbook_section_and_a_unit_test_that_fires_it():
    sections = anchors(OPERATIONS)
    tests = yaml.safe_load(RULE_TESTS.read_text())["tests"]
    fired = {case["alertname"] for test in tests for case in test.get("alert_rule_test", []) if case.get("exp_alerts")}
    silent = {
        case["alertname"] for test in tests for case in test.get("alert_rule_test", []) if not case.get("exp_alerts")
    }
    names = [rule["alert"] for rule in _alerts()]
    assert len(names) == len(set(names))
    for rule in _alerts():
        name = rule["alert"]
        assert rule["labels"]["severity"] in ("warning", "critical"), name
        assert set(rule["annotations"]) == {"summary", "description", "runbook"}, name
        page, anchor = rule["annotations"]["runbook"].split("#")
        assert page == "docs/operations.md" and anchor == name.lower(), name
        assert anchor in sections, f"{name}: docs/operations.md has no section #{anchor}"
        assert name in fired and name in silent, f"{name}: no unit test that fires it and one that does not"


def test_the_notify_rules_name_the_metrics_undertow_notify_exposes():
    exprs = " ".join(rule["expr"] for rule in _alerts())
    named = set(re.findall(r"undertow_notify_[a-z_]+", exprs))
    assert named == {
        "undertow_notify_deliveries_total",
        "undertow_notify_dead_letters",
        "undertow_notify_pending",
        "undertow_notify_delivery_duration_seconds_bucket",
    }
    outcomes = set(re.findall(r'outcome="([a-z_]+)"', exprs)) - {"promoted", "rejected"}
    assert outcomes <= {"delivered", "failed_attempt", "dead_lettered"}
