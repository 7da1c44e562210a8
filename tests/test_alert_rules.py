"""deploy/prometheus: the rule file and the config pass promtool, the rules' unit tests pass, every alert has a
unit test where it fires, and every metric a rule reads is one the code exports (a renamed metric would
otherwise leave an alert that can never fire)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from support.metric_names import (PROMETHEUS_SERIES, monitor_metric_names, prediction_log_metric_names,
                                  promql_metric_names, server_metric_names)
from support.services import service_missing

ROOT = Path(__file__).resolve().parent.parent
PROMETHEUS = ROOT / "deploy" / "prometheus"
RULES = yaml.safe_load((PROMETHEUS / "alerts.yml").read_text())
RULE_TESTS = yaml.safe_load((PROMETHEUS / "alerts_test.yml").read_text())


def promtool() -> str:
    found = shutil.which("promtool") or ("/usr/bin/promtool" if Path("/usr/bin/promtool").exists() else None)
    if found is None:
        service_missing("promtool not installed (Debian package `prometheus`)")
    return found


def run_promtool(*args: str, cwd: Path) -> None:
    done = subprocess.run([promtool(), *args], cwd=cwd, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, f"promtool {' '.join(args)} exited {done.returncode}:\n{done.stdout}\n{done.stderr}"


def rules(group_prefix: str = "") -> list[dict]:
    return [rule for group in RULES["groups"] if group["name"].startswith(group_prefix) for rule in group["rules"]]


def alerts() -> dict[str, dict]:
    return {rule["alert"]: rule for rule in rules() if "alert" in rule}


RECORDED = {rule["record"] for rule in rules() if "record" in rule}


def test_rules_pass_promtool_check() -> None:
    run_promtool("check", "rules", "alerts.yml", cwd=PROMETHEUS)


def test_config_passes_promtool_check(tmp_path: Path) -> None:
    # The config names its rule file relative to itself: check a copy of both, as Prometheus will load them.
    for name in ("prometheus.yml", "alerts.yml"):
        shutil.copy(PROMETHEUS / name, tmp_path / name)
    run_promtool("check", "config", "prometheus.yml", cwd=tmp_path)


def test_rule_unit_tests_pass() -> None:
    run_promtool("test", "rules", "alerts_test.yml", cwd=PROMETHEUS)


def test_the_config_loads_the_rule_file_and_the_tests_test_it() -> None:
    config = yaml.safe_load((PROMETHEUS / "prometheus.yml").read_text())
    assert config["rule_files"] == ["alerts.yml"]
    assert RULE_TESTS["rule_files"] == ["alerts.yml"]


def test_every_alert_has_a_firing_and_a_silent_case() -> None:
    firing: set[str] = set()
    silent: set[str] = set()
    for case in RULE_TESTS["tests"]:
        for check in case.get("alert_rule_test", []):
            (firing if check.get("exp_alerts") else silent).add(check["alertname"])
    assert set(alerts()) - firing == set(), "alerts without a unit test where they fire"
    assert set(alerts()) - silent == set(), "alerts without a unit test where they stay silent"
    assert (firing | silent) - set(alerts()) == set(), "unit tests of alerts that do not exist"


def test_every_firing_case_states_labels_and_annotations() -> None:
    for case in RULE_TESTS["tests"]:
        for check in case.get("alert_rule_test", []):
            for expected in check.get("exp_alerts") or []:
                assert expected.get("exp_labels", {}).get("severity") == \
                    alerts()[check["alertname"]]["labels"]["severity"], (case["name"], check["alertname"])
                assert set(expected.get("exp_annotations", {})) == {"summary", "description"}, case["name"]


def test_every_alert_has_severity_summary_description_and_for() -> None:
    for name, rule in alerts().items():
        assert rule["labels"]["severity"] in {"critical", "warning", "info"}, name
        assert {"summary", "description"} <= set(rule["annotations"]), name
        assert "for" in rule, name
    expected = {"ShopclipServerDown", "ShopclipNotReady", "ShopclipHighErrorRatio", "ShopclipHighP99Latency",
                "ShopclipQueueSaturation", "ShopclipAbstainRateJump", "ShopclipDriftDetected",
                "ShopclipMonitorStale", "ShopclipPredictionLogBacklog", "ShopclipPredictionLogDatabaseDown",
                "ShopclipLiveAccuracyLow"}
    assert expected <= set(alerts())


def used_names(group_prefix: str) -> set[str]:
    return {name for rule in rules(group_prefix) for name in promql_metric_names(str(rule["expr"]))}


def test_the_metric_name_scan_reads_the_rules() -> None:
    assert {"shopclip_requests_total", "shopclip_request_latency_seconds_bucket", "shopclip_ready",
            "shopclip:requests:rate5m", "up"} <= used_names("shopclip-server")
    assert {"shopclip_drift_psi", "shopclip_live_accuracy"} <= used_names("shopclip-monitor")


def test_the_servers_rules_read_metrics_the_server_exports(tmp_path: Path) -> None:
    """shopclip-server.* groups: the server's registry, with the prediction log's collectors it registers."""
    pytest.importorskip("shopclip.predlog.writer")
    exported = server_metric_names() | prediction_log_metric_names(tmp_path) | PROMETHEUS_SERIES | RECORDED
    assert used_names("shopclip-server") - exported == set()


def test_the_monitors_rules_read_metrics_the_monitor_exports() -> None:
    pytest.importorskip("shopclip.monitor.metrics")
    exported = monitor_metric_names() | PROMETHEUS_SERIES | RECORDED
    assert used_names("shopclip-monitor") - exported == set()


def test_rule_groups_are_the_servers_or_the_monitors() -> None:
    """The two tests above split the rules by group name: none may escape both."""
    for group in RULES["groups"]:
        assert group["name"].startswith(("shopclip-server", "shopclip-monitor")), group["name"]


# -- the monitor's real figures through the real rules ------------------------------------------------------------

MONITOR_LABELS = 'job="shopclip-monitor", instance="monitor:9101"'


def monitor_series(gauges: dict[str, float]) -> list[dict[str, str]]:
    """promtool input series of the monitor's gauges as it exports them, scraped every minute for 20 minutes."""
    series = []
    for key, value in gauges.items():
        if value != value:  # NaN: the monitor had nothing to say
            continue
        name, _, labels = key.partition("{")
        labels = f"{MONITOR_LABELS}, {labels[:-1]}" if labels else MONITOR_LABELS
        series.append({"series": f"{name}{{{labels}}}", "values": f"{value!r}x20"})
    return series


def render(template: str, feature: str, value: str) -> str:
    return (template.replace("{{ $labels.feature }}", feature).replace('{{ $value | printf "%.2f" }}', value)
            .replace("{{ $value | humanizePercentage }}", value))


def expected_drift_alerts(gauges: dict[str, float]) -> list[dict]:
    """What ShopclipDriftDetected must say for these gauges: one alert per feature over the PSI threshold or
    flagged by the monitor, with the PSI (or 1, the flag, for a statistic that has no PSI) in its description."""
    rule = alerts()["ShopclipDriftDetected"]
    psi = {k.split('"')[1]: v for k, v in gauges.items() if k.startswith("shopclip_drift_psi{")}
    flagged = {k.split('"')[1] for k, v in gauges.items() if k.startswith("shopclip_drift_alert{") and v == 1}
    features = sorted({f for f, v in psi.items() if v > 0.2} | flagged)
    return [{"exp_labels": {"severity": "warning", "feature": feature},
             "exp_annotations": {name: render(text, feature, f"{psi.get(feature, 1.0):.2f}")
                                 for name, text in rule["annotations"].items()}} for feature in features]


@pytest.mark.parametrize("shifted", [True, False], ids=["shifted week", "unshifted week"])
def test_a_real_monitor_report_drives_the_drift_and_accuracy_alerts(tmp_path: Path, shifted: bool) -> None:
    """A week of only image-only products of two codes, reported by the real `shopclip monitor` code: its gauges
    fire ShopclipDriftDetected for each feature the report flags (and, with live accuracy 0.6 on 60 feedback,
    ShopclipLiveAccuracyLow); the unshifted week fires neither."""
    from support.monitoring import report_gauges

    gauges = report_gauges(tmp_path, shifted)
    drift = expected_drift_alerts(gauges)
    accuracy_rule = alerts()["ShopclipLiveAccuracyLow"]
    accuracy = gauges["shopclip_live_accuracy"]
    low_accuracy = [] if accuracy >= 0.7 else [{
        "exp_labels": {"severity": "warning", **dict(part.split("=") for part in
                                                     MONITOR_LABELS.replace('"', "").split(", "))},
        "exp_annotations": {name: render(text, "", f"{accuracy:.0%}")
                            for name, text in accuracy_rule["annotations"].items()}}]
    if shifted:
        assert {a["exp_labels"]["feature"] for a in drift} >= {"text_length", "has_description", "top_code"}
        assert low_accuracy
    else:
        assert drift == [] and low_accuracy == []
    test_file = {"rule_files": [str(PROMETHEUS / "alerts.yml")], "evaluation_interval": "1m",
                 "tests": [{"interval": "1m", "input_series": monitor_series(gauges), "alert_rule_test": [
                     {"eval_time": "19m", "alertname": "ShopclipDriftDetected", "exp_alerts": drift},
                     {"eval_time": "19m", "alertname": "ShopclipLiveAccuracyLow", "exp_alerts": low_accuracy}]}]}
    (tmp_path / "real_report_test.yml").write_text(yaml.safe_dump(test_file, sort_keys=False))
    run_promtool("test", "rules", "real_report_test.yml", cwd=tmp_path)
