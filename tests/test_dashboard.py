"""deploy/grafana: the provisioned dashboard is well formed, queries the provisioned datasource, and every metric
its panels read is one the code exports (or a recording rule of deploy/prometheus/alerts.yml), so a renamed
metric cannot leave an empty panel behind."""

from __future__ import annotations

import importlib.util
import json
import re
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from support.metric_names import (PROMETHEUS_SERIES, monitor_metric_names, prediction_log_metric_names,
                                  promql_metric_names, server_metric_names)

ROOT = Path(__file__).resolve().parent.parent
GRAFANA = ROOT / "deploy" / "grafana"
DASHBOARD = json.loads((GRAFANA / "dashboards" / "shopclip.json").read_text())
DATASOURCES = yaml.safe_load((GRAFANA / "provisioning" / "datasources" / "prometheus.yml").read_text())
PROVIDERS = yaml.safe_load((GRAFANA / "provisioning" / "dashboards" / "shopclip.yml").read_text())
RULES = yaml.safe_load((ROOT / "deploy" / "prometheus" / "alerts.yml").read_text())
RECORDED = {rule["record"] for group in RULES["groups"] for rule in group["rules"] if "record" in rule}


def panels(items: list[dict] | None = None) -> Iterator[dict]:
    for panel in DASHBOARD["panels"] if items is None else items:
        yield panel
        yield from panels(panel.get("panels", []))  # collapsed rows hold their panels


def queries() -> Iterator[tuple[str, str, dict]]:
    """(where, expr, datasource) of every panel target, template variable and annotation."""
    for panel in panels():
        for target in panel.get("targets", []):
            yield panel["title"], target["expr"], target.get("datasource") or panel.get("datasource")
    for variable in DASHBOARD.get("templating", {}).get("list", []):
        if variable.get("type") == "query":
            query = variable["query"]
            query = query["query"] if isinstance(query, dict) else query
            # Grafana's label_values(<selector>, <label>): the selector is PromQL, the label is not a metric.
            wrapped = re.fullmatch(r"\s*label_values\((.*),\s*\w+\s*\)\s*", query)
            yield f"${variable['name']}", wrapped.group(1) if wrapped else query, variable["datasource"]
    for annotation in DASHBOARD.get("annotations", {}).get("list", []):
        if "expr" in annotation:
            yield annotation["name"], annotation["expr"], annotation["datasource"]


def test_the_dashboard_has_a_uid_a_title_and_unique_panel_ids() -> None:
    assert DASHBOARD["uid"] and len(DASHBOARD["uid"]) <= 40
    assert DASHBOARD["title"]
    ids = Counter(panel["id"] for panel in panels())
    assert [panel_id for panel_id, count in ids.items() if count > 1] == []
    assert all(panel.get("title") for panel in panels())


def test_panels_do_not_overlap() -> None:
    taken: set[tuple[int, int]] = set()
    for panel in panels():
        box = panel["gridPos"]
        assert box["x"] + box["w"] <= 24, panel["title"]
        cells = {(x, y) for x in range(box["x"], box["x"] + box["w"]) for y in range(box["y"], box["y"] + box["h"])}
        assert not cells & taken, f"{panel['title']} overlaps another panel"
        taken |= cells


def test_every_query_uses_the_provisioned_datasource() -> None:
    (datasource,) = DATASOURCES["datasources"]
    assert datasource["type"] == "prometheus" and datasource["url"] == "http://prometheus:9090"
    for where, _, used in queries():
        assert used == {"type": "prometheus", "uid": datasource["uid"]}, where
    for panel in panels():
        if panel["type"] != "row":
            assert panel["datasource"]["uid"] == datasource["uid"], panel["title"]


def test_the_dashboards_provider_reads_files() -> None:
    (provider,) = PROVIDERS["providers"]
    assert provider["type"] == "file" and provider["options"]["path"].startswith("/")


def test_the_required_panels_are_there() -> None:
    read = {name for _, expr, _ in queries() for name in promql_metric_names(expr)}
    assert {
        "shopclip_requests_total", "shopclip:request_errors:ratio_rate5m", "shopclip_request_latency_seconds_bucket",
        "shopclip_queue_depth", "shopclip_queue_capacity", "shopclip_batch_size_bucket", "shopclip_classified_total",
        "shopclip:classified_abstain:ratio_rate1h", "shopclip_feedback_total", "shopclip_live_accuracy",
        "shopclip_prediction_log_queue_depth", "shopclip_prediction_log_pending", "shopclip_prediction_log_spilled_total",
        "shopclip_prediction_log_database_up", "shopclip_drift_psi", "shopclip_centroid_shift",
        "shopclip_monitor_last_report_timestamp_seconds", "shopclip_model_info", "shopclip_index_info",
    } <= read


def test_every_metric_a_panel_reads_is_exported(tmp_path: Path) -> None:
    pytest.importorskip("shopclip.predlog.writer")
    exported = server_metric_names() | prediction_log_metric_names(tmp_path) | PROMETHEUS_SERIES | RECORDED
    unknown = {(where, name) for where, expr, _ in queries() for name in promql_metric_names(expr)
               if name not in exported}
    if unknown and importlib.util.find_spec("shopclip.monitor.metrics") is None:
        pytest.skip(f"shopclip.monitor.metrics is not there yet: unchecked {sorted(unknown)}")
    if unknown:
        monitor = monitor_metric_names()
        unknown = {(where, name) for where, name in unknown if name not in monitor}
    assert sorted(unknown) == []
