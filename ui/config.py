"""What the console talks to: every field is a `shopclip ui` flag and a `SHOPCLIP_*` variable (shopclip.settings),
the same variables the server and the index commands read, so one environment configures them all. `shopclip ui`
hands its options to the Streamlit process as those variables (`settings.to_env`); the app reads them back here.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from shopclip import settings
from shopclip.errors import InvalidInput
from shopclip.registry.options import RegistryOptions
from shopclip.settings import option


@dataclass(frozen=True)
class UiConfig:
    target: str = option("localhost:50051", "gRPC server the console calls (host:port)")
    token: str | None = option(None, "the server's bearer token; unset: the console asks for it when the server "
                                     "requires one", secret=True)
    tls_ca: str | None = option(None, "PEM root certificate of the server (TLS)")
    prediction_log: str | None = option(None, "prediction log database (review queue, live accuracy, abstain "
                                              "rate): postgresql://... or sqlite:///path", secret=True)
    registry: RegistryOptions = option(default_factory=RegistryOptions)
    catalogue: str | None = option(None, "LanceDB catalogue URI (thumbnails, counts per code, code descriptions)")
    table: str = option("products", "catalogue table name")
    index_root: str | None = option(None, "published index root (versions, their models)")
    drops: str | None = option(None, "drop folder or s3:// prefix (recent drops and their rejects)")
    code_names: str | None = option(None, "optional csv of prdtypecode,name giving codes a human name")
    monitor_reports: str | None = option(None, "folder of `shopclip monitor --html` pages (the drift plots)")
    ui_host: str = option("127.0.0.1", "interface the console listens on")
    ui_port: int = option(8501, "HTTP port of the console")

    def __post_init__(self) -> None:
        if not 0 < self.ui_port <= 65535:
            raise InvalidInput("ui_port", f"must be in 1..65535, got {self.ui_port}")
        if not self.target.strip():
            raise InvalidInput("target", "must not be empty (host:port of the shopclip server)")

    @classmethod
    def from_environment(cls) -> "UiConfig":
        return settings.from_sources(cls, {}, os.environ)
