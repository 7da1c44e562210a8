"""docker-compose.yml cannot be run here (no Docker daemon): check what can be checked without it. Every
SHOPCLIP_* variable it sets is an option of the command that reads it, so a typo cannot silently fall back
to a default in production; the images are the Dockerfile's stages."""

from __future__ import annotations

import re
from pathlib import Path

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
