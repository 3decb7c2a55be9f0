"""The Grafana dashboard: the committed JSON is what ops/grafana/build_dashboard.py builds now (regenerate with
``python ops/grafana/build_dashboard.py``), and it reads right: every panel queries the provisioned Prometheus
datasource with an expression, per model through the ``model_id`` variable. Its queries run against a real
Prometheus in tests/ops/test_prometheus_chain.py."""

from __future__ import annotations

import importlib.util
import json

import yaml

from tests.ops.conftest import DASHBOARD, DATASOURCES, OPS


def builder():
    spec = importlib.util.spec_from_file_location("build_dashboard", OPS / "grafana" / "build_dashboard.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def panels(board: dict) -> list[dict]:
    return [p for p in board["panels"] if p["type"] != "row"]


def test_the_committed_dashboard_is_what_the_builder_builds():
    assert DASHBOARD.read_text() == builder().render(), "run: python ops/grafana/build_dashboard.py"


def test_every_panel_queries_the_provisioned_datasource_and_model_panels_follow_the_variable():
    board = json.loads(DASHBOARD.read_text())
    (provisioned,) = yaml.safe_load(DATASOURCES.read_text())["datasources"]
    source = {"type": provisioned["type"], "uid": provisioned["uid"]}
    (variable,) = board["templating"]["list"]
    assert variable["name"] == "model_id" and variable["datasource"] == source
    assert variable["query"].startswith("label_values(undertow_model_events_total")
    ids = [p["id"] for p in board["panels"]]
    assert len(ids) == len(set(ids))
    titles = [p["title"] for p in panels(board)]
    for wanted in ("Events per second", "Consumer lag", "PSI per feature", "Error against", "Open drift episodes"):
        assert any(t.startswith(wanted) for t in titles), wanted
    for panel in panels(board):
        assert panel["datasource"] == source, panel["title"]
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            assert target["expr"].strip() and target["datasource"] == source, panel["title"]
            if "undertow_model_" in target["expr"] or "undertow_feature_" in target["expr"]:
                assert 'model_id="$model_id"' in target["expr"], (panel["title"], target["expr"])
    psi = next(p for p in panels(board) if p["title"].startswith("PSI"))
    steps = psi["fieldConfig"]["defaults"]["thresholds"]["steps"]
    assert [s["value"] for s in steps] == [None, 0.1, 0.25]
