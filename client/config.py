"""How a client reaches the server: target, deadline, retry policy, TLS and bearer token.

Shared by the sync and the asyncio client so both dial, authenticate and back off identically.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import grpc

from shopclip.client.retry import RetryPolicy
from shopclip.errors import InvalidInput

DEFAULT_TARGET = "localhost:50051"
DEFAULT_TIMEOUT_S = 10.0
# Images are up to 10 MiB (see product.proto); leave room for the rest of a batch request.
MAX_MESSAGE_BYTES = 64 * 1024 * 1024


@dataclass(frozen=True)
class ClientConfig:
    target: str = DEFAULT_TARGET
    """host:port of the shopclip server."""
    timeout_s: float | None = DEFAULT_TIMEOUT_S
    """Deadline of one call, retries included; None waits forever (not advised)."""
    token: str | None = None
    """Bearer token sent as `authorization: Bearer <token>` on every call."""
    tls_ca: Path | None = None
    """PEM root certificate(s) to trust; setting it switches the channel to TLS."""
    tls: bool = False
    """TLS with the system's root certificates (implied by `tls_ca`)."""
    tls_server_name: str | None = None
    """Name to check the server certificate against when it differs from the target's host."""
    retry: RetryPolicy = field(default_factory=RetryPolicy)

    @property
    def uses_tls(self) -> bool:
        return self.tls or self.tls_ca is not None

    def metadata(self) -> tuple[tuple[str, str], ...]:
        return (("authorization", f"Bearer {self.token}"),) if self.token else ()

    def channel_options(self) -> list[tuple[str, object]]:
        options: list[tuple[str, object]] = [("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
                                             ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES)]
        if self.tls_server_name:
            options.append(("grpc.ssl_target_name_override", self.tls_server_name))
        return options

    def channel_credentials(self) -> grpc.ChannelCredentials:
        return grpc.ssl_channel_credentials(root_certificates=self._root_certificates())

    def _root_certificates(self) -> bytes | None:
        if self.tls_ca is None:
            return None
        try:
            return self.tls_ca.read_bytes()
        except OSError as error:
            raise InvalidInput("tls_ca", f"cannot read {self.tls_ca}: {error.strerror}") from None

    @classmethod
    def from_env(cls, **overrides: object) -> "ClientConfig":
        """Defaults from SHOPCLIP_TARGET, SHOPCLIP_TOKEN and SHOPCLIP_TLS_CA; `overrides` that are
        not None win (CLI flags)."""
        values: dict[str, object] = {"target": os.environ.get("SHOPCLIP_TARGET", DEFAULT_TARGET),
                                     "token": os.environ.get("SHOPCLIP_TOKEN") or None}
        if os.environ.get("SHOPCLIP_TLS_CA"):
            values["tls_ca"] = Path(os.environ["SHOPCLIP_TLS_CA"])
        values.update({key: value for key, value in overrides.items() if value is not None})
        return cls(**values)  # type: ignore[arg-type]


def client_config(target: str | None = None, timeout: float | None = None, token: str | None = None,
                  tls_ca: str | Path | None = None, tls: bool = False, tls_server_name: str | None = None,
                  retry: RetryPolicy | None = None) -> ClientConfig:
    """The clients' keyword arguments over the SHOPCLIP_* environment defaults."""
    return ClientConfig.from_env(target=target, timeout_s=timeout, token=token,
                                 tls_ca=Path(tls_ca) if tls_ca is not None else None, tls=tls or None,
                                 tls_server_name=tls_server_name, retry=retry)
