"""docker-compose.yml cannot be run here (no Docker daemon): check what can be checked without it. Every
SHOPCLIP_* variable it sets is an option of the command that reads it, so a typo cannot silently fall back
to a default in production; the images are the Dockerfile's stages."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from shopclip import settings
from shopclip.orchestration.drop_flow import DropFlowConfig
from shopclip.objectstore import StoreOptions
from shopclip.server.config import ServerConfig

ROOT = Path(__file__).resolve().parent.parent
COMPOSE = yaml.safe_load((ROOT / "docker-compose.yml").read_text())


def variables_of(*classes: type) -> set[str]:
    return {settings.env_name(settings._public_name(field)) for cls in classes for field, _ in settings._leaves(cls)}


def shopclip_variables(service: str) -> set[str]:
    return {name for name in COMPOSE["services"][service]["environment"] if name.startswith("SHOPCLIP_")}


def test_the_servers_variables_are_server_options() -> None:
    assert shopclip_variables("server") - variables_of(ServerConfig, StoreOptions) == set()


def test_the_dags_variables_are_drop_flow_options() -> None:
    for service in ("airflow-scheduler", "airflow-dag-processor", "airflow-apiserver", "airflow-init"):
        assert shopclip_variables(service) - variables_of(DropFlowConfig, StoreOptions) == set()
    assert {"SHOPCLIP_DROPS", "SHOPCLIP_REGISTRY_URI", "SHOPCLIP_SERVER"} <= shopclip_variables("airflow-scheduler")


def test_every_built_image_is_a_stage_of_the_dockerfile() -> None:
    stages = set(re.findall(r"^FROM \S+ AS (\S+)$", (ROOT / "Dockerfile").read_text(), re.MULTILINE))
    targets = {service["build"]["target"] for service in COMPOSE["services"].values() if "build" in service}
    assert targets and targets <= stages


# --- prediction log, monitor, Prometheus and Grafana ---------------------------------------------------------

PROMETHEUS_CONFIG = yaml.safe_load((ROOT / "deploy" / "prometheus" / "prometheus.yml").read_text())
GRAFANA = ROOT / "deploy" / "grafana"


def interpolated(value: str) -> str:
    """`${NAME:-default}` as compose resolves it with NAME unset."""
    return re.sub(r"\$\{\w+:-([^}]*)\}", r"\1", value)


def service(name: str) -> dict:
    return COMPOSE["services"][name]


def flag(command: list[str], name: str) -> str:
    return command[command.index(name) + 1]


def bind_mounts(name: str) -> dict[str, str]:
    """container path -> host path (relative to the compose file) of a service's bind mounts."""
    mounts = {}
    for volume in service(name).get("volumes", []):
        source, target = volume.split(":")[:2]
        if source.startswith((".", "/")):
            mounts[target] = source
    return mounts


def published(name: str) -> set[int]:
    return {int(port.split(":")[-1]) for port in service(name).get("ports", [])}


def scrape_targets() -> dict[str, list[str]]:
    return {job["job_name"]: [target for static in job.get("static_configs", []) for target in static["targets"]]
            for job in PROMETHEUS_CONFIG["scrape_configs"]}


def test_prometheus_scrapes_the_servers_and_the_monitors_metrics_ports() -> None:
    metrics_port = service("server")["environment"]["SHOPCLIP_METRICS_PORT"]
    monitor_port = flag(service("monitor")["command"], "--metrics-port")
    targets = scrape_targets()
    assert targets["shopclip-server"] == [f"server:{metrics_port}"]
    assert targets["shopclip-monitor"] == [f"monitor:{monitor_port}"]
    assert int(metrics_port) in published("server")


def test_every_scrape_target_is_a_compose_service() -> None:
    for job, targets in scrape_targets().items():
        for target in targets:
            host, _ = target.rsplit(":", 1)
            assert host in COMPOSE["services"] or (job == "prometheus" and host == "localhost"), target


def test_host_ports_are_not_published_twice() -> None:
    host_ports = [port.rsplit(":", 1)[0].split(":")[-1] for svc in COMPOSE["services"].values()
                  for port in svc.get("ports", [])]
    assert sorted(port for port in set(host_ports) if host_ports.count(port) > 1) == []


def test_the_server_logs_predictions_to_the_compose_database() -> None:
    from sqlalchemy.engine import make_url

    server, database = service("server"), service("predlog-db")
    url = make_url(interpolated(server["environment"]["SHOPCLIP_PREDICTION_LOG"]))
    db_env = database["environment"]
    assert (url.get_backend_name(), url.host, url.port) == ("postgresql", "predlog-db", 5432)
    assert url.username == db_env["POSTGRES_USER"] and url.database == db_env["POSTGRES_DB"]
    assert url.password == interpolated(db_env["POSTGRES_PASSWORD"])
    assert "healthcheck" in database
    assert server["depends_on"]["predlog-db"] == {"condition": "service_healthy"}
    spill = server["environment"]["SHOPCLIP_PREDICTION_LOG_SPILL"]
    assert spill in {volume.split(":")[1] for volume in server["volumes"]}, "the spill folder must be a volume"


def test_the_monitor_reads_the_servers_prediction_log() -> None:
    monitor = service("monitor")
    assert monitor["image"] == service("server")["image"]
    from shopclip.monitor.cli import MonitorOptions

    command = monitor["command"]
    assert "--prediction-log" not in command  # a password there would show in `ps`
    assert monitor["environment"]["SHOPCLIP_PREDICTION_LOG"] == \
        service("server")["environment"]["SHOPCLIP_PREDICTION_LOG"]
    assert flag(command, "--every") == "1h" and flag(command, "--reference") == "previous"
    assert monitor["depends_on"]["predlog-db"] == {"condition": "service_healthy"}
    assert shopclip_variables("monitor") <= variables_of(MonitorOptions, StoreOptions)


def test_the_monitors_command_is_one_the_cli_accepts() -> None:
    pytest.importorskip("shopclip.monitor.cli")
    from shopclip.cli import build_parser

    args = build_parser().parse_args(service("monitor")["command"])
    assert args.command == "monitor" and getattr(args, "handler", None) is not None


def test_prometheus_loads_the_deploy_config() -> None:
    mounts = bind_mounts("prometheus")
    config_file = next(arg.split("=", 1)[1] for arg in service("prometheus")["command"]
                       if arg.startswith("--config.file="))
    folder, name = config_file.rsplit("/", 1)
    assert (ROOT / mounts[folder] / name).is_file()
    assert (ROOT / mounts[folder] / PROMETHEUS_CONFIG["rule_files"][0]).is_file()
    assert 9090 in published("prometheus")


def test_grafana_mounts_its_provisioning_and_dashboards() -> None:
    mounts = bind_mounts("grafana")
    for target, source in mounts.items():
        assert (ROOT / source).is_dir(), f"{source} (mounted at {target}) does not exist"
    provisioning = ROOT / mounts["/etc/grafana/provisioning"]
    (provider,) = yaml.safe_load((provisioning / "dashboards" / "shopclip.yml").read_text())["providers"]
    dashboards = ROOT / mounts[provider["options"]["path"]]
    assert list(dashboards.glob("*.json"))
    home = service("grafana")["environment"].get("GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH")
    if home:
        assert (dashboards / home.removeprefix(provider["options"]["path"] + "/")).is_file()
    (datasource,) = yaml.safe_load((provisioning / "datasources" / "prometheus.yml").read_text())["datasources"]
    host_port = datasource["url"].removeprefix("http://")
    host, port = host_port.split(":")
    assert host in COMPOSE["services"] and int(port) in published(host)


def test_every_named_volume_is_declared() -> None:
    declared = set(COMPOSE["volumes"])
    for name, svc in COMPOSE["services"].items():
        for volume in svc.get("volumes", []):
            source = volume.split(":")[0]
            if not source.startswith((".", "/")):
                assert source in declared, f"{name}: volume {source} is not declared"


def test_the_consoles_variables_are_console_options() -> None:
    from shopclip.ui.config import UiConfig

    console, airflow = service("ui"), service("airflow-scheduler")
    assert shopclip_variables("ui") - variables_of(UiConfig) == set()
    assert console["image"] == service("server")["image"] and console["command"][0] == "ui"
    assert console["environment"]["SHOPCLIP_TARGET"] == "server:50051"
    log_url = console["environment"]["SHOPCLIP_PREDICTION_LOG"]
    assert log_url == service("server")["environment"]["SHOPCLIP_PREDICTION_LOG"]
    # The registry the drop DAG promotes in, on the same volume.
    registry_uri = console["environment"]["SHOPCLIP_REGISTRY_URI"]
    assert registry_uri == airflow["environment"]["SHOPCLIP_REGISTRY_URI"]
    registry_file = registry_uri.removeprefix("sqlite:///")

    def volume_holding(name: str, path: str) -> tuple[str, str] | None:
        mounts = [tuple(volume.split(":")[:2]) for volume in service(name).get("volumes", [])]
        return next(((source, target) for source, target in mounts if path.startswith(target + "/")), None)

    assert volume_holding("ui", registry_file) == volume_holding("airflow-scheduler", registry_file) is not None
    assert "server" in console["depends_on"]


def test_the_consoles_port_is_published_once() -> None:
    from shopclip.ui.config import UiConfig

    port = UiConfig().ui_port
    assert published("ui") == {port}
    others = [name for name, svc in COMPOSE["services"].items() if name != "ui"
              for mapping in svc.get("ports", []) if mapping.rsplit(":", 1)[0].split(":")[-1] == str(port)]
    assert others == [], f"host port {port} is also published by {others}"
