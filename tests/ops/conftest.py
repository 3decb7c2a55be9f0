"""The operations bundle's tests need Debian's prometheus and prometheus-alertmanager packages (promtool,
prometheus, amtool, prometheus-alertmanager). Without them the tests skip, unless UNDERTOW_REQUIRE_PROMETHEUS
is set (.ci/run sets it after installing them): then a missing binary fails the test."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from tests.conftest import REPO

OPS = REPO / "ops"
RULES = OPS / "prometheus" / "undertow-rules.yml"
RULE_TESTS = OPS / "prometheus" / "undertow-rules.test.yml"
PROMETHEUS_CONFIG = OPS / "prometheus" / "prometheus.yml"
ALERTMANAGER_CONFIG = OPS / "alertmanager" / "alertmanager.yml"
DASHBOARD = OPS / "grafana" / "dashboards" / "undertow.json"
DATASOURCES = OPS / "grafana" / "provisioning" / "datasources" / "prometheus.yml"


def binary(name: str) -> str:
    """The path of a Debian-packaged binary, or skip (fail under UNDERTOW_REQUIRE_PROMETHEUS)."""
    found = shutil.which(name) or (f"/usr/bin/{name}" if Path(f"/usr/bin/{name}").exists() else None)
    if found is None:
        message = f"{name} is not installed (Debian's prometheus / prometheus-alertmanager; .ci/run installs them)"
        if os.environ.get("UNDERTOW_REQUIRE_PROMETHEUS"):
            pytest.fail(f"UNDERTOW_REQUIRE_PROMETHEUS is set and {message}")
        pytest.skip(message)
    return found
